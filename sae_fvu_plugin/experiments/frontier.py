"""The frontier: SAEs against clustering at every L0, under every definition, on identical
tokens, every method scored by the same unmodified SAEBench loop.

The question is the one of StefanHex's LessWrong shortform on FVU definitions and
k-means: does clustering (L0 = 1) rival SAEs, at which L0, under which definition? Per
layer, on the same cached fit activations: k-means, its codebook as SAELens's top-1 SAE
(latent = projection) and as matching pursuit, k-lines, PCA + k-means, residual k-means,
and SAEs trained by SAELens's own trainer (TopK, BatchTopK, ReLU + L1) until their held-out
explained variance plateaus; the same methods on Gaussian data with the activations'
mean and covariance (a smaller grid by default). Every model has d_sae = ``--d-sae`` and
is evaluated on held-out contexts (disjoint from every fit, checked) by SAEBench's
``run_evals`` with the plugin reporting every definition (with bootstrap intervals).

    sae-fvu frontier                                                 # offline, CPU-sized
    sae-fvu frontier --model pythia-70m-deduped --dataset Skylion007/openwebtext --layers 3 4
    sae-fvu frontier --full                                          # 1M tokens (GPU)

Output in ``out/frontier/``: results.csv / results.json (method, family, L0, d_sae, tokens
seen, passes, every definition with its interval, SAEBench's other core metrics,
learning curves), SAEBench result JSONs, frontier.png (explained variance vs L0, one
panel per definition and layer), frontier_gaussian.png, learning_curves.png, and the
summary (also printed).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

from .config import FrontierConfig
from .pipeline import DEFS, Experiment, Point, draw_with_intervals, plain

__all__ = ["FrontierConfig", "main", "points", "run", "summarize"]

SAE_FAMILIES = ("topk", "batchtopk", "standard")
CLUSTERING = ("kmeans", "kmeans_top1", "klines", "kmeans_mp", "pca_kmeans", "residual_kmeans")


def points(cfg: FrontierConfig) -> list[Point]:
    """Every model of the frontier: per layer, real data with the whole grid, then the
    Gaussian control (the whole grid, or with ``gaussian_grid="small"`` one or two points
    per family)."""
    d = cfg.d_sae
    out: list[Point] = []
    for layer in cfg.layers:
        for src in ["real", "gaussian"] if cfg.gaussian else ["real"]:
            small = src == "gaussian" and cfg.gaussian_grid == "small"

            def pick(values: list[Any], small: bool = small) -> list[Any]:
                return [values[len(values) // 2]] if small and values else list(values)

            out.append(Point.of("kmeans", layer, src, n_clusters=d))
            out.append(Point.of("kmeans_top1", layer, src, n_clusters=d))
            if not small:
                out.append(Point.of("klines", layer, src, n_clusters=d))
                for m in cfg.mp_iterations:
                    out.append(Point.of("kmeans_mp", layer, src, n_clusters=d, steps=m))
            for p in pick(cfg.pca_ns):
                out.append(Point.of("pca_kmeans", layer, src, n_clusters=d - p, n_pca=p))
            for st in pick(cfg.residual_stages):
                out.append(Point.of("residual_kmeans", layer, src, n_clusters=d // st, n_stages=st))
            for k in pick(cfg.sae_ks):
                out.append(Point.of("topk", layer, src, d_sae=d, k=k))
            if not small:
                for k in cfg.batchtopk_ks:
                    out.append(Point.of("batchtopk", layer, src, d_sae=d, k=k))
            if not small:
                for c in cfg.l1_coefficients:
                    out.append(Point.of("standard", layer, src, d_sae=d, l1=float(c)))
    return out


# Seconds on 2 CPU cores, measured on SmolLM2-135M at d_sae 512 with 16k fit tokens (a
# fresh-clone `make demo`): the fit of one model of each method, before its evaluation.
_FIT_SECONDS = {"residual_kmeans": 15.0, "pca_kmeans": 5.0, "klines": 4.0}
_SAE_SECONDS_PER_TOKEN = 45e-6  # SAELens training, d_sae 512, incl. its learning-curve evals


def estimate_minutes(cfg: FrontierConfig, todo: list[Point] | None = None) -> float:
    """Wall time on 2 CPU cores for the points in ``todo`` (default: all), from rates
    measured in a fresh-clone run on SmolLM2-135M:

    * the forward pass costs ≈ (L + 1) / 8,500 s per token stopping after layer L (so
      ≈ 280 tokens/s through all 30 layers);
    * an SAEBench eval of a real-data model = its KL / CE batches (with ``model_metrics``: 3
      full forward passes of ``recon_batches · batch_prompts · context_size`` tokens) + the
      variance batches to the hooked layer + ≈ 0.5 s; a Gaussian-control model is scored
      directly (≈ 1 s);
    * a fit: ``_FIT_SECONDS`` per method (2 s otherwise), scaled by fit tokens · d_sae; an
      SAE ≈ 45 s per million training tokens, assuming it plateaus after eight
      learning-curve segments (it stops at ``sae_max_tokens`` otherwise).
    """
    pts = points(cfg) if todo is None else todo
    scale = cfg.fit_tokens / 16_384 * cfg.d_sae / 512
    sae_tokens = min(cfg.sae_max_tokens, 8 * cfg.sae_eval_every)
    seconds = 15.0  # imports, model load, summary and plots
    if todo is None or todo:
        n_rows = cfg.fit_tokens + cfg.val_tokens
        seconds += n_rows * (max(cfg.layers) + 1) / 8_500
    recon = 3 * cfg.recon_batches * cfg.batch_prompts * cfg.context_size * 30 / 8_500
    recon *= cfg.model_metrics
    for p in pts:
        if p.method in SAE_FAMILIES:
            seconds += sae_tokens * _SAE_SECONDS_PER_TOKEN * cfg.d_sae / 512
        else:
            seconds += _FIT_SECONDS.get(p.method, 2.0) * scale
        if p.source == "real":
            seconds += recon + cfg.eval_tokens * (p.layer + 1) / 8_500 + 0.5
        else:
            seconds += 1.0
    return seconds / 60


def run(cfg: FrontierConfig, *, progress: bool = True) -> dict[str, Any]:
    t0 = time.time()
    out = Path(cfg.out)
    pts = points(cfg)
    print(
        f"[frontier] {cfg.model} on {cfg.dataset}: layers {cfg.layers} (hook_resid_post), d_sae "
        f"{cfg.d_sae}; {len(pts)} models ({sum(p.method in SAE_FAMILIES for p in pts)} SAEs trained "
        f"by SAELens) fitted on {cfg.fit_tokens:,} tokens, evaluated by SAEBench on "
        f"{cfg.eval_tokens:,} held-out tokens.",
        flush=True,
    )
    exp = Experiment(cfg, progress=progress)
    todo = [p for p in pts if not exp.is_cached(p)]
    cached = len(pts) - len(todo)
    print(
        "[frontier] "
        + (
            "everything is cached: printing the results."
            if cached == len(pts)
            else f"estimated {estimate_minutes(cfg, todo):.0f} min on 2 CPU cores "
            f"({cached} of {len(pts)} models cached)"
        )
        + f"; output in {out}/",
        flush=True,
    )
    rows = exp.run(pts, exp.default_evaluate, desc="frontier")
    summary = summarize(rows)
    result = {
        "config": dataclasses.asdict(cfg),
        "rows": rows,
        "summary": summary,
        "minutes": (time.time() - t0) / 60,
    }
    (out / "results.json").write_text(json.dumps(plain(result), indent=1))
    write_csv(rows, out / "results.csv")
    print(format_table(rows))
    print(format_summary(summary))
    try:
        plots(rows, out)
        plotted = f"{out}/frontier.png, {out}/frontier_gaussian.png, {out}/learning_curves.png"
    except ImportError as err:
        plotted = f"plots skipped ({err})"
    print(
        f"[frontier] done in {result['minutes']:.1f} min. Outputs: {out}/results.csv, "
        f"{out}/results.json, {plotted}; SAEBench result JSONs in {out}/results/"
    )
    return result


# --------------------------------------------------------------------------- summary


def _curve(
    rows: list[dict[str, Any]], method: str, layer: int, defn: str
) -> list[tuple[float, float]]:
    pts = [
        (float(r["l0"]), float(r[f"ev_{defn}"]))
        for r in rows
        if r["method"] == method and r["layer"] == layer and r["source"] == "real" and r["l0"]
    ]
    return sorted(pts)


def l0_to_match(curve: list[tuple[float, float]], target: float) -> float | None:
    """Smallest L0 where the curve (explained variance vs L0, interpolated linearly in
    log L0) reaches ``target``; None if it never does."""
    prev: tuple[float, float] | None = None
    for l0, ev in curve:
        if ev >= target:
            if prev is None or prev[1] >= target:
                return l0
            f = (target - prev[1]) / (ev - prev[1])
            return float(math.exp(math.log(prev[0]) + f * (math.log(l0) - math.log(prev[0]))))
        prev = (l0, ev)
    return None


def _at(curve: list[tuple[float, float]], l0: float) -> float | None:
    """Explained variance at ``l0`` (log-linear interpolation inside the curve only)."""
    for (a, va), (b, vb) in zip(curve, curve[1:], strict=False):
        if a <= l0 <= b and b > a:
            f = (math.log(l0) - math.log(a)) / (math.log(b) - math.log(a))
            return va + f * (vb - va)
    for a, va in curve:
        if abs(a - l0) < 1e-9:
            return va
    return None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The original experiment's questions, per layer (real data, all tokens)."""
    out: dict[str, Any] = {}
    for layer in sorted({r["layer"] for r in rows if r["source"] == "real"}):
        real = [r for r in rows if r["layer"] == layer and r["source"] == "real"]
        by_def: dict[str, Any] = {}
        for defn in ("fvu_a", "fvu_b", "fvu_per_dim", "saebench_0_6"):
            km = next((r[f"ev_{defn}"] for r in real if r["method"] == "kmeans"), None)
            pk = sorted(
                (r["params"]["n_pca"] + 1, r[f"ev_{defn}"])
                for r in real
                if r["method"] == "pca_kmeans"
            )
            match = {}
            for fam in SAE_FAMILIES:
                curve = _curve(rows, fam, layer, defn)
                if not curve:
                    continue
                match[fam] = {
                    "l0_to_match_kmeans": None if km is None else l0_to_match(curve, km),
                    "l0_to_match_pca_kmeans": {str(l0): l0_to_match(curve, ev) for l0, ev in pk},
                    "smallest_l0_tried": curve[0][0],
                }
            # ranking of methods by explained variance at common L0 values
            grid = [1.0, 2.0, 4.0, 8.0, 16.0]
            ranking = {}
            for g in grid:
                vals = {}
                for method in {r["method"] for r in real}:
                    v = _at(_curve(rows, method, layer, defn), g)
                    if v is not None:
                        vals[method] = v
                ranking[str(int(g))] = sorted(vals, key=lambda m: -vals[m])
            # one straight-ish line of explained variance against log2 L0, every point
            xs = [math.log2(float(r["l0"])) for r in real if r["l0"] and r["l0"] > 0]
            ys = [float(r[f"ev_{defn}"]) for r in real if r["l0"] and r["l0"] > 0]
            line = _line(xs, ys)
            residuals: dict[str, float] = {}
            if line is not None:
                for fam in ("clustering", "sae"):
                    res = [
                        float(r[f"ev_{defn}"])
                        - (line["intercept"] + line["slope"] * math.log2(float(r["l0"])))
                        for r in real
                        if r["family"] == fam and r["l0"] and r["l0"] > 0
                    ]
                    if res:
                        residuals[fam] = sum(res) / len(res)
            by_def[defn] = {
                "kmeans": km,
                "match": match,
                "ranking": ranking,
                "line": line,
                "mean_residual_by_family": residuals,
            }
        # does the ranking change with the definition?
        changes = {}
        for g in by_def["fvu_a"]["ranking"]:
            a, b = by_def["fvu_a"]["ranking"][g], by_def["fvu_b"]["ranking"][g]
            if a != b:
                changes[g] = {"fvu_a": a, "fvu_b": b}
        # L0 > 1 clustering vs L0 = 1 clustering at equal d_sae
        km_rows = [r for r in real if r["method"] == "kmeans"]
        beats = []
        if km_rows:
            km_row = km_rows[0]
            for r in real:
                if r["method"] != "kmeans" and r["d_sae"] == km_row["d_sae"]:
                    diff = r["ev_fvu_a"] - km_row["ev_fvu_a"]
                    lo, hi = paired_interval(r, km_row, "fvu_a")
                    beats.append(
                        {
                            "method": r["method"],
                            "family": r["family"],
                            "params": r["params"],
                            "l0": r["l0"],
                            "ev_fvu_a_minus_kmeans": diff,
                            "paired_ci": [lo, hi],
                            "beats_kmeans": lo > 0 if math.isfinite(lo) else diff > 0,
                        }
                    )
        out[str(layer)] = {
            "by_definition": by_def,
            "ranking_changes_fvu_a_vs_fvu_b": changes,
            "vs_kmeans_at_equal_d_sae": beats,
            "saes_plateaued": {r["name"]: r.get("plateaued") for r in real if r["family"] == "sae"},
        }
    return out


