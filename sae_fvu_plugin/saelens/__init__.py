"""``explained_variance_definition`` inside SAELens's own ``sae_lens.evals.run_evals``
(and every name SAELens binds it to: ``sae_lens.run_evals``, the training runners).

    from sae_lens import evals
    from sae_fvu_plugin import saelens as fvu_saelens

    fvu_saelens.enable()
    cfg = fvu_saelens.FVUEvalConfig(explained_variance_definition="fvu_b",
                                    compute_variance_metrics=True)
    metrics, _ = evals.run_evals(sae, activation_store, model, scaler, cfg)

SAELens's own ``explained_variance`` is ``fvu_a`` (float32 per-batch sums) and its
``explained_variance_legacy`` is ``fvu_b``. Modules: ``config``, ``patch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

from .._integration import DEFAULT_DEFINITION, UnsupportedVersionError
from .config import FVUEvalConfig
from .patch import SAELENS, FVUExplainedVarianceCalculator, check_upstream

__all__ = [
    "FVUEvalConfig",
    "FVUExplainedVarianceCalculator",
    "UnsupportedVersionError",
    "check_upstream",
    "disable",
    "enable",
    "enabled",
    "is_enabled",
]


def enable(
    default_definition: str = DEFAULT_DEFINITION,
    default_report: Sequence[str] = (),
    *,
    bootstrap: int | None = None,
    ci_level: float | None = None,
) -> None:
    """Make SAELens's eval report ``explained_variance`` under a chosen definition,
    process-wide (an :class:`FVUEvalConfig` carries its own; a stock ``EvalConfig`` gets
    these defaults). Checks the installed SAELens first. Idempotent."""
    SAELENS.enable(default_definition, default_report, bootstrap, ci_level)


def disable() -> None:
    """Restore stock SAELens everywhere (idempotent)."""
    SAELENS.disable()


def is_enabled() -> bool:
    return SAELENS.patch.is_enabled


def enabled(
    default_definition: str = DEFAULT_DEFINITION,
    default_report: Sequence[str] = (),
    *,
    bootstrap: int | None = None,
    ci_level: float | None = None,
) -> AbstractContextManager[None]:
    """``with enabled(): ...`` — on for the block, defaults for this thread / context."""
    return SAELENS.enabled(default_definition, default_report, bootstrap, ci_level)
