"""What the SAEBench and SAELens integrations share: the selection of definitions for one
eval run, the run's state, observing an eval loop's batches without touching the SAE, and
explicit, reversible, reference-counted patches.

Threads and contexts: ``enable()`` / ``disable()`` switch the plugin on and off for the
whole process. ``with enabled(...)`` keeps it on for the block and sets the defaults for
stock configs *in the current thread / context only*; overlapping blocks in several
threads each keep their own defaults, and the patch stays until the last block exits (and
``disable()`` was called, or ``enable()`` never was). Observation belongs to one
``run_evals`` call: the SAE and the activation store are wrapped in per-call proxies, so
concurrent runs on the same SAE object never see each other's batches and nothing is
ever set on the SAE.
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib.metadata
import inspect
import math
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch

from ._compat import ensure_datasets_can_format
from .accumulator import FVUAccumulator
from .definitions import DEFINITIONS
from .stats import FVUWarning, NonFiniteError

DEFAULT_DEFINITION = "fvu_a"
DEFAULT_BOOTSTRAP = 100
DEFAULT_CI_LEVEL = 0.95


def check_definition_name(name: Any) -> str:
    """A registered definition that streams (the eval loops see one batch at a time)."""
    if not isinstance(name, str):
        raise TypeError(f"explained_variance_definition must be a name (str), got {name!r}.")
    defn = DEFINITIONS[name]  # UnknownDefinitionError lists the valid names
    if not defn.streamable:
        raise ValueError(
            f"explained_variance_definition {name!r} cannot be computed in the eval loop: "
            "per-token/per-batch ratios around the global mean need two passes. Pick a "
            f"streaming definition: {', '.join(n for n in DEFINITIONS if DEFINITIONS[n].streamable)}."
        )
    return name


def check_report_names(names: Any) -> list[str]:
    """Further definitions to report; ``"all"`` = every streaming definition."""
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, Sequence):
        raise TypeError(f"explained_variance_report must be a list of names, got {names!r}.")
    out: list[str] = []
    for n in names:
        if n != "all":
            check_definition_name(n)
        out.append(n)
    return out


def check_norm_threshold(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(
            f"explained_variance_exclude_norm_above must be a positive number or None, got {value!r}."
        )
    return float(value)


def check_bootstrap(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value == 1:
        raise ValueError(
            "explained_variance_bootstrap must be 0 (no intervals) or an int ≥ 2 (replicates; "
            f"100 is the default), got {value!r}."
        )
    return value


def check_seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise ValueError(f"explained_variance_seed must be an int in [0, 2**63), got {value!r}.")
    return value


def check_ci_level(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(
            f"explained_variance_ci_level must be in (0, 1), e.g. 0.95; got {value!r}."
        )
    return float(value)


@dataclass
class Selection:
    """The definition reported as ``explained_variance``, the extra ones to report, the
    optional token-norm threshold, and the bootstrap settings."""

    definition: str = DEFAULT_DEFINITION
    report: list[str] = field(default_factory=list)
    exclude_norm_above: float | None = None
    bootstrap: int = DEFAULT_BOOTSTRAP
    ci_level: float = DEFAULT_CI_LEVEL
    seed: int = 0

    def accumulator(self) -> FVUAccumulator:
        return FVUAccumulator(
            [self.definition, *self.report], bootstrap=self.bootstrap, seed=self.seed
        )

    def keep(self, x: torch.Tensor) -> torch.Tensor | None:
        """Keep-mask over the tokens of x (..., d) for the norm threshold (None: keep all)."""
        if self.exclude_norm_above is None:
            return None
        return torch.linalg.vector_norm(x.to(torch.float64), dim=-1) <= self.exclude_norm_above

    @classmethod
    def from_config(cls, config: Any, default: Selection) -> Selection:
        """Fields of an extended config; a stock config gets the plugin's defaults."""
        if hasattr(config, "explained_variance_definition"):
            return cls(
                check_definition_name(config.explained_variance_definition),
                check_report_names(getattr(config, "explained_variance_report", [])),
                check_norm_threshold(
                    getattr(config, "explained_variance_exclude_norm_above", None)
                ),
                check_bootstrap(getattr(config, "explained_variance_bootstrap", default.bootstrap)),
                check_ci_level(getattr(config, "explained_variance_ci_level", default.ci_level)),
                check_seed(getattr(config, "explained_variance_seed", default.seed)),
            )
        return cls(
            default.definition,
            list(default.report),
            None,
            default.bootstrap,
            default.ci_level,
            default.seed,
        )


