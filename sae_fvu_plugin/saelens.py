"""``explained_variance_definition`` inside SAELens's own ``sae_lens.evals.run_evals``.

Usage::

    from sae_lens import evals
    from sae_fvu_plugin import saelens as fvu_saelens

    fvu_saelens.enable()
    cfg = fvu_saelens.FVUEvalConfig(explained_variance_definition="fvu_b",
                                    compute_variance_metrics=True)
    metrics, _ = evals.run_evals(sae, activation_store, model, scaler, cfg)

How: SAELens streams every (masked, unscaled) eval batch into its
``ExplainedVarianceCalculator``. While enabled, ``sae_lens.evals`` uses a subclass that
feeds an :class:`~sae_fvu_plugin.FVUAccumulator` instead, and ``run_evals`` is wrapped to
add ``explained_variance_definition`` and ``explained_variance_by_definition`` to
``metrics["reconstruction_quality"]``. Nothing else changes; :func:`disable` restores both
attributes. SAELens's own ``explained_variance`` is ``fvu_a`` (float32 per-batch sums) and
its ``explained_variance_legacy`` is ``fvu_b``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from sae_lens import evals as _evals

from ._integration import (
    DEFAULT_DEFINITION,
    Integration,
    check_definition_name,
    check_norm_threshold,
    check_report_names,
    current_run,
    ordered_explained_variance,
)

__all__ = ["FVUEvalConfig", "disable", "enable", "enabled", "is_enabled"]


@dataclass
class FVUEvalConfig(_evals.EvalConfig):
    """SAELens's ``EvalConfig`` plus the choice of explained-variance definition.

    ``explained_variance_definition``: reported as ``explained_variance`` (default
    ``fvu_a``). ``explained_variance_report``: further names (``["all"]`` allowed).
    ``explained_variance_exclude_norm_above``: tokens with a larger activation norm are left
    out of explained variance only (counted in ``explained_variance_excluded_tokens``).
    """

    explained_variance_definition: str = DEFAULT_DEFINITION
    explained_variance_report: list[str] = field(default_factory=list)
    explained_variance_exclude_norm_above: float | None = None

    def __post_init__(self) -> None:
        check_definition_name(self.explained_variance_definition)
        self.explained_variance_report = check_report_names(self.explained_variance_report)
        check_norm_threshold(self.explained_variance_exclude_norm_above)


class _FVUExplainedVarianceCalculator(_evals.ExplainedVarianceCalculator):
    """Same calls as SAELens's calculator; the number comes from the selected definition."""

    def __init__(self) -> None:
        super().__init__()
        self._run = current_run(_SAELENS.defaults)
        self._acc = self._run.selection.accumulator()

    def add_batch(self, sae_output: torch.Tensor, hidden_acts: torch.Tensor) -> None:
        keep = self._run.selection.keep(hidden_acts)
        if keep is not None:
            self._run.excluded_tokens += int((~keep).sum())
        try:
            self._acc.update(hidden_acts, sae_output, keep)
        except ValueError as err:
            raise ValueError(
                f"sae_fvu_plugin, SAELens eval batch {self._acc.n_batches + 1}: {err}"
            ) from err
        self.num_samples += hidden_acts.shape[0]

    def compute(self) -> float:
        ev = ordered_explained_variance(self._acc, self._run.selection)
        self._run.by_definition = ev
        return ev[self._run.selection.definition]


_SAELENS = Integration(
    "sae_fvu_plugin.saelens",
    _evals,
    lambda integration: [
        (_evals, "ExplainedVarianceCalculator", _FVUExplainedVarianceCalculator),
        (_evals, "run_evals", integration.run_evals),
    ],
)


def enable(
    default_definition: str = DEFAULT_DEFINITION, default_report: Sequence[str] = ()
) -> None:
    """Make ``sae_lens.evals.run_evals`` report ``explained_variance`` under a chosen
    definition (an :class:`FVUEvalConfig` carries its own; a stock ``EvalConfig`` gets
    these defaults). Idempotent."""
    _SAELENS.enable(default_definition, default_report)


def disable() -> None:
    """Restore stock SAELens (idempotent)."""
    _SAELENS.disable()


def is_enabled() -> bool:
    return _SAELENS.patch.is_enabled


def enabled(
    default_definition: str = DEFAULT_DEFINITION, default_report: Sequence[str] = ()
) -> AbstractContextManager[None]:
    """``with enabled(): ...`` — enable for the block, then restore the previous state."""
    return _SAELENS.enabled(default_definition, default_report)
