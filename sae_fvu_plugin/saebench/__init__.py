"""``explained_variance_definition`` inside SAEBench's own, unmodified core eval.

    from sae_bench.evals.core import main as core
    from sae_fvu_plugin import saebench as fvu_saebench

    fvu_saebench.enable()
    cfg = fvu_saebench.FVUCoreEvalConfig(explained_variance_definition="fvu_a", ...)
    metrics, _ = core.run_evals(sae, activation_store, model, cfg, ignore_tokens=...)

Modules: ``config`` (the config and output schema), ``patch`` (the small, reversible
patch), ``runner`` (one SAE end to end: ``run_core_eval``), ``cli`` (SAEBench's CLI plus
the flags). ``enable()``/``disable()`` are process-wide; ``with enabled(...)`` is scoped
to the block and to the current thread / context (see :mod:`sae_fvu_plugin._integration`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

from .._integration import DEFAULT_DEFINITION, UnsupportedVersionError
from .cli import SCHEMA_PATH, arg_parser, main, write_schema
from .config import (
    FVUCoreEvalConfig,
    FVUCoreEvalOutput,
    FVUCoreMetricCategories,
    FVUReconstructionQualityMetrics,
    output_json_schema,
)
from .patch import SAEBENCH, check_upstream
from .runner import core_eval_config, run_core_eval

__all__ = [
    "SCHEMA_PATH",
    "FVUCoreEvalConfig",
    "FVUCoreEvalOutput",
    "FVUCoreMetricCategories",
    "FVUReconstructionQualityMetrics",
    "UnsupportedVersionError",
    "arg_parser",
    "check_upstream",
    "core_eval_config",
    "disable",
    "enable",
    "enabled",
    "is_enabled",
    "main",
    "output_json_schema",
    "run_core_eval",
    "write_schema",
]


def enable(
    default_definition: str = DEFAULT_DEFINITION,
    default_report: Sequence[str] = (),
    *,
    bootstrap: int | None = None,
    ci_level: float | None = None,
) -> None:
    """Make SAEBench's core eval report ``explained_variance`` under a chosen definition,
    process-wide. An :class:`FVUCoreEvalConfig` carries its own choice; a stock
    ``CoreEvalConfig`` (as ``multiple_evals`` builds) gets these defaults. Checks the
    installed SAEBench first. Idempotent; calling it again updates the defaults."""
    SAEBENCH.enable(default_definition, default_report, bootstrap, ci_level)


def disable() -> None:
    """Restore stock SAEBench (idempotent; blocks inside ``enabled()`` keep it on until
    they exit)."""
    SAEBENCH.disable()


def is_enabled() -> bool:
    return SAEBENCH.patch.is_enabled


def enabled(
    default_definition: str = DEFAULT_DEFINITION,
    default_report: Sequence[str] = (),
    *,
    bootstrap: int | None = None,
    ci_level: float | None = None,
) -> AbstractContextManager[None]:
    """``with enabled(): ...`` — on for the block; the defaults apply to this thread /
    context only; the patch stays while any block (or a global ``enable()``) needs it."""
    return SAEBENCH.enabled(default_definition, default_report, bootstrap, ci_level)