@dataclass
class RunState:
    """One eval run: what to report and, once the loop ran, the values."""

    selection: Selection
    quality: dict[str, Any] | None = None  # keys added to reconstruction_quality


_RUN: contextvars.ContextVar[RunState | None] = contextvars.ContextVar("sae_fvu_run", default=None)


@contextmanager
def run_scope(selection: Selection) -> Iterator[RunState]:
    state = RunState(selection)
    token = _RUN.set(state)
    try:
        yield state
    finally:
        _RUN.reset(token)


def current_run(default: Selection) -> RunState:
    """The enclosing run (set by the run_evals wrapper), or a fresh one with defaults."""
    state = _RUN.get()
    return state if state is not None else RunState(Selection.from_config(None, default))


# ---------------------------------------------------------------------- observing


def ignore_mask(tokens: torch.Tensor, ignore_tokens: Any) -> torch.Tensor:
    """SAEBench / SAELens: tokens equal to any of ``ignore_tokens`` are not evaluated."""
    if ignore_tokens:
        return torch.logical_not(
            torch.any(torch.stack([tokens == t for t in ignore_tokens], dim=0), dim=0)
        )
    return torch.ones_like(tokens, dtype=torch.bool)


class BatchFeeder:
    """Feeds one eval loop's batches into the run's accumulator and turns what cannot be
    computed into NaN + an :class:`FVUWarning` instead of an exception (every other
    metric of the loop is then reported exactly as stock)."""

    def __init__(self, run: RunState, library: str) -> None:
        self.run = run
        self.library = library
        self.acc = run.selection.accumulator()
        self.excluded = 0
        self.masked = 0
        self.seen_tokens = 0
        self.batches = 0
        self.non_finite: list[tuple[int, int, int]] = []  # (batch, entries in x, in x_hat)
        self._tokens = hashlib.sha256()
        self._saw_tokens = False
        self.where: dict[str, Any] = {}  # model and hook, recorded with the provenance

    def see_tokens(self, tokens: torch.Tensor) -> None:
        """Fold one eval batch's token ids (in eval order) into the content fingerprint that
        pairs two results: the same fingerprint means the same text, in the same order."""
        t = tokens.detach().to("cpu", torch.int64).contiguous()
        self._tokens.update(repr(tuple(t.shape)).encode())
        self._tokens.update(t.numpy().tobytes())
        self._saw_tokens = True

    def feed(
        self,
        x: torch.Tensor,
        x_hat: torch.Tensor,
        mask: torch.Tensor | None,
        units: torch.Tensor | None = None,
    ) -> None:
        self.batches += 1
        keep = mask
        by_norm = self.run.selection.keep(x)
        n_tok = int(torch.tensor(x.shape[:-1]).prod()) if x.ndim > 1 else 1
        self.seen_tokens += n_tok
        if keep is not None:
            self.masked += int((~keep).sum())
        if by_norm is not None:
            self.excluded += int((~by_norm).sum()) if keep is None else int((keep & ~by_norm).sum())
            keep = by_norm if keep is None else keep & by_norm
        try:
            self.acc.update(x, x_hat, keep, units)
        except NonFiniteError as err:
            self.non_finite.append((self.batches, err.bad_x, err.bad_x_hat))
            warnings.warn(
                f"sae_fvu_plugin ({self.library}), eval batch {self.batches}: {err.bad_x} NaN/inf "
                f"entries in x and {err.bad_x_hat} in x_hat; explained variance is reported as "
                "NaN under every definition, every other metric as the library computes it.",
                FVUWarning,
                stacklevel=2,
            )

    def finish(self) -> dict[str, Any]:
        """The keys this run adds to ``reconstruction_quality``."""
        sel = self.run.selection
        names = [sel.definition, *[n for n in self.acc.names if n != sel.definition]]
        nan = float("nan")
        quality: dict[str, Any] = {
            "explained_variance_definition": sel.definition,
            "explained_variance_excluded_tokens": self.excluded,
        }
        problem = ""
        if self.non_finite:
            problem = (
                f"{len(self.non_finite)} eval batch(es) had NaN/inf values (batch, x, x_hat: "
                f"{self.non_finite[:5]})"
            )
        elif self.acc.n_tokens == 0:
            if sel.exclude_norm_above is not None and self.excluded:
                problem = (
                    f"explained_variance_exclude_norm_above={sel.exclude_norm_above} left out every "
                    f"evaluated token ({self.excluded} of {self.seen_tokens}); raise the threshold"
                )
            else:
                problem = (
                    f"the ignore_tokens mask covered every token ({self.masked} of "
                    f"{self.seen_tokens}); evaluate on text with other tokens"
                )
        if problem:
            warnings.warn(
                f"sae_fvu_plugin ({self.library}): explained variance is NaN: {problem}.",
                FVUWarning,
                stacklevel=2,
            )
            quality["explained_variance"] = nan
            quality["explained_variance_by_definition"] = dict.fromkeys(names, nan)
            quality["explained_variance_note"] = problem
            return quality
        ev = self.acc.explained_variance()
        quality["explained_variance"] = ev[sel.definition]
        quality["explained_variance_by_definition"] = {n: ev[n] for n in names}
        prov = self.acc.provenance() | self.where
        prov["tokens_fingerprint"] = self._tokens.hexdigest()[:32] if self._saw_tokens else None
        quality["explained_variance_provenance"] = {
            n: prov
            | {
                "depends_on_eval_batch": DEFINITIONS[n].center == "batch"
                or DEFINITIONS[n].reduce == "per_batch"
                or DEFINITIONS[n].formula != "standard"
            }
            for n in names
        }
        if self.acc.bootstrap:
            reps = self.acc.bootstrap_replicates()
            ci = self.acc.confidence_interval(sel.ci_level, replicates=reps)
            quality["explained_variance_ci"] = {}
            quality["explained_variance_replicates"] = {}
            for n in names:
                lo, hi = ci[n]
                why = interval_problem(self.acc.n_units, reps[n], prov["empty_replicates"])
                if why:
                    warnings.warn(
                        f"sae_fvu_plugin ({self.library}): no interval for {n}: {why}.",
                        FVUWarning,
                        stacklevel=2,
                    )
                    quality.setdefault("explained_variance_ci_note", {})[n] = why
                quality["explained_variance_ci"][n] = None if why else [1.0 - hi, 1.0 - lo]
                quality["explained_variance_replicates"][n] = [
                    v if math.isfinite(v) else None for v in (1.0 - reps[n]).tolist()
                ]
            quality["explained_variance_ci_level"] = sel.ci_level
            quality["explained_variance_bootstrap"] = self.acc.bootstrap
            quality["explained_variance_bootstrap_seed"] = self.acc.seed
        return quality


