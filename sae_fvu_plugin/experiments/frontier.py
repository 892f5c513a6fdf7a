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

from collections.abc import Collection
from typing import Any

from . import registry
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


# Seconds on 2 CPU cores (SmolLM2-135M, d_sae 512, 16k fit tokens, a fresh-clone `make
# demo`) of one model's fit; the codebook SAEs reuse the k-means fit (0 s). PCA + k-means =
# its k-means + the PCA and projection (`_ROW_SECONDS`, by rows only). At the original scale
# (layer 3) k-means took 819 s and PCA + k-means 968 s against the 714 and 848 these give.
_FIT_SECONDS = {
    "residual_kmeans": 15.0,
    "klines": 4.0,
    "kmeans_top1": 0.0,
    "kmeans_mp": 0.0,
}
_ROW_SECONDS = {"pca_kmeans": 3.0}
_SAE_SECONDS_PER_TOKEN = 60e-6  # SAELens's TopK step, d_sae 512, float32, with validation
# Each family's time per token against that, at d_sae 4,096 (CONTRIBUTING.md "The
# reproduce estimate"; the gathered step: TopK ÷2.9, BatchTopK ÷2.7, Matryoshka ÷2.9).
_G = {"topk": 0.35, "topk_kmeans_init": 0.35, "batchtopk": 0.7, "matryoshka": 0.7}
_SAE_FAMILY_COST = _G | {"standard": 0.8}


def stage_minutes(
    cfg: FrontierConfig,
    todo: list[Point] | None = None,
    cached_layers: Collection[int] = (),
    sae_speedup: float = 1.0,
) -> dict[str, float]:
    """Wall minutes per stage on 2 CPU cores for the points in ``todo`` (default: all),
    the activations of ``cached_layers`` already on disk, from rates measured in a run on
    SmolLM2-135M:

    * start-up (imports, model load, summary and plots) ≈ 15 s;
    * activations: the forward pass costs ≈ (L + 1) / 8,500 s per token stopping after
      layer L (so ≈ 280 tokens/s through all 30 layers), over the fit, training and
      validation rows, in one pass to the deepest layer not cached;
    * clustering fits: ``_FIT_SECONDS`` per method (2 s otherwise) at 16,384 fit tokens and
      512 latents, scaled by fit tokens · the model's own latents, plus ``_ROW_SECONDS``
      scaled by fit tokens;
    * SAE training ≈ 60 s per million training tokens for SAELens's TopK step at d_sae 512
      (float32, 2 cores): its rate sweep plus its budget (min(sae_max_tokens,
      sae_max_passes · train_tokens)), × d_sae / 512 × the family's ``_SAE_FAMILY_COST``,
      ÷ ``sae_speedup`` (the bfloat16 autocast gain: :func:`.methods.saes.training_speedup`);
    * evaluations: a real-data model = its KL / CE batches (with ``model_metrics``: 3 full
      forward passes of ``recon_batches · batch_prompts · context_size`` tokens) + the
      variance batches to the hooked layer + the SAE (4 FLOP per eval token, latent and
      dimension at 120 GFLOP/s) + ≈ 0.5 s; a Gaussian-control model is scored directly
      (≈ 1 s + the same SAE term).
    """
    pts = points(cfg) if todo is None else todo
    n_train = cfg.train_tokens or cfg.fit_tokens
    sae_tokens = len(cfg.sae_lrs) * min(cfg.sae_sweep_tokens, n_train) + min(
        cfg.sae_max_tokens, cfg.sae_max_passes * n_train
    )
    recon = 3 * cfg.recon_batches * cfg.batch_prompts * cfg.context_size * 30 / 8_500
    seconds = {"start-up": 0.0, "activations": 0.0}
    missing = [layer for layer in cfg.layers if layer not in cached_layers]
    if pts:
        seconds["start-up"] = 15.0
    if pts and missing:
        seconds["activations"] = (cfg.rows_tokens + cfg.val_tokens) * (max(missing) + 1) / 8_500
    clus = sae = ev = 0.0
    for p in pts:
        latents = registry.get(p.method).d_sae(p.param_dict)
        if p.method in SAE_FAMILIES:
            cost = _SAE_FAMILY_COST.get(p.method, 1.0) / sae_speedup
            sae += sae_tokens * _SAE_SECONDS_PER_TOKEN * latents / 512 * cost
        else:
            clus += (
                _FIT_SECONDS.get(p.method, 2.0) * latents / 512 + _ROW_SECONDS.get(p.method, 0.0)
            ) * (cfg.fit_tokens / 16_384)
        if p.source == "real":
            ev += (
                recon * cfg.model_metrics
                + cfg.eval_tokens * (p.layer + 1) / 8_500
                + cfg.eval_tokens * latents * 576 * 4 / 1.2e11
                + 0.5
            )
        else:
            ev += 1.0 + cfg.eval_tokens * latents * 576 * 4 / 1.2e11
    seconds |= {"clustering fits": clus, "SAE training": sae, "evaluations": ev}
    return {k: v / 60 * _MEASURED_OVER_FORMULA for k, v in seconds.items()}


def estimate_minutes(
    cfg: FrontierConfig,
    todo: list[Point] | None = None,
    cached_layers: Collection[int] = (),
    sae_speedup: float = 1.0,
) -> float:
    """The sum of :func:`stage_minutes`."""
    return sum(stage_minutes(cfg, todo, cached_layers, sae_speedup).values())


# The demo's frontier on 2026-12-02 (the committed run, SAEs on 65,536 fresh training rows)
# took 9.6 min where the rates above gave 10.35.
_MEASURED_OVER_FORMULA = 9.6 / 10.35


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
