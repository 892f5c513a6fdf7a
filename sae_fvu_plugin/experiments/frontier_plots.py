"""The frontier's plots: explained variance against L0 per definition and layer (real
data and the Gaussian control) and the SAEs' learning curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .frontier_summary import SAE_FAMILIES
from .report import DEFS, draw_with_intervals

LABELS = {
    "kmeans": "k-means",
    "kmeans_top1": "top-1 SAE on the k-means centroids",
    "klines": "k-lines",
    "kmeans_mp": "matching pursuit on the codebook",
    "pca_kmeans": "PCA + k-means",
    "residual_kmeans": "residual k-means",
    "topk": "TopK SAE",
    "batchtopk": "BatchTopK SAE",
    "standard": "ReLU + L1 SAE",
    "jumprelu": "JumpReLU SAE",
    "matryoshka": "Matryoshka BatchTopK SAE",
    "topk_kmeans_init": "TopK SAE from the k-means codebook",
}
STYLES = {
    "kmeans": ("o", "C0"),
    "kmeans_top1": ("^", "C1"),
    "klines": ("v", "C2"),
    "kmeans_mp": ("P", "C3"),
    "pca_kmeans": ("s", "C4"),
    "residual_kmeans": ("D", "C5"),
    "topk": ("*", "C6"),
    "batchtopk": ("X", "C7"),
    "standard": ("h", "C8"),
    "jumprelu": ("p", "C9"),
    "matryoshka": ("d", "k"),
    "topk_kmeans_init": ("<", "navy"),
}


def plots(rows: list[dict[str, Any]], out: Path) -> list[str]:
    """frontier.png (explained variance vs L0, one panel per definition and layer),
    frontier_gaussian.png and learning_curves.png; returns the file names.

    Points at the same L0 are spread sideways by a few percent of an octave so none hides
    another; each panel's y range follows the point estimates (±15 % of their spread), so
    an interval far wider than the differences between methods runs off the panel (the
    panel counts them) instead of flattening every point into one line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    defs = DEFS
    for source, name in (("real", "frontier.png"), ("gaussian", "frontier_gaussian.png")):
        sel = [r for r in rows if r["source"] == source and r["l0"]]
        if not sel:
            continue
        layers = sorted({r["layer"] for r in sel})
        fig, axes = plt.subplots(
            len(layers),
            len(defs),
            figsize=(4.6 * len(defs), 4.0 * len(layers) + 0.9),
            squeeze=False,
        )
        for i, layer in enumerate(layers):
            for j, defn in enumerate(defs):
                _panel(axes[i][j], [r for r in sel if r["layer"] == layer], defn)
                axes[i][j].set_title(
                    f"layer {layer}: {defn}"
                    + (" (Gaussian control)" if source == "gaussian" else ""),
                    fontsize=11,
                )
        handles, labels = axes[0][0].get_legend_handles_labels()
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        fig.legend(
            handles,
            labels,
            loc="lower center",
            ncol=min(len(labels), 5),
            fontsize=10,
            frameon=False,
        )
        fig.suptitle(
            "Explained variance (1 − FVU) on held-out tokens vs L0, d_sae equal for every "
            "model; bars: 95 % bootstrap intervals; dashed: SAEs",
            fontsize=12,
        )
        fig.tight_layout(rect=(0, 0.07, 1, 0.96))
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
    learning_curves(rows, out, plt)
    return ["frontier.png", "frontier_gaussian.png", "learning_curves.png"]


def _panel(ax: Any, rows: list[dict[str, Any]], defn: str) -> None:
    methods = [m for m in STYLES if any(r["method"] == m for r in rows)]
    at_one = [m for m in methods if any(abs(r["l0"] - 1) < 0.05 for r in rows if r["method"] == m)]
    ys = []
    for method in methods:
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["l0"])
        shift = (
            2 ** (0.09 * (at_one.index(method) - (len(at_one) - 1) / 2)) if method in at_one else 1
        )
        marker, color = STYLES[method]
        draw_with_intervals(
            ax,
            [r["l0"] * (shift if abs(r["l0"] - 1) < 0.05 else 1) for r in pts],
            pts,
            defn,
            marker=marker,
            color=color,
            label=LABELS.get(method, method),
            ls="--" if method in SAE_FAMILIES else "-",
            ms=7,
        )
        ys += [r[f"ev_{defn}"] for r in pts]
    ax.set_xscale("log", base=2)
    ax.set_xlabel("L0 (SAEBench)")
    ax.set_ylabel("explained variance")
    ax.grid(alpha=0.3)
    if ys:
        lo, hi = min(ys), max(ys)
        pad = max(0.15 * (hi - lo), 0.01)
        ax.set_ylim(lo - pad, hi + pad)
        clipped = [
            r
            for r in rows
            if (r.get("ev_ci") or {}).get(defn)
            and (r["ev_ci"][defn][0] < lo - pad or r["ev_ci"][defn][1] > hi + pad)
        ]
        if clipped:
            ax.text(
                0.98,
                0.02,
                f"{len(clipped)} interval(s) run off the panel",
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=8,
                color="0.35",
            )


def learning_curves(rows: list[dict[str, Any]], out: Path, plt: Any) -> None:
    """learning_curves.png: each SAE's explained variance (fvu_a) on the validation split
    (``val_tokens`` held out from fit and eval, not the table's eval tokens) against tokens
    seen; its end value is marked beside the table's value on the eval tokens."""
    curves = [r for r in rows if r.get("learning_curve") and r["source"] == "real"]
    if not curves:
        return
    layers = sorted({r["layer"] for r in curves})
    fig, axes = plt.subplots(1, len(layers), figsize=(6.5 * len(layers), 5.4), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        for r in (r for r in curves if r["layer"] == layer):
            t = [p[0] / 1000 for p in r["learning_curve"]]
            v = [p[1] for p in r["learning_curve"]]
            params = ",".join(f"{k}={x:g}" for k, x in r["params"].items() if k != "d_sae")
            (line,) = ax.plot(
                t, v, marker=".", label=f"{LABELS.get(r['method'], r['method'])} {params}"
            )
            ax.plot([t[-1]], [r["ev_fvu_a"]], marker="_", ms=14, mew=2, color=line.get_color())
        ax.set_xlabel("training tokens seen (thousands)")
        ax.set_ylabel("explained variance (fvu_a), validation split")
        ax.set_title(f"layer {layer}: SAE learning curves", fontsize=11)
        ax.grid(alpha=0.3)
        ends = [p[1] for r in curves if r["layer"] == layer for p in r["learning_curve"][-3:]]
        ends += [r["ev_fvu_a"] for r in curves if r["layer"] == layer]
        ax.set_ylim(max(min(ends) - 0.1, -0.05), min(max(ends) + 0.03, 1.0))
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9, frameon=False)
    fig.suptitle(
        "Curves: the validation split (held out from fit and eval); bars (–) at each curve's "
        "end: the same SAE on the table's eval tokens",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    fig.savefig(out / "learning_curves.png", dpi=110)
    plt.close(fig)
