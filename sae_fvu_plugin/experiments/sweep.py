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
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .config import SweepConfig
from .inputs import massive_stats
from .points import Point
from .report import DEFS, aligned, half_width
from .runner import Experiment, ExperimentSpec, Rows
from .sweep_plots import plots

__all__ = ["SWEEP", "SweepConfig", "estimate_minutes", "points", "proportionality"]


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


def describe(cfg: SweepConfig, pts: list[Point]) -> str:
    n_models = len(cfg.fits()) * len(cfg.layers)
    return (
        f"{cfg.model} on {cfg.dataset}: layers {cfg.layers} (hook_resid_post); fit on "
        f"{cfg.fit_tokens:,} tokens, evaluate on {cfg.eval_tokens:,} held-out tokens.\n[sweep] "
        f"{n_models} models (k-means k={cfg.ks}; PCA+k-means d_sae={cfg.d_sae}, "
        f"n_pca={[p for _, p in cfg.fits() if p]})"
        + (f" + the same {n_models} on Gaussian data" if cfg.gaussian else "")
        + f"; each scored by SAEBench run_evals twice (all tokens / top "
        f"{cfg.massive_fraction:.1%} by norm excluded)."
    )


def estimate_minutes(cfg: SweepConfig, todo: list[Point] | None = None) -> float:
    """Wall time on 2 CPU cores, from rates measured in a fresh-clone run on SmolLM2-135M:
    the forward pass costs ≈ (L + 1) / 8,500 s per token stopping after layer L; each
    real-data model gets its KL / CE batches (3 full forward passes), two variance
    evaluations to the hooked layer (all tokens / massive excluded, ≈ 2 s of SAEBench
    overhead each) and a fit (≈ 4 s at 16k tokens and d_sae 512, more for large k · n); a
    Gaussian-control model costs its fit only. ``todo``: the share of points left."""
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
    share = 1.0 if todo is None else len(todo) / max(len(points(cfg)), 1)
    return (fit_s + act_s + eval_s + 15) / 60 * share


def prepare(exp: Experiment) -> dict[str, Any]:
    cfg: Any = exp.cfg
    acts = exp.inputs.fit_acts
    massive = {
        layer: massive_stats(acts[cfg.hook(layer)], cfg.massive_fraction) for layer in cfg.layers
    }
    return {"massive": massive, "fraction": cfg.massive_fraction}


def evaluate(exp: Experiment, context: dict[str, Any], sae: Any, point: Point) -> Rows:
    """Real data: SAEBench twice (all tokens; the massive tokens excluded, KL / CE reused);
    the Gaussian control directly."""
    ev = exp.evaluator
    base = {"n_clusters": point.param_dict["n_clusters"], "n_pca": point.param_dict.get("n_pca", 0)}
    if point.source != "real":
        return ev.direct_rows(sae, point, exclude_norm_above=None, **base)
    rows = []
    groups: dict[str, Any] = {}
    for excl in (None, context["massive"][point.layer]["threshold"]):
        res = ev.real(
            sae,
            point,
            exclude=excl,
            out_json=ev.result_json(point, "" if excl is None else "_massive_excluded"),
            reuse_groups=groups,
            model_metrics=exp.cfg.model_metrics,
        )
        groups = {k: v for k, v in res["metrics"].items() if k.startswith("model_")}
        n_eval = exp.inputs.n_var_ctx * exp.cfg.context_size
        extra = dict(massive_excluded=excl is not None, exclude_norm_above=excl, **base)
        rows.append(ev.row(point, sae, res, n_eval_tokens=n_eval, **extra))
    return rows


def proportionality(rows: Rows) -> dict[str, dict[str, float]]:
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
        r2 = 1 - ss_res / ss_tot if ss_tot > 0 else math.nan
        out[str(layer)] = {"ratio": ratio, "r2": r2, "n_models": len(pts)}
    return out


def summarize(rows: Rows, context: dict[str, Any]) -> dict[str, Any]:
    return {
        "massive_fraction": context["fraction"],
        "massive_tokens": {str(k): v for k, v in context["massive"].items()},
        "ratios_fvu_b_over_fvu_a": proportionality(rows),
    }


def report(rows: Rows, summary: dict[str, Any]) -> str:
    return "\n".join(
        [
            format_massive(summary["massive_tokens"], summary["massive_fraction"]),
            format_table(rows),
            format_ratios(summary["ratios_fvu_b_over_fvu_a"]),
        ]
    )


def format_massive(massive: dict[str, dict[str, float]], fraction: float) -> str:
    lines = [
        f"\nMassive activations (fit tokens): share of total variance carried by the top "
        f"{fraction:.1%} of tokens by norm"
    ]
    for layer, m in massive.items():
        lines.append(
            f"  layer {layer:>2}: top {m['top_tokens']} of {m['n_tokens']} tokens carry "
            f"{m['top_variance_share']:.1%} of the variance; token norm median "
            f"{m['norm_median']:.1f}, p99 {m['norm_p99']:.1f}, max {m['norm_max']:.1f}; "
            f"excluded above {m['threshold']:.1f}"
        )
    return "\n".join(lines)


def format_table(rows: Rows) -> str:
    head = ["layer", "data", "tokens", "n_tokens", "n_clusters", "n_pca", "fvu_a", "±"]
    table = [head + ["fvu_b", "fvu_per_dim", "SAEBench 0.6.0"]]

    def order(r: dict[str, Any]) -> tuple[Any, ...]:
        return (
            r["layer"],
            r["source"] != "real",
            r["massive_excluded"],
            r["n_pca"],
            r["n_clusters"],
        )

    for r in sorted(rows, key=order):
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
    return aligned(
        "\nExplained variance (1 - FVU) on held-out tokens, SAEBench core eval + plugin "
        "(± = half the 95 % bootstrap interval of fvu_a)",
        table,
    )


def format_ratios(ratios: dict[str, dict[str, float]]) -> str:
    lines = ["\nFVU_b ≈ r · FVU_a across all fitted models (real data, all tokens):"]
    for layer, v in ratios.items():
        lines.append(
            f"  layer {layer}: r = {v['ratio']:.3f}, R² = {v['r2']:.3f} ({v['n_models']} models)"
        )
    return "\n".join(lines)


CSV_COLUMNS = (
    "layer",
    "source",
    "massive_excluded",
    "n_tokens",
    "n_clusters",
    "n_pca",
    *(f"ev_{d}" for d in DEFS),
    "excluded_tokens",
    "exclude_norm_above",
    "l0",
    "kl_div_score",
    "ce_loss_score",
    "fit_inertia",
)

SWEEP = ExperimentSpec(
    name="sweep",
    points=points,
    describe=describe,
    estimate_minutes=estimate_minutes,
    prepare=prepare,
    evaluate=evaluate,
    summarize=summarize,
    report=report,
    plots=plots,
    csv_columns=CSV_COLUMNS,
)
