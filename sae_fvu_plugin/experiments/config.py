"""What the experiments can be told: typed configs with help text and defaults stated once.

The command lines (``sae-fvu sweep``, ``sae-fvu frontier``) are generated from these
fields. Light on purpose (no torch), so ``--help`` answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..hooks import OFFLINE_DATASET, OFFLINE_LAYERS, OFFLINE_MODEL, check_hook
from ..kmeans_options import KMeansOptions
from ..validate import check_float, check_int


def _opt(default: Any, help: str, **extra: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class ExperimentConfig:
    """Shared by every experiment: the model, the text, the fit / eval split, the eval."""

    model: str = _opt(OFFLINE_MODEL, "smollm2-135m (offline) or a TransformerLens model name")
    dataset: str = _opt(OFFLINE_DATASET, "austen (offline) or a Hugging Face dataset with text")
    layers: list[int] = _opt([3, 15], "layers whose hook_resid_post is studied")
    context_size: int = _opt(128, "tokens per context")
    fit_tokens: int = _opt(16_384, "activation rows every method is fitted on")
    eval_batches: int = _opt(8, "SAEBench batches for explained variance and sparsity")
    batch_prompts: int = _opt(4, "contexts per SAEBench batch")
    recon_batches: int = _opt(1, "SAEBench batches for the KL / CE-loss metrics")
    n_iter: int = _opt(KMeansOptions().n_iter, "maximum Lloyd iterations of every k-means fit")
    seed: int = _opt(0, "seed of the split, the fits and the Gaussian control")
    gaussian: bool = _opt(
        True, "also fit on Gaussian data with the activations' mean and covariance"
    )
    bootstrap: int = _opt(
        100, "Poisson-bootstrap replicates per explained-variance value (0: no intervals)"
    )
    out: str = _opt("out/experiment", "output folder (reruns reuse what it holds)")
    device: str | None = _opt(None, "where models run (default: CUDA when available)")
    val_tokens: int = _opt(0, "held-out validation tokens (SAE learning curves)", cli=False)
    train_tokens: int = _opt(
        0, "activation rows the trained SAEs draw from (0: the fit rows)", cli=False
    )
    model_metrics: bool = _opt(
        True, "also run SAEBench's KL / CE-loss passes for every real-data model"
    )
    cached_only: bool = _opt(
        False,
        "fit and evaluate nothing: report the grid's models already cached in --out (runs "
        "of parts of the grid, e.g. one layer or --methods each, gathered into one "
        "results.json) and name the ones missing",
    )
    import_rows: str | None = _opt(
        None,
        "an earlier run's results.json: its rows that this grid would compute under the "
        "same settings (data, fit, eval keys; the same held-out contexts) are taken into "
        "--out's row cache instead of being recomputed; the others are named",
    )

    def __post_init__(self) -> None:
        for name in ("context_size", "fit_tokens", "eval_batches", "batch_prompts", "n_iter"):
            object.__setattr__(
                self, name, check_int(f"--{name.replace('_', '-')}", getattr(self, name), 1)
            )
        for name in ("recon_batches", "seed", "bootstrap", "val_tokens", "train_tokens"):
            object.__setattr__(
                self, name, check_int(f"--{name.replace('_', '-')}", getattr(self, name), 0)
            )
        layers = [check_int("--layers", v, 0) for v in self.layers]
        if not layers:
            raise ValueError("--layers needs at least one layer.")
        if self.model == OFFLINE_MODEL:  # other models are checked once loaded
            for layer in layers:
                check_hook(self.hook(layer), n_layers=OFFLINE_LAYERS)
        object.__setattr__(self, "layers", layers)

    @property
    def rows_tokens(self) -> int:
        """Activation rows collected before the validation rows: the fit rows are their
        first ``fit_tokens``, the SAEs' training rows their first ``train_tokens``."""
        return max(self.fit_tokens, self.train_tokens)

    @property
    def eval_tokens(self) -> int:
        return self.eval_batches * self.batch_prompts * self.context_size

    def hook(self, layer: int) -> str:
        return f"blocks.{layer}.hook_resid_post"

    def with_(self, **kw: Any) -> Any:
        return replace(self, **kw)


