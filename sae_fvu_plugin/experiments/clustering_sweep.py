"""The clustering sweep: how much variance k-means and PCA + k-means explain under
``fvu_a``, ``fvu_b``, ``fvu_per_dim`` and SAEBench 0.6.0's formula side by side, scored by
SAEBench's own core eval.

For each layer's ``hook_resid_post``: k-means for several k, and PCA + k-means with
n_pca ∈ {1, 10, 50, 200, 500} (the CPU default) at fixed d_sae (n_clusters = d_sae − n_pca);
the same fits on Gaussian data with the activations' mean and covariance (the random-data
control). Fit on one slice of the text, evaluate on a disjoint held-out slice (checked
against each fit's provenance). Each model is evaluated by SAEBench's ``run_evals`` with
the plugin enabled and ``explained_variance_report=["all"]`` — once on every token, and once
with the top 0.1 % of tokens by activation norm excluded from explained variance (the
explicit, recorded ``explained_variance_exclude_norm_above`` option).

    sae-fvu sweep                                                   # offline default
    sae-fvu sweep --model pythia-70m-deduped --dataset Skylion007/openwebtext --layers 3 4
    sae-fvu sweep --full                                            # 1M tokens (GPU)

A configuration of :mod:`sae_fvu_plugin.experiments.pipeline`; reruns reuse cached
activations, fits and evaluations and compute only what is missing.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from .config import SweepConfig
from .pipeline import DEFS, Experiment, Point, draw_with_intervals, massive_stats, plain

__all__ = ["SweepConfig", "estimate_minutes", "main", "run"]


def estimate_minutes(cfg: SweepConfig) -> float:
    """Wall time on 2 CPU cores, from rates measured in a fresh-clone run on SmolLM2-135M:
    the forward pass costs ≈ (L + 1) / 8,500 s per token stopping after layer L; each
    real-data model gets its KL / CE batches (3 full forward passes), two variance
    evaluations to the hooked layer (all tokens / massive excluded, ≈ 2 s of SAEBench
    overhead each) and a fit (≈ 4 s at 16k tokens and d_sae 512, more for large k · n); a
    Gaussian-control model costs its fit only."""
    fit_s = 0.0
    for k, p in cfg.fits():
        fit_s += 6 * cfg.fit_tokens * 576 * (k + p) * 2 / 45e9 + 3.5
    fit_s *= len(cfg.layers) * (2 if cfg.gaussian else 1)
    act_s = cfg.fit_tokens * (max(cfg.layers) + 1) / 8_500
    kl_s = 3 * cfg.recon_batches * cfg.batch_prompts * cfg.context_size * 30 / 8_500
    eval_s = sum(
        len(cfg.fits()) * (kl_s + 2 * (cfg.eval_tokens * (layer + 1) / 8_500 + 2.0))
        for layer in cfg.layers
    )
    return (fit_s + act_s + eval_s + 15) / 60


def points(cfg: SweepConfig) -> list[Point]:
    out = []
    for layer in cfg.layers:
        for src in ["real", "gaussian"] if cfg.gaussian else ["real"]:
            for k, p in cfg.fits():
                if p:
                    out.append(Point.of("pca_kmeans", layer, src, n_clusters=k, n_pca=p))
                else:
                    out.append(Point.of("kmeans", layer, src, n_clusters=k))
    return out


def run(cfg: SweepConfig, *, progress: bool = True) -> dict[str, Any]:
    out = Path(cfg.out)
    fits = cfg.fits()
    n_models = len(fits) * len(cfg.layers)
    t0 = time.time()
    exp = Experiment(cfg, progress=progress)
    todo = points(cfg)
    cached = sum(1 for pt in todo if exp.is_cached(pt))
    remaining = 1 - cached / max(len(todo), 1)
    print(
        f"[sweep] {cfg.model} on {cfg.dataset}: layers {cfg.layers} (hook_resid_post); "
        f"fit on {cfg.fit_tokens:,} tokens, evaluate on {cfg.eval_tokens:,} held-out tokens.\n"
        f"[sweep] {n_models} models (k-means k={cfg.ks}; PCA+k-means d_sae={cfg.d_sae}, "
        f"n_pca={[p for _, p in fits if p]})"
        + (f" + the same {n_models} on Gaussian data" if cfg.gaussian else "")
        + f"; each scored by SAEBench run_evals twice (all tokens / top {cfg.massive_fraction:.1%} "
        f"by norm excluded).\n[sweep] "
        + (
            "everything is cached: printing the results."
            if cached == len(todo)
            else f"estimated {estimate_minutes(cfg) * remaining:.0f} min on 2 CPU cores "
            f"({cached} of {len(todo)} models cached)"
        )
        + f"; output in {out}/",
        flush=True,
    )
    massive = {
        layer: massive_stats(exp.fit_acts[cfg.hook(layer)], cfg.massive_fraction)
        for layer in cfg.layers
    }

    def evaluate(sae: Any, point: Point) -> list[dict[str, Any]]:
        base = {"n_clusters": point.p["n_clusters"], "n_pca": point.p.get("n_pca", 0)}
        if point.source != "real":
            return exp.direct_rows(sae, point, exclude_norm_above=None, **base)
        rows = []
        threshold = massive[point.layer]["threshold"]
        groups: dict[str, Any] = {}
        for excl in (None, threshold):
            tag = "" if excl is None else "_massive_excluded"
            json_path = exp.out / "results" / f"{point.name}{tag}_eval_results.json"
            res = exp.eval_real(sae, point, exclude=excl, out_json=json_path, reuse_groups=groups)
            groups = {k: v for k, v in res["metrics"].items() if k.startswith("model_")}
            n_eval = exp.n_var_ctx * cfg.context_size
            rows.append(
                exp.row(
                    point,
                    sae,
                    res,
                    massive_excluded=excl is not None,
                    exclude_norm_above=excl,
                    n_eval_tokens=n_eval,
                    **base,
                )
            )
        return rows

    rows = exp.run(points(cfg), evaluate)
    ratios = proportionality(rows)
    summary: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "massive_tokens": {str(k): v for k, v in massive.items()},
        "ratios_fvu_b_over_fvu_a": ratios,
        "rows": rows,
        "minutes": (time.time() - t0) / 60,
    }
    (out / "results.json").write_text(json.dumps(plain(summary), indent=1))
    write_csv(rows, out / "results.csv")
    print(format_massive(massive, cfg))
    print(format_table(rows))
    print(format_ratios(ratios))
    try:
        plots(rows, ratios, out, cfg)
        plotted = f"{out}/ev_vs_npca.png, {out}/fvu_a_vs_fvu_b.png, {out}/real_vs_gaussian.png"
    except ImportError as err:  # matplotlib is an optional (demo) dependency
        plotted = f"plots skipped ({err})"
    print(
        f"[sweep] done in {summary['minutes']:.1f} min. Outputs: {out}/results.csv, "
        f"{out}/results.json, {plotted}; SAEBench result JSONs in {out}/results/; "
        f"fitted SAEs in {out}/saes/"
    )
    return summary


def proportionality(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per layer, FVU_b ≈ r · FVU_a fitted through the origin on every real model (all
    tokens): r = Σ ab / Σ a², with R² of that fit."""
    out: dict[str, dict[str, float]] = {}
    for layer in sorted({r["layer"] for r in rows}):
        pts = [
            (1 - r["ev_fvu_a"], 1 - r["ev_fvu_b"])
            for r in rows
            if r["layer"] == layer and r["source"] == "real" and not r["massive_excluded"]
        ]
        if not pts:
            continue
        a = torch.tensor([p[0] for p in pts], dtype=torch.float64)
        b = torch.tensor([p[1] for p in pts], dtype=torch.float64)
        ratio = float((a * b).sum() / (a * a).sum())
        ss_res = float(((b - ratio * a) ** 2).sum())
        ss_tot = float(((b - b.mean()) ** 2).sum())
        out[str(layer)] = {
            "ratio": ratio,
            "r2": 1 - ss_res / ss_tot if ss_tot > 0 else math.nan,
            "n_models": len(pts),
        }
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    cols = [
        "layer",
        "source",
        "massive_excluded",
        "n_tokens",
        "n_clusters",
        "n_pca",
        "d_sae",
        *[f"ev_{d}" for d in DEFS],
        "excluded_tokens",
        "exclude_norm_above",
        "l0",
        "kl_div_score",
        "ce_loss_score",
        "fit_inertia",
    ]
    names = sorted({n for r in rows for n in r["ev_all"]})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols + [f"ev_all_{n}" for n in names])
        for r in rows:
            w.writerow([r.get(c) for c in cols] + [r["ev_all"].get(n) for n in names])


