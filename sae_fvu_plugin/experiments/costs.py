"""The printed time estimate of a frontier-like grid: minutes per stage from rates measured
on 2 CPU cores (an AMD EPYC in float32; the runner scales them to the machine it runs on
by a matmul timing, :func:`.runner.machine_factor`).

A leaf of the experiments (the registry and the summary's family list only), so the
frontier, the reproduce spec and the README script share one cost model.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..kmeans_options import KMeansOptions
from . import registry
from .frontier_summary import SAE_FAMILIES
from .points import Point

if TYPE_CHECKING:
    from ..clustering.checkpoint import FitProgress

# Seconds on 2 CPU cores (SmolLM2-135M, d_sae 512, 16k fit tokens, a fresh-clone `make
# demo`) of one model's fit; the codebook SAEs reuse the k-means fit (0 s). PCA + k-means =
# its k-means + the PCA and projection (`_ROW_SECONDS`, by rows only).
_FIT_SECONDS = {
    "klines": 1.8,
    "kmeans_top1": 0.0,
    "kmeans_mp": 0.0,
}
_ROW_SECONDS = {"pca_kmeans": 3.0}
# k-means and PCA + k-means at the original scale (CONTRIBUTING.md "The reproduce
# estimate"): Lloyd's iterations 2 s per 512 clusters at 16,384 rows, ∝ k·N^0.87 (the cost
# per row falls with N: fixed costs per iteration), plus greedy k-means++ seeding beyond
# the demo's: k sequential passes over the m = ``KMeansOptions.sample_size`` (min(N,
# max(65536, 64k))) sampled rows, memory-bound once they leave the cache, ∝ k·(m −
# 32,768)·d (∝ k² at large k).
_LLOYD_EXPONENT = 0.87
# Above 4,096 clusters the clusters are small against the centroids' moves and Hamerly's
# bound prunes later in a fit: Lloyd's iterations grow as k^1.25 there (layer 15 on the
# AVX-512-BF16 EPYC, 786,432 rows, 30 iterations each: 4,086 clusters 350 s, the first 5
# rescoring every row; 16,384 clusters 2,056 s, the first 7 every row — 5.9× for 4×
# the clusters). Not on the Gaussian control, where no fit prunes (its own term below).
_LLOYD_K_KNEE = 4096
_LLOYD_K_EXPONENT = 0.25
_SEED_SECONDS = 1.71e-9  # per cluster, sampled row beyond 32,768 and dimension
# How many times faster than the plain float32 step a whole greedy seeding runs with the
# rank-128 projected screen (``seeding._Projected``) on a CPU that scores in float32: the
# AMD EPYC, 4,096 centres on layer 3's / 15's importance samples, 535 / 342 s plain against
# 156 / 124 s screened, time-weighted (CONTRIBUTING.md, "The screen's own product, and its
# rank"; 1.35 with the rank-64 screen's unpadded product); runner.this_machine records it
# as ``seed_speedup``.
PROJECTED_SEED_GAIN = 3.1
# Above 4,096 centres a screened seeding gains more: the share of rows a candidate may be
# nearer to falls as centres are chosen (~4 % unsure after 10,000 steps at layer 3), so at
# k centres it costs (4,096 / k)^0.3 of the formula (0.66 at 16,384). The AVX-512-BF16
# EPYC's five PCA + k-means fits at 16,384 latents on 786,432 rows (layers 3 / 15, n_pca
# 10 / 50 / 100; their clean seedings ~1,400–1,700 s at layer 3 and layer 15's n_pca 10,
# ~2,350 at layer 15's n_pca 100, against ~2,500 s costed): whole fits +43–52 % over at
# n_pca 10 and layer 3's n_pca 100 without it, all five within 25 % with it
# (CONTRIBUTING.md, "The reproduce estimate"). Not measured on the Gaussian control.
_SEED_K_EXPONENT = 0.3
_SEEDED = {"kmeans", "pca_kmeans"}
# k-lines starts from the k-means codebook (its fit costed as the base's, no seeding of
# its own): ~10 iterations whose cost grows as rows^0.935, between the AMX Xeon's and the
# AMD EPYC's measurements (the demo's 512 lines, 0.52 / 0.69 s on the Xeon; 4,096 lines on
# 786,432 rows, 151 / 166 s on the Xeon, 449 s at layer 3 on the EPYC: its iterations
# gain more from the Xeon's bfloat16 scores than the machine factor says). It was rows^0.58
# plus a k-means seeding it does not run, which the 64-rows-per-cluster sample doubled.
_KLINES_EXPONENT = 0.935
# Residual k-means: each stage is a k-means fit at its own clusters plus ≈ 2.7 s at 16,384
# rows of passes, statistics and the residual update, ∝ rows^1.11 (at 786,432 rows the
# passes leave the cache). Calibrated on the demo's 2 / 8 stages of 256 / 64 clusters (7.5 /
# 24 s) and the original scale's 4 / 8 stages of 1,024 / 512 clusters (409 / 723 s measured
# on the AMX Xeon, 422 / 689 predicted there).
_STAGE_SECONDS = 2.7
_STAGE_EXPONENT = 1.11
# The real activations' Lloyd iterations where the bound prunes nothing (the residual
# after n_pca ≥ 200 components, below): no difference at the demo's 16,384 rows, ×2.3 at
# 786,432 (layer 15, AVX-512-BF16 EPYC: 595 / 597 s at n_pca 200 / 500, 2.1 / 2.3 ×
# k-means' formula), ∝ (rows / 16,384)^0.215 between.
_UNPRUNED_LLOYD_EXPONENT = 0.215
# The Gaussian control's: unclustered data leaves Hamerly's bound little to prune (every
# row rescored for the first dozen iterations, a third to four fifths after), and an
# iteration that rescores every row costs ~2× the real residual's (40 s against 17–23 s at
# 4,096 clusters on the AVX-512-BF16 EPYC; the certified bfloat16 scores presumably
# leaving more near ties to exact rescoring — not measured): ×3.2 at 786,432 rows,
# ∝ (rows / 16,384)^0.3. Three fits at 4,096 clusters: layer 15's k-means on the AVX2
# EPYC, 1,152 s (32 rows per cluster seeded, the rule of its day) and refitted 1,412 s;
# layer 3's PCA + k-means n_pca 1 on the AVX-512-BF16 EPYC, 1,389 s (it was costed ×2.3:
# 16.3 min printed, 24.4 taken).
_GAUSSIAN_LLOYD_EXPONENT = 0.3
# PCA + k-means clusters the residual after its first n_pca components, which the bound
# prunes less the more components are gone: its Lloyd iterations cost (1 + (G − 1) ·
# min(1, n_pca / ``_PCA_UNPRUNED``)²) times k-means' (at least the k^1.25 factor above
# 4,096 clusters), G = rows^``_UNPRUNED_LLOYD_EXPONENT`` (nothing pruned; 1 at the demo's
# 16,384 rows). Fitted by eye on layer 15 (AVX-512-BF16 EPYC):
# Lloyd 350 / 595 / 597 s at n_pca 10 / 200 / 500, 1.2 / 2.1 / 2.3 × k-means' formula (the
# bound rescored every row for 5 / 9 / all 30 iterations), the whole fit at n_pca 100 76 s
# above n_pca 10's; layer 3 (AVX2 EPYC) grows less: whole fits 854 / 933 / 945 s at n_pca
# 10 / 100 / 200.
_PCA_UNPRUNED = 200
# Lloyd's work is front-loaded where the bound prunes: the first iterations rescore every
# row, the last a tenth to a third of them, so the first fraction f of its iterations do
# ≈ f^0.6 of its work (eleven 30-iteration fits at 786,432 rows, layers 3 and 15, 4,096 and
# 16,384 clusters, AVX-512-BF16 EPYC: after a third of the iterations 42–56 % of the
# Lloyd seconds, after two thirds 68–84 %, for n_pca ≤ 100; n_pca 500, which never prunes,
# 33 % / 68 %). A resumed fit's Lloyd is costed by it, the exponent 0.6 + 0.4 · min(1,
# n_pca / ``_PCA_UNPRUNED``)² on the real activations (the residual of more components
# prunes less), 1 on the Gaussian control (nothing pruned).
_LLOYD_FRONT = 0.6
_SAE_SECONDS_PER_TOKEN = 60e-6  # SAELens's TopK step, d_sae 512, float32, with validation
# Each family's time per token against that, measured at d_sae 4,096 (CONTRIBUTING.md
# "The reproduce estimate"): SAELens's step BatchTopK 1.9, Matryoshka 2.0, ReLU + L1 1.0,
# JumpReLU 1.4 (its threshold's straight-through gradients: measured 1.3–1.6 × BatchTopK's
# time against the formula, on the AMX Xeon's real rows and the AVX-512-BF16 EPYC's
# Gaussian control; it was costed 1.0, as TopK; ReLU + L1 was costed 0.8 and took 1.0–1.4
# × that on both CPUs, eight SAEs);
# the gathered step (``methods.saes.gathered_step``) from d_sae 2,048 on: TopK measured at
# scale, BatchTopK / Matryoshka with its pooled selection scaled by their benchmark gain
# (CONTRIBUTING.md "The gathered training step"); at the demo's d_sae 512 it gains ~20 %.
_SAE_FAMILY_COST = {"batchtopk": 1.9, "matryoshka": 2.0, "standard": 1.0, "jumprelu": 1.4}
# Matryoshka's gathered step 1.1: eight paired runs against BatchTopK at the same k (k 8 /
# 32, layers 3 / 15, real and Gaussian, two CPUs) took 1.06–1.28 × its time, mean 1.17
# (it was costed 1.0, 1.05 × BatchTopK's 0.95).
_GATHERED_COST = {"topk": 0.7, "topk_kmeans_init": 0.7, "batchtopk": 0.95, "matryoshka": 1.1}
# SAEs that start at a converged point (the k-means-initialised TopK starts on the top-1
# SAE of the k-means codebook): the chosen rate's run stops at the first plateau check it
# can pass — a curve of 5 points, 4 segments, at least its sweep — and the 50 %
# continuation after it. At the original scale 393,216 of the budget's 1,572,864 tokens
# (both layers, 2026-12-06, AMD EPYC: 101 / 97 s where the whole budget was costed ~450 s).
_STARTS_CONVERGED = {"topk_kmeans_init"}


def sae_tokens(cfg: Any, method: str) -> int:
    """Tokens one SAE of ``method`` is costed at under ``cfg``: its rate sweep (each of
    ``sae_lrs`` for min(``sae_sweep_tokens``, training rows)) plus the budget
    min(``sae_max_tokens``, ``sae_max_passes`` · training rows) — or, for an SAE that
    starts converged (``_STARTS_CONVERGED``), the other rates' sweeps plus
    min(budget, 1.5 · max((``PLATEAU_POINTS`` − 1) · ``sae_eval_every``, sweep)), where it
    stops: the first plateau check and its continuation."""
    from .methods.saes import PLATEAU_POINTS

    n_train = cfg.train_tokens or cfg.fit_tokens
    sweep = min(cfg.sae_sweep_tokens, n_train)
    budget = min(cfg.sae_max_tokens, cfg.sae_max_passes * n_train)
    if method in _STARTS_CONVERGED:
        first_check = max((PLATEAU_POINTS - 1) * cfg.sae_eval_every, sweep)
        stop = min(budget, 1.5 * first_check)
        return int((len(cfg.sae_lrs) - 1) * sweep + stop)
    return int(len(cfg.sae_lrs) * sweep + budget)


def sae_cost(method: str, params: dict[str, Any]) -> float:
    """A training SAE's time per token against SAELens's TopK step at the same d_sae."""
    from .methods.saes import gathered_step

    if params["d_sae"] >= 2048 and gathered_step(method, params):
        return _GATHERED_COST[method]
    return _SAE_FAMILY_COST.get(method, 1.0)


# The demo's frontier on 2026-12-02 (the committed run, SAEs on 65,536 fresh training rows)
# took 9.6 min where the rates above gave 10.35.
_MEASURED_OVER_FORMULA = 9.6 / 10.35


def _seed_seconds(
    clusters: int, fit_tokens: int, d: int, seed_speedup: float, sample: int | None
) -> float:
    """A greedy k-means++ seeding's seconds beyond the demo's: ``_SEED_SECONDS``·k·(m −
    32,768)·d ÷ ``seed_speedup``, m the ``sample`` (default ``KMeansOptions.sample_size``);
    a screened seeding (``seed_speedup`` > 1) of k > 4,096 centres × (4,096 /
    k)^``_SEED_K_EXPONENT``."""
    m = sample or KMeansOptions().sample_size(fit_tokens, clusters)
    more = max(1.0, clusters / _LLOYD_K_KNEE) ** _SEED_K_EXPONENT if seed_speedup > 1 else 1.0
    return _SEED_SECONDS * clusters * max(0, m - 32_768) * d / (seed_speedup * more)


def fit_seconds(
    method: str,
    clusters: int,
    fit_tokens: int,
    d: int = 576,
    stages: int = 1,
    seed_speedup: float = 1.0,
    gaussian: bool = False,
    sample: int | None = None,
    done: FitProgress | None = None,
    n_pca: int = 0,
) -> float:
    """A clustering fit's seconds (EPYC float32 rates): ``_FIT_SECONDS`` (2 s otherwise)
    per 512 clusters at 16,384 rows, ∝ rows (k-means and PCA + k-means: ∝
    rows^``_LLOYD_EXPONENT``, × (k / 4,096)^``_LLOYD_K_EXPONENT`` above 4,096 clusters,
    plus the seeding ``_SEED_SECONDS``·k·(m − 32,768)·d ÷
    ``seed_speedup``, the gain of its bfloat16 screen where the machine scores in
    bfloat16, m the seeding ``sample``, by default ``KMeansOptions.sample_size``; k-lines,
    which starts from the k-means codebook, ∝ rows^``_KLINES_EXPONENT``), plus
    ``_ROW_SECONDS`` per 16,384 rows; residual k-means: ``stages`` × (k-means at
    ``clusters`` + ``_STAGE_SECONDS`` · rows^``_STAGE_EXPONENT``). On the ``gaussian``
    control the k-means iterations cost rows^``_GAUSSIAN_LLOYD_EXPONENT`` more (little
    for Hamerly's bound to prune), and on the real activations PCA + k-means' by (1 + (G −
    1) · min(1, ``n_pca`` / ``_PCA_UNPRUNED``)²), G = rows^``_UNPRUNED_LLOYD_EXPONENT``
    (its residual prunes less the more components are gone). A fit resumed from its
    checkpoint costs what is left after ``done``
    (:class:`..clustering.checkpoint.FitProgress`): its seeding and Lloyd shares by their
    own progress, Lloyd's front-loaded on the real activations (``_LLOYD_FRONT``; the other
    methods' by the fraction done)."""
    rows = fit_tokens / 16_384
    # how far the residual of n_pca components is from pruned (0) to unpruned (1)
    unpruned_share = min(1.0, n_pca / _PCA_UNPRUNED) ** 2
    if done is not None:
        whole = fit_seconds(
            method, clusters, fit_tokens, d, stages, seed_speedup, gaussian, sample, n_pca=n_pca
        )
        if method not in _SEEDED:
            return whole * (1.0 - done.done(0.0))
        seed = _seed_seconds(clusters, fit_tokens, d, seed_speedup, sample)
        extra = _ROW_SECONDS.get(method, 0.0) * rows  # the PCA, redone on a resume
        staged = whole - extra
        front = 1.0 if gaussian else _LLOYD_FRONT + (1.0 - _LLOYD_FRONT) * unpruned_share
        return extra + staged * (1.0 - done.done(seed / staged if staged > 0 else 0.0, front))
    if method == "residual_kmeans":
        stage = _STAGE_SECONDS * rows**_STAGE_EXPONENT
        kmeans = fit_seconds(
            "kmeans",
            clusters,
            fit_tokens,
            d,
            seed_speedup=seed_speedup,
            gaussian=gaussian,
            sample=sample,
        )
        return stages * (kmeans + stage)
    fit = _FIT_SECONDS.get(method, 2.0) * clusters / 512
    if method == "klines":
        return fit * rows**_KLINES_EXPONENT
    if method not in _SEEDED:
        return (fit + _ROW_SECONDS.get(method, 0.0)) * rows
    seed = _seed_seconds(clusters, fit_tokens, d, seed_speedup, sample)
    unpruned = rows**_UNPRUNED_LLOYD_EXPONENT
    if gaussian:
        pruning = rows**_GAUSSIAN_LLOYD_EXPONENT
    else:
        pruning = max(
            max(1.0, clusters / _LLOYD_K_KNEE) ** _LLOYD_K_EXPONENT,
            1.0 + (max(unpruned, 1.0) - 1.0) * unpruned_share,
        )
    lloyd = fit * rows**_LLOYD_EXPONENT * pruning
    return lloyd + seed + _ROW_SECONDS.get(method, 0.0) * rows


class Estimator:
    """The printed estimate of an experiment whose grid is ``points(cfg)``: called as
    ``(cfg, todo=None, cached_layers=(), sae_speedup=1.0, seed_speedup=1.0, base_fits=(),
    progress=None)``, the sum over stages of :meth:`stages`."""

    def __init__(self, points: Callable[[Any], list[Point]]) -> None:
        self.points = points

    def stages(
        self,
        cfg: Any,
        todo: list[Point] | None = None,
        cached_layers: Collection[int] = (),
        sae_speedup: float = 1.0,
        seed_speedup: float = 1.0,
        base_fits: Sequence[Point] = (),
        progress: Mapping[Point, FitProgress] | None = None,
    ) -> dict[str, float]:
        """Wall minutes per stage on 2 CPU cores for the points ``todo`` (default: every point
        of the grid) of an experiment under ``cfg`` (a frontier-like config), the activations
        of ``cached_layers`` already on disk, the fits ``base_fits`` they start from that are
        not cached (a top-1 SAE's k-means: :meth:`.fitting.Fits.base_fits`; their fits only,
        no evaluation), and the ``progress`` of the fits that resume from a checkpoint
        (:meth:`.fitting.Fits.progress`), from rates measured in runs on SmolLM2-135M:

        * start-up (imports, model load, summary and plots) ≈ 15 s;
        * activations: the forward pass costs ≈ (L + 1) / 8,500 s per token stopping after
          layer L (so ≈ 280 tokens/s through all 30 layers), over the fit, training and
          validation rows, in one pass to the deepest layer not cached;
        * clustering fits: :func:`fit_seconds` of each point's own latents (its seeding ÷
          ``seed_speedup``: :func:`.runner.this_machine`; the Gaussian control's k-means
          iterations slower at scale), less what its checkpoint has done;
        * SAE training ≈ 60 s per million training tokens for SAELens's TopK step at d_sae 512
          (float32, 2 cores) over :func:`sae_tokens` (its rate sweep plus its budget; the
          k-means-initialised TopK to its first plateau check), × d_sae / 512 × :func:`sae_cost`,
          ÷ ``sae_speedup`` (the bfloat16 autocast gain: :func:`.methods.saes.training_speedup`);
        * evaluations: a real-data model = its KL / CE batches (with ``model_metrics``: 3 full
          forward passes of ``recon_batches · batch_prompts · context_size`` tokens) + the
          variance batches to the hooked layer + the SAE (4 FLOP per eval token, latent and
          dimension at 120 GFLOP/s; matching pursuit scores the codebook once per step) +
          ≈ 0.5 s; a Gaussian-control model is scored directly (≈ 1 s + the same SAE term).
        """
        pts = self.points(cfg) if todo is None else todo
        recon = 3 * cfg.recon_batches * cfg.batch_prompts * cfg.context_size * 30 / 8_500
        seconds = {"start-up": 0.0, "activations": 0.0}
        missing = [layer for layer in cfg.layers if layer not in cached_layers]
        if pts:
            seconds["start-up"] = 15.0
        if pts and missing:
            seconds["activations"] = (cfg.rows_tokens + cfg.val_tokens) * (max(missing) + 1) / 8_500

        def clustering_seconds(p: Point) -> float:
            # (k-means' seeding and residual k-means' stages by their own clusters; the other
            # rates are per latent)
            latents = registry.get(p.method).d_sae(p.param_dict)
            staged = p.method in _SEEDED or p.method == "residual_kmeans"
            return fit_seconds(
                p.method,
                p.param_dict.get("n_clusters", latents) if staged else latents,
                cfg.fit_tokens,
                stages=int(p.param_dict.get("n_stages", 1)),
                seed_speedup=seed_speedup,
                gaussian=p.source == "gaussian",
                done=(progress or {}).get(p),
                n_pca=int(p.param_dict.get("n_pca", 0)),
            )

        clus = sum(clustering_seconds(p) for p in base_fits)
        sae = ev = 0.0
        for p in pts:
            latents = registry.get(p.method).d_sae(p.param_dict)
            if p.method in SAE_FAMILIES:
                cost = sae_cost(p.method, p.param_dict) / sae_speedup
                tokens = sae_tokens(cfg, p.method)
                sae += tokens * _SAE_SECONDS_PER_TOKEN * latents / 512 * cost
            else:
                clus += clustering_seconds(p)
            scored = cfg.eval_tokens * latents * 576 * 4 / 1.2e11 * p.param_dict.get("steps", 1)
            if p.source == "real":
                ev += recon * cfg.model_metrics + cfg.eval_tokens * (p.layer + 1) / 8_500 + scored
                ev += 0.5
            else:
                ev += 1.0 + scored
        seconds |= {"clustering fits": clus, "SAE training": sae, "evaluations": ev}
        return {k: v / 60 * _MEASURED_OVER_FORMULA for k, v in seconds.items()}

    def __call__(self, cfg: Any, *args: Any, **kwargs: Any) -> float:
        """Σ :meth:`stages` (the arguments are its)."""
        return sum(self.stages(cfg, *args, **kwargs).values())