@dataclass(frozen=True)
class SweepConfig(ExperimentConfig):
    """The clustering sweep: k-means for several k and PCA + k-means at fixed d_sae, under
    every definition, with and without the top ``massive_fraction`` of tokens by norm."""

    ks: list[int] = _opt([16, 64, 256], "k of the plain k-means models")
    d_sae: int = _opt(512, "latents of every PCA + k-means model (n_clusters = d_sae − n_pca)")
    n_pca: list[int] = _opt([1, 10, 50, 200, 500], "PCA components of the PCA + k-means models")
    massive_fraction: float = _opt(
        0.001, "share of tokens (largest norm) left out in the second evaluation"
    )
    out: str = _opt("out/clustering_sweep", "output folder (reruns reuse what it holds)")
    n_iter: int = _opt(15, "maximum Lloyd iterations of every k-means fit (CPU-sized)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float("--massive-fraction", self.massive_fraction, 0.0)
        object.__setattr__(self, "d_sae", check_int("--d-sae", self.d_sae, 2))

    @classmethod
    def full(cls, **kw: Any) -> SweepConfig:
        """The original experiment's scale: 1M fit tokens, k up to 16,384 (meant for a GPU)."""
        base: dict[str, Any] = dict(
            fit_tokens=1_000_000,
            eval_batches=64,
            batch_prompts=16,
            recon_batches=8,
            ks=[1024, 4096, 16384],
            n_pca=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000],
            d_sae=4096,
            n_iter=30,
        )
        return cls(**(base | kw))

    def fits(self) -> list[tuple[int, int]]:
        """(n_clusters, n_pca) of every model: k-means for each k, then PCA + k-means."""
        out = [(k, 0) for k in self.ks]
        out += [(self.d_sae - p, p) for p in self.n_pca if p < self.d_sae]
        return out


