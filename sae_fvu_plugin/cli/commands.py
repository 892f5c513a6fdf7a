"""What ``sae-fvu fit`` and ``sae-fvu eval`` can be told: typed, validated, with their
defaults stated once (the flags are generated from these fields). Light: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..hooks import OFFLINE_DATASET, OFFLINE_LAYERS, OFFLINE_MODEL, check_hook
from ..validate import check_float, check_int


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class FitCommand:
    """``sae-fvu fit``: collect a hook's activations on fit contexts and fit a clustering
    SAE (k-means; PCA + k-means with --n-pca; residual k-means with --n-stages)."""

    hook: str = _opt(None, "TransformerLens hook, e.g. blocks.3.hook_resid_post", required=True)
    n_clusters: int = _opt(None, "clusters per k-means stage", required=True)
    out: str = _opt(None, "folder to save the SAE to (SAELens format)", required=True)
    model: str = _opt(OFFLINE_MODEL, "smollm2-135m (offline) or a TransformerLens model name")
    dataset: str = _opt(OFFLINE_DATASET, "austen (offline) or a Hugging Face dataset with text")
    tokens: int = _opt(20_000, "activation rows to fit on (BOS positions left out)")
    n_pca: int = _opt(0, "PCA components before k-means (pca_kmeans); 0 = plain k-means")
    n_stages: int = _opt(1, "k-means stages on the residual (residual_kmeans when > 1)")
    context_size: int = _opt(128, "tokens per context")
    split_seed: int = _opt(0, "seed of the shuffle that splits contexts into fit / eval")
    overwrite: bool = _opt(False, "replace an SAE already saved in --out")

    def __post_init__(self) -> None:
        for name in ("hook", "out"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"--{name.replace('_', '-')} is required.")
        object.__setattr__(self, "n_clusters", check_int("--n-clusters", self.n_clusters, 1))
        object.__setattr__(self, "tokens", check_int("--tokens", self.tokens, 1))
        object.__setattr__(self, "n_pca", check_int("--n-pca", self.n_pca, 0))
        object.__setattr__(self, "n_stages", check_int("--n-stages", self.n_stages, 1))
        object.__setattr__(self, "context_size", check_int("--context-size", self.context_size, 2))
        object.__setattr__(self, "split_seed", check_int("--split-seed", self.split_seed, 0))
        if self.n_pca and self.n_stages > 1:
            raise ValueError("--n-pca and --n-stages > 1 cannot be combined; pick one.")
        if self.n_clusters > self.tokens:
            raise ValueError(
                f"--n-clusters {self.n_clusters} exceeds --tokens {self.tokens}; fit on more "
                "tokens or use fewer clusters."
            )
        check_hook(self.hook, n_layers=OFFLINE_LAYERS if self.model == OFFLINE_MODEL else None)


@dataclass(frozen=True)
class EvalCommand:
    """``sae-fvu eval``: SAEBench's core eval of a saved SAE (any SAELens architecture) with
    the plugin enabled; for an SAE with provenance, on contexts held out from its fit
    (checked); result JSON written."""

    sae: str = _opt(
        None,
        "folder of a saved SAE (cfg.json + sae_weights.safetensors), or a SAELens registry "
        "release with --sae-id",
        positional=True,
    )
    sae_id: str | None = _opt(None, "SAE id within a SAELens registry release (needs the hub)")
    model: str | None = _opt(None, "model (default: the SAE's metadata)")
    dataset: str | None = _opt(None, "dataset (default: the SAE's metadata)")
    eval_batches: int = _opt(8, "SAEBench batches for explained variance and sparsity")
    recon_batches: int = _opt(
        2, "SAEBench batches for the KL / CE-loss metrics (≥ 1: its result JSON needs them)"
    )
    batch_prompts: int = _opt(8, "contexts per SAEBench batch")
    definition: str = _opt("fvu_a", "explained-variance definition reported as explained_variance")
    report: list[str] = field(
        default_factory=lambda: ["all"],
        metadata={"help": "further definitions to report ('all' = every streaming one)"},
    )
    exclude_norm_above: float | None = _opt(
        None, "leave tokens with a larger activation norm out of explained variance"
    )
    bootstrap: int = _opt(100, "bootstrap replicates behind the intervals (0: none)")
    ci_level: float = _opt(0.95, "coverage of the bootstrap intervals")
    seed: int = _opt(0, "seed of the bootstrap weights (pair results that share it)")
    output_json: str | None = _opt(
        None, "result JSON file, or a folder for eval_results.json (default: the SAE folder)"
    )
    allow_overlap: bool = _opt(
        False, "score even if eval contexts overlap the fit contexts (or cannot be checked)"
    )
    device: str | None = _opt(None, "where the model and SAE run (default: CUDA when available)")

    def __post_init__(self) -> None:
        if not isinstance(self.sae, str) or not self.sae:
            raise ValueError("give the folder of a saved SAE.")
        for name in ("eval_batches", "batch_prompts"):
            object.__setattr__(
                self, name, check_int(f"--{name.replace('_', '-')}", getattr(self, name), 1)
            )
        object.__setattr__(
            self, "recon_batches", check_int("--recon-batches", self.recon_batches, 0)
        )
        if self.exclude_norm_above is not None:
            check_float("--exclude-norm-above", self.exclude_norm_above, 0.0)
        object.__setattr__(self, "bootstrap", check_int("--bootstrap", self.bootstrap, 0))
        object.__setattr__(self, "seed", check_int("--seed", self.seed, 0))
        if not 0 < check_float("--ci-level", self.ci_level, 0.0) < 1:
            raise ValueError(f"--ci-level must be in (0, 1), e.g. 0.95; got {self.ci_level}.")
