"""What the SAEBench and SAELens integrations share: the selection of definitions for one
eval run, the run's accumulator, and explicit, reversible attribute patches."""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch

from .accumulator import FVUAccumulator
from .definitions import DEFINITIONS

DEFAULT_DEFINITION = "fvu_a"


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


@dataclass
class Selection:
    """The definition reported as ``explained_variance``, the extra ones to report, and the
    optional token-norm threshold above which tokens are left out of every definition."""

    definition: str = DEFAULT_DEFINITION
    report: list[str] = field(default_factory=list)
    exclude_norm_above: float | None = None

    def accumulator(self) -> FVUAccumulator:
        return FVUAccumulator([self.definition, *self.report])

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
            )
        return cls(default.definition, list(default.report))


@dataclass
class RunState:
    """One eval run: what to report and, once the loop ran, the values."""

    selection: Selection
    by_definition: dict[str, float] | None = None
    excluded_tokens: int = 0


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
    return (
        state
        if state is not None
        else RunState(Selection(default.definition, list(default.report)))
    )


def ordered_explained_variance(acc: FVUAccumulator, selection: Selection) -> dict[str, float]:
    """{name: 1 − FVU}, the selected definition first."""
    ev = acc.explained_variance()
    return {selection.definition: ev[selection.definition]} | ev


class Patcher:
    """Swap named attributes of modules while enabled; restore them exactly on disable.

    Thread-safe and idempotent; nothing happens until :meth:`enable`.
    """

    def __init__(self, name: str, targets: Callable[[], list[tuple[ModuleType, str, Any]]]):
        self.name = name
        self._targets = targets
        self._saved: list[tuple[ModuleType, str, Any]] = []
        self._lock = threading.Lock()

    @property
    def is_enabled(self) -> bool:
        return bool(self._saved)

    def enable(self) -> None:
        with self._lock:
            if self._saved:
                return
            targets = self._targets()
            for module, attr, _ in targets:
                if not hasattr(module, attr):
                    raise RuntimeError(
                        f"{self.name}: {module.__name__}.{attr} does not exist in the installed "
                        "version; this plugin supports the pinned releases (see README)."
                    )
            for module, attr, new in targets:
                self._saved.append((module, attr, getattr(module, attr)))
                setattr(module, attr, new)

    def disable(self) -> None:
        with self._lock:
            for module, attr, old in reversed(self._saved):
                setattr(module, attr, old)
            self._saved.clear()

    def original(self, module: ModuleType, attr: str) -> Any:
        for m, a, old in self._saved:
            if m is module and a == attr:
                return old
        return getattr(module, attr)


class Integration:
    """One library's opt-in: its patch, the defaults for stock configs, and the
    ``run_evals`` wrapper that adds ``explained_variance_definition`` and
    ``explained_variance_by_definition`` to ``metrics["reconstruction_quality"]``."""

    def __init__(
        self,
        name: str,
        module: ModuleType,
        targets: Callable[[Integration], list[tuple[ModuleType, str, Any]]],
    ) -> None:
        self.module = module
        self.defaults = Selection()
        self.patch = Patcher(name, lambda: targets(self))

    def enable(
        self, default_definition: str = DEFAULT_DEFINITION, default_report: Sequence[str] = ()
    ) -> None:
        self.defaults = Selection(
            check_definition_name(default_definition), check_report_names(list(default_report))
        )
        self.patch.enable()

    def disable(self) -> None:
        self.patch.disable()
        self.defaults = Selection()

    @contextmanager
    def enabled(
        self, default_definition: str = DEFAULT_DEFINITION, default_report: Sequence[str] = ()
    ) -> Iterator[None]:
        was, previous = self.patch.is_enabled, self.defaults
        self.enable(default_definition, default_report)
        try:
            yield
        finally:
            if was:
                self.enable(previous.definition, previous.report)
            else:
                self.disable()

    def original(self, attr: str) -> Any:
        return self.patch.original(self.module, attr)

    def run_evals(self, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        original = self.original("run_evals")
        bound = inspect.signature(original).bind(*args, **kwargs)
        bound.apply_defaults()
        selection = Selection.from_config(bound.arguments["eval_config"], self.defaults)
        with run_scope(selection) as run:
            metrics, feature_metrics = original(*args, **kwargs)
        quality = metrics.get("reconstruction_quality")
        if quality is not None and run.by_definition is not None:
            quality["explained_variance_definition"] = selection.definition
            quality["explained_variance_by_definition"] = run.by_definition
            quality["explained_variance_excluded_tokens"] = run.excluded_tokens
        return metrics, feature_metrics