def paired_interval(
    a: dict[str, Any], b: dict[str, Any], defn: str, level: float = 0.95
) -> tuple[float, float]:
    """95 % interval of EV(a) − EV(b) from their paired bootstrap replicates (the same eval
    contexts, the same weights): estimate ± z · sd of the replicate differences."""
    from statistics import NormalDist, stdev

    ra = (a.get("ev_replicates") or {}).get(defn)
    rb = (b.get("ev_replicates") or {}).get(defn)
    if not ra or not rb or len(ra) != len(rb):
        return math.nan, math.nan
    diffs = [x - y for x, y in zip(ra, rb, strict=True) if math.isfinite(x - y)]
    if len(diffs) < 2:
        return math.nan, math.nan
    est = a[f"ev_{defn}"] - b[f"ev_{defn}"]
    half = NormalDist().inv_cdf((1 + level) / 2) * stdev(diffs)
    return est - half, est + half


def _line(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    icpt = my - slope * mx
    ss_res = sum((y - icpt - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {
        "intercept": icpt,
        "slope": slope,
        "r2": 1 - ss_res / ss_tot if ss_tot else math.nan,
        "n": n,
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = ["\nSummary (real data, held-out tokens):"]
    for layer, s in summary.items():
        lines.append(f" layer {layer}:")
        for defn in ("fvu_a", "fvu_b"):
            d = s["by_definition"][defn]
            km = d["kmeans"]
            lines.append(
                f"  {defn}: k-means (L0 = 1) explains {km:.4f}" if km is not None else f"  {defn}:"
            )
            for fam, m in d["match"].items():
                first = m.get("smallest_l0_tried")

                def said(v: float | None, first: float | None = first) -> str:
                    if v is None:
                        return "never (in range)"
                    return f"≤ {v:.1f}" if first is not None and v <= first else f"≈ {v:.1f}"

                pk = ", ".join(
                    f"PCA+k-means L0={k}: {said(v)}" for k, v in m["l0_to_match_pca_kmeans"].items()
                )
                lines.append(
                    f"    {fam:>9} matches k-means at L0 {said(m['l0_to_match_kmeans'])}; {pk}"
                )
            line = d["line"]
            if line:
                res = ", ".join(f"{k} {v:+.3f}" for k, v in d["mean_residual_by_family"].items())
                lines.append(
                    f"    line EV = {line['intercept']:.3f} + {line['slope']:.3f}·log2(L0) (R² {line['r2']:.2f}); "
                    f"mean residual: {res}"
                )
        ch = s["ranking_changes_fvu_a_vs_fvu_b"]
        lines.append(
            "  ranking of methods at L0 "
            + (
                ", ".join(ch) + " changes between fvu_a and fvu_b"
                if ch
                else "1–16: the same under fvu_a and fvu_b"
            )
        )
        lines.append(
            "  fvu_a minus k-means (L0 = 1) at equal d_sae, paired 95 % interval (same tokens):"
        )
        for b in s["vs_kmeans_at_equal_d_sae"]:
            lo, hi = b["paired_ci"]
            params = ",".join(
                f"{k}={v:g}" for k, v in b["params"].items() if k not in ("d_sae", "n_clusters")
            )
            lines.append(
                f"    {b['method']:<16} {params:<12} L0 {b['l0']:5.1f}: {b['ev_fvu_a_minus_kmeans']:+.4f} "
                f"[{lo:+.4f}, {hi:+.4f}]" + ("  better" if b["beats_kmeans"] else "")
            )
    return "\n".join(lines)


def format_table(rows: list[dict[str, Any]]) -> str:
    head = [
        "layer",
        "data",
        "method",
        "params",
        "L0",
        "fvu_a",
        "±",
        "fvu_b",
        "fvu_per_dim",
        "SAEBench 0.6.0",
        "passes",
    ]
    table = [head]
    for r in sorted(
        rows,
        key=lambda r: (r["layer"], r["source"] != "real", r["family"], r["method"], r["l0"] or 0),
    ):
        ci = (r.get("ev_ci") or {}).get("fvu_a")
        table.append(
            [
                str(r["layer"]),
                r["source"],
                r["method"],
                ",".join(
                    f"{k}={v:g}"
                    for k, v in r["params"].items()
                    if k not in ("d_sae", "n_clusters") or r["method"] == "residual_kmeans"
                ),
                f"{r['l0']:.1f}" if r["l0"] is not None else "-",
                f"{r['ev_fvu_a']:.4f}",
                "-" if ci is None else f"{(ci[1] - ci[0]) / 2:.4f}",
                f"{r['ev_fvu_b']:.4f}",
                f"{r['ev_fvu_per_dim']:.4f}",
                f"{r['ev_saebench_0_6']:.4f}",
                "-" if r.get("passes") is None else f"{r['passes']:.1f}",
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = [
        "\nExplained variance (1 − FVU) on held-out tokens, SAEBench core eval + plugin (± = half the 95 % interval)"
    ]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    cols = [
        "layer",
        "source",
        "method",
        "family",
        "params",
        "d_sae",
        "l0_nominal",
        "l0",
        "n_tokens",
        "tokens_seen",
        "passes",
        "fit_seconds",
        *[f"ev_{d}" for d in DEFS],
        "kl_div_score",
        "ce_loss_score",
        "cossim",
        "mse",
        "plateaued",
        "dead_latents",
        "dense_latents",
    ]
    names = sorted({n for r in rows for n in r["ev_all"]})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols + [f"ev_all_{n}" for n in names] + [f"ci_{d}" for d in DEFS])
        for r in rows:
            ci = r.get("ev_ci") or {}
            w.writerow(
                [json.dumps(r.get(c)) if c == "params" else r.get(c) for c in cols]
                + [r["ev_all"].get(n) for n in names]
                + [json.dumps(ci.get(d)) if ci.get(d) else None for d in DEFS]
            )


def plots(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    defs = ("fvu_a", "fvu_b", "fvu_per_dim", "saebench_0_6")
    styles = {
        "kmeans": ("o", "C0"),
        "kmeans_top1": ("^", "C1"),
        "klines": ("v", "C2"),
        "kmeans_mp": ("P", "C3"),
        "pca_kmeans": ("s", "C4"),
        "residual_kmeans": ("D", "C5"),
        "topk": ("*", "C6"),
        "batchtopk": ("X", "C7"),
        "standard": ("h", "C8"),
    }
    for source, name in (("real", "frontier.png"), ("gaussian", "frontier_gaussian.png")):
        sel = [r for r in rows if r["source"] == source and r["l0"]]
        if not sel:
            continue
        layers = sorted({r["layer"] for r in sel})
        fig, axes = plt.subplots(
            len(layers), len(defs), figsize=(4.4 * len(defs), 3.8 * len(layers)), squeeze=False
        )
        for i, layer in enumerate(layers):
            for j, defn in enumerate(defs):
                ax = axes[i][j]
                for method in styles:
                    pts = sorted(
                        (r for r in sel if r["layer"] == layer and r["method"] == method),
                        key=lambda r: r["l0"],
                    )
                    if not pts:
                        continue
                    marker, color = styles[method]
                    draw_with_intervals(
                        ax,
                        [r["l0"] for r in pts],
                        pts,
                        defn,
                        marker=marker,
                        color=color,
                        label=method,
                        ls="--" if method in SAE_FAMILIES else "-",
                    )
                ax.set_xscale("log", base=2)
                ax.set_title(
                    f"layer {layer}: {defn}"
                    + (" (Gaussian control)" if source == "gaussian" else "")
                )
                ax.set_xlabel("L0 (SAEBench)")
                ax.set_ylabel("explained variance")
                ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
    curves = [r for r in rows if r.get("learning_curve") and r["source"] == "real"]
    if curves:
        layers = sorted({r["layer"] for r in curves})
        fig, axes = plt.subplots(1, len(layers), figsize=(5.5 * len(layers), 4), squeeze=False)
        for ax, layer in zip(axes[0], layers, strict=True):
            for r in (r for r in curves if r["layer"] == layer):
                t = [p[0] for p in r["learning_curve"]]
                v = [p[1] for p in r["learning_curve"]]
                ax.plot(
                    t,
                    v,
                    marker=".",
                    label=f"{r['method']} {','.join(f'{k}={x:g}' for k, x in r['params'].items() if k != 'd_sae')}",
                )
            ax.set_xscale("log")
            ax.set_xlabel("training tokens seen")
            ax.set_ylabel("held-out explained variance (fvu_a)")
            ax.set_title(f"layer {layer}: SAE learning curves")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "learning_curves.png", dpi=110)
        plt.close(fig)


# ------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    """``python -m sae_fvu_plugin.experiments.frontier`` = ``sae-fvu frontier``."""
    from ..cli import main as cli_main

    cli_main(["frontier", *(argv if argv is not None else __import__("sys").argv[1:])])


if __name__ == "__main__":
    main()
