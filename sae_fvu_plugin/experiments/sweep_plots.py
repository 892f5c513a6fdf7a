"""The clustering sweep's plots: explained variance against n_pca under every definition,
real data against the Gaussian control, and FVU_b against FVU_a."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .report import DEFS, draw_with_intervals


def plots(rows: list[dict[str, Any]], summary: dict[str, Any], out: Path, cfg: Any) -> list[str]:
    """ev_vs_npca.png (every definition against n_pca), real_vs_gaussian.png and
    fvu_a_vs_fvu_b.png (with each layer's proportionality fit); returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = summary["ratios_fvu_b_over_fvu_a"]
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

    fvu_a_vs_fvu_b(real, ratios, out, plt)
    return ["ev_vs_npca.png", "fvu_a_vs_fvu_b.png", "real_vs_gaussian.png"]


def fvu_a_vs_fvu_b(
    real: list[dict[str, Any]], ratios: dict[str, dict[str, float]], out: Path, plt: Any
) -> None:
    """fvu_a_vs_fvu_b.png: FVU_b against FVU_a of every real model, with each layer's
    fit through the origin."""
    layers = sorted({r["layer"] for r in real})
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for layer in layers:
        pts = [r for r in real if r["layer"] == layer]
        a = [1 - r["ev_fvu_a"] for r in pts]
        b = [1 - r["ev_fvu_b"] for r in pts]
        fit = ratios[str(layer)]
        sc = ax.scatter(
            a, b, label=f"layer {layer}: FVU_b ≈ {fit['ratio']:.2f}·FVU_a (R² = {fit['r2']:.3f})"
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