@dataclass(frozen=True)
class FrontierConfig(ExperimentConfig):
    """SAEs trained by SAELens (on fresh training rows) and clustering with L0 ≥ 1 (on the
    fit rows, the training rows' first ``fit_tokens``), scored by SAEBench's unmodified core
    eval on the same held-out tokens."""

    d_sae: int = _opt(512, "latents of every model")
    eval_batches: int = _opt(4, "SAEBench batches for explained variance and sparsity")
    sae_ks: list[int] = _opt([1, 4, 16, 64], "k of the TopK SAEs")
    batchtopk_ks: list[int] = _opt([8], "k of the BatchTopK SAEs")
    l1_coefficients: list[float] = _opt(
        [3.0, 1.0],
        "L1 coefficients of the standard (ReLU + L1) SAEs (on activations scaled to mean norm √d; "
        "10 / 3 / 1 give L0 ≈ 2 / 9 / 36 on SmolLM2 layer 15)",
    )
    pca_ns: list[int] = _opt([4, 32], "n_pca of the PCA + k-means models (L0 = n_pca + 1)")
    residual_stages: list[int] = _opt([2, 8], "stages of the residual k-means models (L0 = stages)")
    mp_iterations: list[int] = _opt(
        [4], "matching-pursuit steps over the k-means codebook (L0 ≤ steps)"
    )
    val_tokens: int = _opt(2048, "held-out tokens for the SAEs' learning curves")
    train_tokens: int = _opt(
        65_536,
        "fresh activation rows the SAEs train on (the clustering fit rows are their first "
        "--fit-tokens; 0: the fit rows only)",
    )
    kmeans_init_ks: list[int] = _opt(
        [1], "k of the TopK SAEs also trained from the k-means codebook (a separate method)"
    )
    jumprelu_l0s: list[float] = _opt([8.0], "target L0 of the JumpReLU SAEs")
    matryoshka_ks: list[int] = _opt([8], "k of the Matryoshka BatchTopK SAEs")
    sae_batch_tokens: int = _opt(1024, "SAE training batch (tokens)")
    sae_lrs: list[float] = _opt(
        [1e-3, 4e-3],
        "learning rates tried per SAE (Adam, constant); each trains sae_sweep_tokens, the best "
        "on validation continues (the choice is recorded)",
    )
    sae_sweep_tokens: int = _opt(16_384, "tokens each learning rate of the sweep trains")
    sae_max_passes: float = _opt(2.0, "at most this many passes over the SAE training rows")
    sae_max_tokens: int = _opt(
        393_216, "SAE training budget (tokens seen) if it never converges (CPU-sized)"
    )
    sae_eval_every: int = _opt(8192, "tokens between learning-curve points")
    plateau: float = _opt(
        0.002,
        "converged when held-out explained variance changed by less than this (relative) over "
        "the last fifth of training ...",
    )
    continuation: float = _opt(
        0.003,
        "... and 50 % more tokens then gain less than this (relative; the gain is recorded)",
    )
    sae_precision: str = _opt(
        "auto",
        "SAE training precision: float32, bfloat16 (autocast) or auto (bfloat16 where a short "
        "calibration of a training step measures it ≥ 1.2× faster)",
    )
    model_metrics: bool = _opt(
        False,
        "also run SAEBench's KL / CE-loss passes for every real-data model (3 full forward "
        "passes each, ≈ 9 s per model on 2 CPU cores at layer 15; on with --full)",
    )
    gaussian_grid: str = _opt(
        "small",
        "methods fitted on the Gaussian control: 'small' (k-means, its top-1, the middle PCA + "
        "k-means, residual k-means and TopK SAE) or 'all'",
    )
    methods: list[str] = _opt(
        [],
        "run only the grid's points of these methods, e.g. kmeans kmeans_top1 pca_kmeans "
        "(default: every method); a later run without it reuses what this one cached",
    )
    out: str = _opt("out/frontier", "output folder (reruns reuse what it holds)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in (
            "d_sae",
            "sae_batch_tokens",
            "sae_max_tokens",
            "sae_eval_every",
            "sae_sweep_tokens",
        ):
            object.__setattr__(
                self, name, check_int(f"--{name.replace('_', '-')}", getattr(self, name), 1)
            )
        for name in (
            "sae_ks",
            "batchtopk_ks",
            "pca_ns",
            "residual_stages",
            "mp_iterations",
            "kmeans_init_ks",
            "matryoshka_ks",
        ):
            vals = [check_int(f"--{name.replace('_', '-')}", v, 1) for v in getattr(self, name)]
            object.__setattr__(self, name, vals)
        for name in ("plateau", "continuation", "sae_max_passes"):
            check_float(f"--{name.replace('_', '-')}", getattr(self, name), 0.0)
        if not self.sae_lrs:
            raise ValueError("--sae-lrs needs at least one learning rate.")
        for v in [*self.sae_lrs, *self.jumprelu_l0s]:
            check_float("--sae-lrs / --jumprelu-l0s", v, 0.0)
        if self.sae_precision not in ("auto", "float32", "bfloat16"):
            raise ValueError(
                f"--sae-precision must be auto, float32 or bfloat16, got {self.sae_precision!r}."
            )
        for st in self.residual_stages:
            if self.d_sae % st:
                raise ValueError(f"--residual-stages {st} does not divide --d-sae {self.d_sae}.")
        for p in self.pca_ns:
            if p >= self.d_sae:
                raise ValueError(f"--pca-ns {p} must be below --d-sae {self.d_sae}.")
        if self.gaussian_grid not in ("small", "all"):
            raise ValueError(
                f"--gaussian-grid must be 'small' or 'all', got {self.gaussian_grid!r}."
            )

    @classmethod
    def full(cls, **kw: Any) -> FrontierConfig:
        """The original experiment's scale (a GPU): 1M fit tokens, d_sae 4,096."""
        base: dict[str, Any] = dict(
            fit_tokens=1_000_000,
            eval_batches=64,
            batch_prompts=16,
            recon_batches=8,
            d_sae=4096,
            sae_ks=[1, 2, 4, 8, 16, 32, 64],
            batchtopk_ks=[1, 2, 4, 8, 16, 32, 64],
            sae_lrs=[3e-4, 1e-3, 3e-3],
            train_tokens=1_000_000,
            sae_max_passes=2.0,
            jumprelu_l0s=[2.0, 8.0, 32.0],
            matryoshka_ks=[8, 32],
            kmeans_init_ks=[1, 2, 4],
            l1_coefficients=[10.0, 5.0, 3.0, 2.0, 1.0, 0.5],
            pca_ns=[1, 4, 16, 64, 256],
            residual_stages=[2, 4, 8, 16],
            mp_iterations=[2, 4, 8, 16, 32],
            sae_batch_tokens=4096,
            sae_max_tokens=2_000_000,
            sae_sweep_tokens=200_000,
            sae_eval_every=50_000,
            gaussian_grid="all",
            model_metrics=True,
        )
        return cls(**(base | kw))


