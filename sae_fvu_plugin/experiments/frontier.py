"""The frontier: SAEs against clustering at every L0, under every definition, on identical
tokens, every method scored by the same unmodified SAEBench loop.

The question is the one of StefanHex's LessWrong shortform on FVU definitions and
k-means: does clustering (L0 = 1) rival SAEs, at which L0, under which definition? Per
layer, on the same cached fit activations: k-means, its codebook as SAELens's top-1 SAE
(latent = projection) and as matching pursuit, k-lines, PCA + k-means, residual k-means;
and SAEs trained by SAELens's own trainer (TopK, BatchTopK, ReLU + L1, JumpReLU, Matryoshka
BatchTopK, and TopK started from the k-means codebook) on fresh training rows (the fit
rows are their first ``fit_tokens``) until their held-out explained variance converges
(``methods/saes.py``); each SAE that can represent a clustering model exactly is paired
with it (``summary.floor``); the same methods on Gaussian data with the activations'
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

from typing import Any

from . import costs
from .config import FrontierConfig
from .frontier_plots import plots
from .frontier_summary import CSV_COLUMNS, SAE_FAMILIES, format_summary, format_table, summarize
from .points import Point, select_methods
from .runner import ExperimentSpec

__all__ = ["FRONTIER", "FrontierConfig", "estimate_minutes", "points"]


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
                for t in cfg.jumprelu_l0s:
                    out.append(Point.of("jumprelu", layer, src, d_sae=d, l0=float(t)))
                for k in cfg.matryoshka_ks:
                    out.append(Point.of("matryoshka", layer, src, d_sae=d, k=k))
                for k in cfg.kmeans_init_ks:
                    out.append(Point.of("topk_kmeans_init", layer, src, d_sae=d, k=k))
    return select_methods(out, cfg.methods)


# The printed estimate (:class:`.costs.Estimator` over :func:`points`): ``stage_minutes(cfg,
# todo=None, cached_layers=(), sae_speedup=1.0, seed_speedup=1.0, base_fits=(),
# progress=None)`` per stage (:meth:`.costs.Estimator.stages`), ``estimate_minutes`` their sum.
estimate_minutes = costs.Estimator(points)
stage_minutes = estimate_minutes.stages


def describe(cfg: FrontierConfig, pts: list[Point]) -> str:
    n_saes = sum(p.method in SAE_FAMILIES for p in pts)
    return (
        f"{cfg.model} on {cfg.dataset}: layers {cfg.layers} (hook_resid_post), d_sae "
        f"{cfg.d_sae}; {len(pts)} models ({n_saes} SAEs trained by SAELens"
        + (f" on {cfg.train_tokens:,} tokens" if cfg.train_tokens else "")
        + f"), clustering fitted on {cfg.fit_tokens:,} tokens, evaluated by SAEBench on "
        f"{cfg.eval_tokens:,} held-out tokens."
    )


FRONTIER = ExperimentSpec(
    name="frontier",
    points=points,
    describe=describe,
    estimate_minutes=estimate_minutes,
    summarize=lambda rows, context: {"summary": summarize(rows)},
    report=lambda rows, s: format_table(rows) + "\n" + format_summary(s["summary"]),
    plots=lambda rows, s, out, cfg: plots(rows, out),
    csv_columns=CSV_COLUMNS,
    csv_intervals=True,
)
