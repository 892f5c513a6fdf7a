"""The options of every clustering fit, typed, validated, with their defaults stated once.

The Python functions (``fit_kmeans(acts, k, n_iter=30)``), the command line (generated from
these fields, help text and defaults included) and the experiments all build a
:class:`KMeansOptions`. This module imports nothing heavy, so ``--help`` stays fast.
"""

from __future__ import annotations

import difflib
import math
import operator
from dataclasses import dataclass, field, fields, replace
from typing import Any

INITS = ("k-means++", "k-means||", "random")
EMPTY_POLICIES = ("split", "farthest")


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an int (Python or numpy integers; bools and floats refused)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got the bool {value!r}.")
    try:
        out = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an integer, got {value!r} ({type(value).__name__})."
        ) from None
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {out}.")
    return int(out)


def check_float(name: str, value: Any, minimum: float | None = None) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        and not hasattr(value, "__float__")
    ):
        raise TypeError(f"{name} must be a number, got {value!r}.")
    out = float(value)
    if math.isnan(out) or (minimum is not None and out < minimum):
        raise ValueError(f"{name} must be a number ≥ {minimum}, got {value!r}.")
    return out


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}.{hint}")
    return str(value)


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class KMeansOptions:
    """How a k-means stage is fitted (every stage of one fit uses the same options).

    Lloyd's algorithm minimises inertia Σ_n min_k ‖z_n − c_k‖² over the data z (centred,
    and for PCA + k-means the PCA residual). It stops after ``n_iter`` iterations, when no
    label changes, or when the centre shift Σ_k ‖Δc_k‖² ≤ ``tol`` × mean per-dimension
    variance (scikit-learn's rule).
    """

    n_iter: int = _opt(30, "maximum Lloyd iterations per run")
    tol: float = _opt(
        1e-4, "stop when Σ‖Δc‖² ≤ tol × mean per-dimension variance (scikit-learn's rule)"
    )
    init: Any = _opt(
        "k-means++",
        "seeding: 'k-means++' (greedy, as scikit-learn), 'k-means||' (Bahmani et al. 2012, "
        "for streamed or sharded data), 'random' (k distinct sampled rows), or (Python "
        "only) a (k, d) tensor of initial centroids",
        choices=INITS,
    )
    n_init: int = _opt(1, "independent seeded runs; the one with the lowest exact inertia is kept")
    n_local_trials: int | None = _opt(
        None, "candidates per greedy k-means++ step (default 2 + ⌊ln k⌋, as scikit-learn)"
    )
    init_sample: int | None = _opt(
        None,
        "rows sampled uniformly for k-means++ / random seeding (default min(N, max(10000, 2k)))",
    )
    oversampling: float = _opt(2.0, "k-means||: candidates drawn per round = oversampling × k")
    init_rounds: int = _opt(5, "k-means||: sampling rounds")
    empty: str = _opt(
        "split",
        "refill empty clusters: 'split' a populous one (faiss's rule) or take the 'farthest' "
        "rows (scikit-learn's)",
        choices=EMPTY_POLICIES,
    )
    seed: int = _opt(0, "random seed of sampling and seeding (run i of n_init uses seed + i)")
    device: str | None = _opt(None, "where the work runs (default: CUDA when available)")
    checkpoint: str | None = _opt(
        None,
        "file to save progress to; a re-run with the same data and options resumes from it "
        "to the identical result",
    )
    checkpoint_every: int = _opt(5, "save the checkpoint every this many Lloyd iterations")
    progress: bool = _opt(True, "show a progress bar")

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "n_iter", check_int("n_iter", self.n_iter, 1))
        set_(self, "tol", check_float("tol", self.tol, 0.0))
        if not _is_tensor(self.init):
            check_choice("init", self.init, INITS)
        set_(self, "n_init", check_int("n_init", self.n_init, 1))
        if self.n_local_trials is not None:
            set_(self, "n_local_trials", check_int("n_local_trials", self.n_local_trials, 1))
        if self.init_sample is not None:
            set_(self, "init_sample", check_int("init_sample", self.init_sample, 1))
        set_(self, "oversampling", check_float("oversampling", self.oversampling, 0.0))
        if not self.oversampling > 0:
            raise ValueError(f"oversampling must be > 0, got {self.oversampling}.")
        set_(self, "init_rounds", check_int("init_rounds", self.init_rounds, 1))
        check_choice("empty", self.empty, EMPTY_POLICIES)
        set_(self, "seed", check_int("seed", self.seed, 0))
        set_(self, "checkpoint_every", check_int("checkpoint_every", self.checkpoint_every, 1))
        if self.checkpoint is not None:
            set_(self, "checkpoint", str(self.checkpoint))
        if self.device is not None:
            set_(self, "device", str(self.device))
        if not isinstance(self.progress, bool):
            raise TypeError(f"progress must be True or False, got {self.progress!r}.")
        if _is_tensor(self.init) and self.n_init > 1:
            raise ValueError(
                "n_init > 1 needs a seeding method ('k-means++', 'k-means||', 'random'); a "
                "tensor init gives the same run every time. Use n_init=1."
            )

    @classmethod
    def build(
        cls, options: KMeansOptions | None = None, where: str = "fit", **kwargs: Any
    ) -> KMeansOptions:
        """``options`` updated with ``kwargs``; an unknown keyword is a ``TypeError`` naming
        the closest option (user metadata belongs in ``metadata={...}``)."""
        names = [f.name for f in fields(cls)]
        for key in kwargs:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise TypeError(
                    f"{where}() got an unexpected keyword argument {key!r}.{hint} Options: "
                    f"{', '.join(names)}; put your own metadata in metadata={{...}}."
                )
        base = options if options is not None else cls()
        if not isinstance(base, cls):
            raise TypeError(f"options must be a {cls.__name__}, got {type(base).__name__}.")
        return replace(base, **kwargs) if kwargs else base

    def local_trials(self, k: int) -> int:
        """Greedy k-means++ candidates per step: ``n_local_trials`` or 2 + ⌊ln k⌋."""
        return self.n_local_trials or 2 + int(math.log(k))

    def sample_size(self, n: int, k: int) -> int:
        """Rows sampled for seeding: ``init_sample`` or min(N, max(10000, 2k)), at least k.
        (Greedy k-means++ reads the whole sample once per centre; at 2k rows it stays in a
        CPU's last-level cache for k up to ~4096 at d = 576.)"""
        m = self.init_sample or max(10_000, 2 * k)
        return max(min(n, m), min(n, k))


