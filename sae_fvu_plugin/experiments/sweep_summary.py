"""The clustering sweep's summary and report: FVU_b against FVU_a, the massive-activation
statistics, the table (pure functions over rows)."""

from __future__ import annotations

import math
from typing import Any

import torch

from .report import DEFS, aligned, half_width

Rows = list[dict[str, Any]]


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
