"""The options of every clustering fit, typed, validated, with their defaults stated once.

The Python functions (``fit_kmeans(acts, k, n_iter=30)``), the command line (generated from
these fields, help text and defaults included) and the experiments all build a
:class:`KMeansOptions`. It lives outside :mod:`sae_fvu_plugin.clustering` (which re-exports it)
because importing that package registers SAELens architectures, which imports SAELens; this
module imports nothing heavy, so ``sae-fvu --help`` stays fast.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .validate import check_choice, check_float, check_int, is_tensor

INITS = ("k-means++", "k-means||", "random")
EMPTY_POLICIES = ("split", "farthest")
INIT_SAMPLINGS = ("importance", "uniform")
COMPUTE_DTYPES = ("auto", "bfloat16", "float32", "float64")
# the least rows a seeding samples: 32,768 until 2026-12-06, then 65,536 (the fits that
# changed are version 2: ``experiments/methods/clustering.py``)
SEED_SAMPLE_FLOOR = 65_536
# rows a seeding samples per cluster: 32 until the evening of 2026-12-06, then 64 (the
# fits that changed, over 1,024 clusters on over 65,536 rows, are version 3)
SEED_ROWS_PER_CLUSTER = 64


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
        "rows sampled for k-means++ / random seeding (default min(N, max(65536, 64k)))",
    )
    init_sampling: str = _opt(
        "importance",
        "how k-means++ / random seeding draws its sample: 'importance' (rows kept with "
        "probability ∝ 0.9/N + 0.1‖z‖²/Σ‖z‖², weighted: the rare far-out rows are seen) or "
        "'uniform'",
        choices=INIT_SAMPLINGS,
    )
    oversampling: float = _opt(2.0, "k-means||: candidates drawn per round = oversampling × k")
    init_rounds: int = _opt(5, "k-means||: sampling rounds")
    empty: str = _opt(
        "split",
        "refill empty clusters: 'split' a populous one (faiss's rule) or take the 'farthest' "
        "rows (scikit-learn's)",
        choices=EMPTY_POLICIES,
    )
    compute_dtype: str = _opt(
        "auto",
        "precision of the distance scores; every label is certified equal to the float64 "
        "argmin whichever is used (rows within the rounding bound are rescored exactly), so "
        "this changes speed only: 'auto' picks bfloat16 where a short cached calibration "
        "measures its matmul faster than float32",
        choices=COMPUTE_DTYPES,
    )
    seed: int = _opt(0, "random seed of sampling and seeding (run i of n_init uses seed + i)")
    device: str | None = _opt(None, "where the work runs (default: CUDA when available)")
    checkpoint: str | None = _opt(
        None,
        "file to save progress to; a re-run with the same data and options resumes from it "
        "to the identical result",
    )
    checkpoint_every: int = _opt(
        5,
        "save the checkpoint every this many Lloyd iterations (and after any iteration that "
        "ends 2 min or more after the last save)",
    )
    progress: bool = _opt(True, "show a progress bar")

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "n_iter", check_int("n_iter", self.n_iter, 1))
        set_(self, "tol", check_float("tol", self.tol, 0.0))
        if not math.isfinite(self.tol):
            raise ValueError(
                f"tol must be a finite number ≥ 0 (e.g. 1e-4; 0 stops only when no label "
                f"changes), got {self.tol!r}."
            )
        if not is_tensor(self.init):
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
        check_choice("init_sampling", self.init_sampling, INIT_SAMPLINGS)
        check_choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        set_(self, "seed", check_int("seed", self.seed, 0))
        set_(self, "checkpoint_every", check_int("checkpoint_every", self.checkpoint_every, 1))
        if self.checkpoint is not None:
            set_(self, "checkpoint", str(self.checkpoint))
        if self.device is not None:
            set_(self, "device", str(self.device))
        if not isinstance(self.progress, bool):
            raise TypeError(f"progress must be True or False, got {self.progress!r}.")
        if is_tensor(self.init) and self.n_init > 1:
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
        """Rows sampled for seeding: ``init_sample`` or min(N, max(65536, 64k)), at least k.
        (Measured on SmolLM2 activations at k = 1024, 32,768 rows: greedy k-means++ on 10,000
        sampled rows ends 1.6–5 % above scikit-learn's full-data seeding, on 20,000 rows
        0.7–1.7 %, on all rows 0.2 % below; on 65,536 rows a 32,768-row sample ended 0.7 %
        above it at layer 3 and on a Gaussian mixture, hence the floor of 65,536; on 786,432
        layer-3 rows 32 sampled rows per cluster ended 1.1 % (k = 1,024) and 1.2 %
        (k = 4,096) above 64 per cluster, and 128 per cluster gained nothing more, hence 64k;
        ``benchmarks/kmeans_quality.py``, CONTRIBUTING.md "Seeding on real activations".)"""
        m = self.init_sample or max(SEED_SAMPLE_FLOOR, SEED_ROWS_PER_CLUSTER * k)
        return max(min(n, m), min(n, k))


def option_help(cls: type, name: str) -> str:
    """The help text of a field (for generated command lines)."""
    for f in fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(name)