def _is_tensor(value: Any) -> bool:
    return type(value).__name__ == "Tensor" and hasattr(value, "shape")


def option_help(cls: type, name: str) -> str:
    """The help text of a field (for generated command lines)."""
    for f in fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(name)


# ------------------------------------------------------------------ hooks and commands

_BLOCK_HOOKS = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_in",
    "hook_attn_out",
    "hook_mlp_in",
    "hook_mlp_out",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_z",
    "attn.hook_result",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "mlp.hook_pre",
    "mlp.hook_pre_linear",
    "mlp.hook_post",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "ln2.hook_scale",
    "ln2.hook_normalized",
)
_TOP_HOOKS = (
    "hook_embed",
    "hook_pos_embed",
    "ln_final.hook_scale",
    "ln_final.hook_normalized",
)


def hook_suggestions(
    hook: str, valid: list[str] | None = None, n_layers: int | None = None
) -> list[str]:
    """The valid hook names closest to ``hook`` (from ``valid``, or TransformerLens's
    naming scheme with ``n_layers`` blocks)."""
    if valid is None:
        layers = range(n_layers if n_layers is not None else 64)
        valid = [*_TOP_HOOKS, *(f"blocks.{i}.{h}" for i in layers for h in _BLOCK_HOOKS)]
    return difflib.get_close_matches(hook, valid, n=3, cutoff=0.6)


def check_hook(hook: str, valid: list[str] | None = None, n_layers: int | None = None) -> str:
    """A TransformerLens hook name (in ``valid`` when given), else a ``ValueError`` naming
    the closest valid names."""
    if valid is not None:
        ok = hook in valid
    else:
        parts = hook.split(".", 2)
        ok = hook in _TOP_HOOKS or (
            len(parts) == 3
            and parts[0] == "blocks"
            and parts[1].isdigit()
            and (n_layers is None or int(parts[1]) < n_layers)
            and parts[2] in _BLOCK_HOOKS
        )
    if not ok:
        close = hook_suggestions(hook, valid, n_layers)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"hook {hook!r} is not a hook of the model.{hint} Hooks look like "
            "'blocks.3.hook_resid_post'."
        )
    return hook


OFFLINE_MODEL = "smollm2-135m"
OFFLINE_DATASET = "austen"
OFFLINE_LAYERS = 30  # SmolLM2-135M


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
    output_json: str | None = _opt(None, "result JSON path (default: SAE folder/eval_results.json)")
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