def interval_problem(n_units: int, replicates: torch.Tensor, empty: int = 0) -> str:
    """Why no bootstrap interval can be given ('' if one can): fewer than two resampling
    units (every replicate would be the same: a zero-width interval), a non-empty
    replicate that is not finite (a degenerate resample, e.g. zero variance), or fewer than
    two finite replicates. ``empty`` replicates (no unit drawn, FVU undefined: P = e^-U
    each) are left out, as the conditional Poisson bootstrap does."""
    if n_units < 2:
        return f"{n_units} resampling unit(s) (eval contexts); an interval needs at least 2"
    finite = int(torch.isfinite(replicates).sum())
    bad = replicates.numel() - finite - empty
    if bad > 0:
        return f"{bad} of {replicates.numel()} bootstrap replicates are not finite"
    if finite < 2:
        return f"only {finite} of {replicates.numel()} bootstrap replicates drew any unit"
    return ""


class Proxy:
    """Forwards every attribute to ``target`` except the ones given (per-call wrappers)."""

    def __init__(self, target: Any, **overrides: Any) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_overrides", overrides)

    def __getattr__(self, name: str) -> Any:
        over = object.__getattribute__(self, "_overrides")
        if name in over:
            return over[name]
        return getattr(object.__getattribute__(self, "_target"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_target"), name, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return object.__getattribute__(self, "_target")(*args, **kwargs)


# ------------------------------------------------------------------------ patches


class UnsupportedVersionError(RuntimeError):
    """The installed SAEBench / SAELens is not one the plugin knows how to extend."""


def version_of(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def require_parameters(name: str, fn: Any, params: Sequence[str], supported: str) -> None:
    """Fail early, with one clear error, when an upstream function lost a parameter the
    plugin relies on."""
    try:
        have = set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        have = set()
    missing = [p for p in params if p not in have]
    if missing:
        raise UnsupportedVersionError(
            f"{name} has no parameter(s) {missing} in the installed version; sae_fvu_plugin "
            f"supports {supported}. Install a supported version, or use the patches in "
            "patches/ against your version."
        )


class Patcher:
    """Swap module attributes while in use; restore them exactly afterwards.

    Every module in ``sys.modules`` that holds the original object under the patched name
    (e.g. ``sae_lens.run_evals``, bound at import) is patched too, and on restore every
    module holding a patched object gets the original back — including modules imported
    while the plugin was enabled. Reference-counted: ``acquire``/``release`` pairs nest
    across threads; ``enable``/``disable`` hold one global reference.
    """

    def __init__(
        self,
        name: str,
        targets: Callable[[], list[tuple[ModuleType, str, Any]]],
        check: Callable[[], None],
    ) -> None:
        self.name = name
        self._targets = targets
        self._check = check
        self._saved: list[tuple[str, Any, Any]] = []  # (attribute, original, replacement)
        self._lock = threading.RLock()
        self._scoped = 0
        self._global = False

    @property
    def is_enabled(self) -> bool:
        return bool(self._saved)

    def _apply(self) -> None:
        if self._saved:
            return
        self._check()
        ensure_datasets_can_format()
        targets = self._targets()
        for module, attr, _ in targets:
            if not hasattr(module, attr):
                raise UnsupportedVersionError(
                    f"{self.name}: {module.__name__}.{attr} does not exist in the installed "
                    "version; this plugin supports the pinned releases (see README)."
                )
        for module, attr, new in targets:
            old = getattr(module, attr)
            self._saved.append((attr, old, new))
            for mod in list(sys.modules.values()):
                if mod is not None and getattr(mod, attr, None) is old:
                    setattr(mod, attr, new)
            setattr(module, attr, new)

    def _restore(self) -> None:
        for attr, old, new in reversed(self._saved):
            for mod in list(sys.modules.values()):
                try:
                    if mod is not None and getattr(mod, attr, None) is new:
                        setattr(mod, attr, old)
                except Exception:  # exotic module objects: nothing of ours there
                    continue
        self._saved.clear()

    def enable(self) -> None:
        with self._lock:
            self._apply()
            self._global = True

    def disable(self) -> None:
        with self._lock:
            self._global = False
            if self._scoped == 0:
                self._restore()

    def acquire(self) -> None:
        with self._lock:
            self._apply()
            self._scoped += 1

    def release(self) -> None:
        with self._lock:
            self._scoped -= 1
            if self._scoped == 0 and not self._global:
                self._restore()

    def original(self, attr: str, module: ModuleType) -> Any:
        for a, old, _ in self._saved:
            if a == attr:
                return old
        return getattr(module, attr)


class Integration:
    """One library's opt-in: its patch, the defaults for stock configs (process-wide from
    ``enable``, per context inside ``enabled``), and the ``run_evals`` wrapper."""

    def __init__(
        self,
        name: str,
        module: ModuleType,
        targets: Callable[[Integration], list[tuple[ModuleType, str, Any]]],
        check: Callable[[], None],
    ) -> None:
        self.module = module
        self.global_defaults = Selection()
        self._scoped_defaults: contextvars.ContextVar[Selection | None] = contextvars.ContextVar(
            f"{name}_defaults", default=None
        )
        self.patch = Patcher(name, lambda: targets(self), check)

    @property
    def defaults(self) -> Selection:
        scoped = self._scoped_defaults.get()
        return scoped if scoped is not None else self.global_defaults

    @staticmethod
    def _selection(
        definition: str, report: Sequence[str], bootstrap: int | None, ci_level: float | None
    ) -> Selection:
        return Selection(
            check_definition_name(definition),
            check_report_names(list(report)),
            None,
            DEFAULT_BOOTSTRAP if bootstrap is None else check_bootstrap(bootstrap),
            DEFAULT_CI_LEVEL if ci_level is None else check_ci_level(ci_level),
        )

    def enable(
        self,
        default_definition: str = DEFAULT_DEFINITION,
        default_report: Sequence[str] = (),
        *,
        bootstrap: int | None = None,
        ci_level: float | None = None,
    ) -> None:
        """Make the library's eval report ``explained_variance`` under a chosen definition,
        process-wide. An extended config (``FVUCoreEvalConfig``, ``FVUEvalConfig``) carries
        its own choice; a stock config gets these defaults. Checks the installed library
        first. Idempotent; calling it again updates the defaults."""
        sel = self._selection(default_definition, default_report, bootstrap, ci_level)
        self.patch.enable()
        self.global_defaults = sel

    def disable(self) -> None:
        """Restore the stock library (idempotent; blocks inside ``enabled()`` keep the
        patch until they exit)."""
        self.patch.disable()
        self.global_defaults = Selection()

    def is_enabled(self) -> bool:
        """Whether the patch is in place (globally or inside an ``enabled()`` block)."""
        return self.patch.is_enabled

    @contextmanager
    def enabled(
        self,
        default_definition: str = DEFAULT_DEFINITION,
        default_report: Sequence[str] = (),
        *,
        bootstrap: int | None = None,
        ci_level: float | None = None,
    ) -> Iterator[None]:
        """``with enabled(): ...`` — on for the block; the defaults apply to this thread /
        context only; the patch stays while any block (or a global ``enable()``) needs it."""
        sel = self._selection(default_definition, default_report, bootstrap, ci_level)
        self.patch.acquire()
        token = self._scoped_defaults.set(sel)
        try:
            yield
        finally:
            self._scoped_defaults.reset(token)
            self.patch.release()

    def original(self, attr: str) -> Any:
        return self.patch.original(attr, self.module)

    def run_evals(self, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        original = self.original("run_evals")
        bound = inspect.signature(original).bind(*args, **kwargs)
        bound.apply_defaults()
        selection = Selection.from_config(bound.arguments["eval_config"], self.defaults)
        with run_scope(selection) as run:
            metrics, feature_metrics = original(*args, **kwargs)
        quality = metrics.get("reconstruction_quality")
        if quality is not None and run.quality is not None:
            quality.update(run.quality)
        return metrics, feature_metrics