@dataclass(frozen=True)
class ReproduceConfig(FrontierConfig):
    """The original experiment at its own scale (StefanHex's shortform: 1M tokens, k-means
    with 4,096 and 16,384 clusters, PCA + k-means over n_pca 1–500): 786,432 fit tokens per
    layer (as many as Austen holds beside the held-out rows), d_sae 4,096, 65,536 held-out
    tokens, every method also on the Gaussian control; SAEs trained by SAELens on those
    rows. Every stage is cached under ``--out``, per layer: a rerun (after an interruption,
    or with a layer or a method added) continues where it stopped; ``--methods`` runs part
    of the grid."""

    fit_tokens: int = _opt(
        786_432,
        "activation rows every clustering method is fitted on (Austen's 0.93 M tokens hold "
        "786,432 beside the validation and evaluation rows; the original fitted 1,000,000: "
        "pass 1048576 with a larger --dataset)",
    )
    train_tokens: int = _opt(
        786_432, "fresh activation rows the SAEs train on (the fit rows are their first rows)"
    )
    val_tokens: int = _opt(16_384, "held-out tokens for the SAEs' learning curves")
    d_sae: int = _opt(4096, "latents of every model (the large k-means below aside)")
    eval_batches: int = _opt(64, "SAEBench batches for explained variance and sparsity")
    batch_prompts: int = _opt(8, "contexts per SAEBench batch")
    n_iter: int = _opt(30, "maximum Lloyd iterations of every k-means fit")
    large_ks: list[int] = _opt(
        [16_384],
        "k of the larger k-means models and their top-1 SAE (the flag alone: none)",
        empty=True,
    )
    large_pca_ns: list[int] = _opt(
        [10, 50, 100],
        "n_pca of the PCA + k-means models with a total of max(--large-ks) latents (the flag "
        "alone: none)",
        empty=True,
    )
    sae_ks: list[int] = _opt([1, 2, 4, 8, 16, 32, 64, 128], "k of the TopK SAEs")
    batchtopk_ks: list[int] = _opt([8, 32], "k of the BatchTopK SAEs")
    jumprelu_l0s: list[float] = _opt([8.0, 32.0], "target L0 of the JumpReLU SAEs")
    matryoshka_ks: list[int] = _opt([8, 32], "k of the Matryoshka BatchTopK SAEs")
    pca_ns: list[int] = _opt(
        [1, 2, 5, 10, 20, 50, 100, 200, 500],
        "n_pca of the PCA + k-means models at a total of --d-sae latents (the original's grid)",
    )
    residual_stages: list[int] = _opt([2, 4, 8], "stages of the residual k-means models")
    mp_iterations: list[int] = _opt([2, 4, 8], "matching-pursuit steps over the k-means codebook")
    sae_batch_tokens: int = _opt(4096, "SAE training batch (tokens)")
    sae_sweep_tokens: int = _opt(131_072, "tokens each learning rate of the sweep trains")
    sae_max_tokens: int = _opt(2_097_152, "SAE training budget (tokens seen)")
    sae_eval_every: int = _opt(65_536, "tokens between learning-curve points")
    gaussian_grid: str = _opt("all", "methods fitted on the Gaussian control: 'all' or 'small'")
    out: str = _opt("out/reproduce", "output folder (reruns continue from what it holds)")

    def __post_init__(self) -> None:
        super().__post_init__()
        vals = [check_int("--large-ks", v, 2) for v in self.large_ks]
        object.__setattr__(self, "large_ks", vals)
        pcas = [check_int("--large-pca-ns", v, 1) for v in self.large_pca_ns]
        object.__setattr__(self, "large_pca_ns", pcas)
        if pcas and not vals:
            raise ValueError("--large-pca-ns needs --large-ks.")
        for p in pcas:
            if p >= max(vals):
                raise ValueError(f"--large-pca-ns {p} must be below --large-ks {max(vals)}.")
