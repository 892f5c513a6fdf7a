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

from .._integration import UnsupportedVersionError
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


# The opt-in itself: the same four functions for SAEBench and SAELens (one implementation,
# :class:`sae_fvu_plugin._integration.Integration`), bound to this library's patch.
enable = SAEBENCH.enable
disable = SAEBENCH.disable
is_enabled = SAEBENCH.is_enabled
enabled = SAEBENCH.enabled
