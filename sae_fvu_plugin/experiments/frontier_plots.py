"""The frontier's plots: explained variance against L0 per definition and layer (real
data and the Gaussian control) and the SAEs' learning curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .frontier_summary import SAE_FAMILIES
from .report import DEFS, draw_with_intervals


def plots(rows: list[dict[str, Any]], out: Path) -> list[str]:
    """frontier.png (explained variance vs L0, one panel per definition and layer),
    frontier_gaussian.png and learning_curves.png; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    defs = DEFS
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
    learning_curves(rows, out, plt)
    return ["frontier.png", "frontier_gaussian.png", "learning_curves.png"]


def learning_curves(rows: list[dict[str, Any]], out: Path, plt: Any) -> None:
    """learning_curves.png: each SAE's held-out explained variance against tokens seen."""
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