def format_massive(massive: dict[int, dict[str, float]], cfg: SweepConfig) -> str:
    lines = [
        f"\nMassive activations (fit tokens): share of total variance carried by the top "
        f"{cfg.massive_fraction:.1%} of tokens by norm"
    ]
    for layer, m in massive.items():
        lines.append(
            f"  layer {layer:>2}: top {m['top_tokens']} of {m['n_tokens']} tokens carry "
            f"{m['top_variance_share']:.1%} of the variance; token norm median "
            f"{m['norm_median']:.1f}, p99 {m['norm_p99']:.1f}, max {m['norm_max']:.1f}; "
            f"excluded above {m['threshold']:.1f}"
        )
    return "\n".join(lines)


def format_table(rows: list[dict[str, Any]]) -> str:
    head = [
        "layer",
        "data",
        "tokens",
        "n_tokens",
        "n_clusters",
        "n_pca",
        "fvu_a",
        "±",
        "fvu_b",
        "fvu_per_dim",
        "SAEBench 0.6.0",
    ]
    lines = [
        "\nExplained variance (1 - FVU) on held-out tokens, SAEBench core eval + plugin "
        "(± = half the 95 % bootstrap interval of fvu_a)"
    ]
    table = [head]
    for r in sorted(
        rows,
        key=lambda r: (
            r["layer"],
            r["source"] != "real",
            r["massive_excluded"],
            r["n_pca"],
            r["n_clusters"],
        ),
    ):
        table.append(
            [
                str(r["layer"]),
                r["source"],
                f"-{r['excluded_tokens']} massive" if r["massive_excluded"] else "all",
                str(r["n_tokens"]),
                str(r["n_clusters"]),
                str(r["n_pca"]),
                f"{r['ev_fvu_a']:.4f}",
                half_width(r, "fvu_a"),
                *(f"{r[f'ev_{d}']:.4f}" for d in DEFS[1:]),
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(lines)


def half_width(row: dict[str, Any], defn: str) -> str:
    ci = (row.get("ev_ci") or {}).get(defn)
    return "-" if not ci else f"{(ci[1] - ci[0]) / 2:.4f}"


def format_ratios(ratios: dict[str, dict[str, float]]) -> str:
    lines = ["\nFVU_b ≈ r · FVU_a across all fitted models (real data, all tokens):"]
    for layer, v in ratios.items():
        lines.append(
            f"  layer {layer}: r = {v['ratio']:.3f}, R² = {v['r2']:.3f} ({v['n_models']} models)"
        )
    return "\n".join(lines)


def plots(
    rows: list[dict[str, Any]], ratios: dict[str, dict[str, float]], out: Path, cfg: SweepConfig
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted({r["layer"] for r in rows})
    real = [r for r in rows if r["source"] == "real" and not r["massive_excluded"]]

    def pca_curve(layer: int, source: str) -> list[dict[str, Any]]:
        pts = (
            r
            for r in rows
            if r["layer"] == layer
            and r["source"] == source
            and not r["massive_excluded"]
            and r["n_pca"] > 0
        )
        return sorted(pts, key=lambda r: r["n_pca"])

    def per_layer(name: str, title: str, ylabel: str, draw: Any) -> None:
        fig, axes = plt.subplots(1, len(layers), figsize=(5.5 * len(layers), 4), squeeze=False)
        for ax, layer in zip(axes[0], layers, strict=True):
            draw(ax, layer)
            ax.set_xscale("log")
            ax.set_title(title.format(layer=layer))
            ax.set_xlabel("n_pca")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)

    def by_definition(ax: Any, layer: int) -> None:
        pts = pca_curve(layer, "real")
        for d in DEFS:
            draw_with_intervals(ax, [r["n_pca"] for r in pts], pts, d, marker="o", label=d)

    def real_vs_gaussian(ax: Any, layer: int) -> None:
        for src, style in (("real", "-o"), ("gaussian", "--s")):
            pts = pca_curve(layer, src)
            if pts:
                draw_with_intervals(
                    ax, [r["n_pca"] for r in pts], pts, "fvu_a", fmt=style, label=src
                )

    per_layer(
        "ev_vs_npca.png",
        f"layer {{layer}}: PCA + k-means, d_sae = {cfg.d_sae}",
        "explained variance",
        by_definition,
    )
    per_layer(
        "real_vs_gaussian.png",
        "layer {layer}: fvu_a, real vs Gaussian control",
        "explained variance (fvu_a)",
        real_vs_gaussian,
    )

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for layer in layers:
        pts = [r for r in real if r["layer"] == layer]
        a = [1 - r["ev_fvu_a"] for r in pts]
        b = [1 - r["ev_fvu_b"] for r in pts]
        fit = ratios[str(layer)]
        sc = ax.scatter(
            a, b, label=f"layer {layer}: FVU_b ≈ {fit['ratio']:.2f}·FVU_a (R² = {fit['r2']:.2f})"
        )
        grid = torch.linspace(0, max(a) * 1.05, 20)
        ax.plot(grid, fit["ratio"] * grid, color=sc.get_facecolor()[0], alpha=0.6)
    ax.set_xlabel("FVU_a (pooled, global mean)")
    ax.set_ylabel("FVU_b (per-token, batch mean)")
    ax.set_title("fvu_a vs fvu_b, every fitted model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fvu_a_vs_fvu_b.png", dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    """``python -m sae_fvu_plugin.experiments.clustering_sweep`` = ``sae-fvu sweep``."""
    from ..cli import main as cli_main

    cli_main(["sweep", *(argv if argv is not None else __import__("sys").argv[1:])])


if __name__ == "__main__":
    main()
