"""``FVUEvalConfig``: SAELens's ``EvalConfig`` plus the explained-variance fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from sae_lens import evals as _evals

from .._integration import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_CI_LEVEL,
    DEFAULT_DEFINITION,
    check_bootstrap,
    check_ci_level,
    check_definition_name,
    check_norm_threshold,
    check_report_names,
)


@dataclass
class FVUEvalConfig(_evals.EvalConfig):
    """SAELens's ``EvalConfig`` plus the choice of explained-variance definition.

    ``explained_variance_definition``: reported as ``explained_variance`` (default
    ``fvu_a``). ``explained_variance_report``: further names (``["all"]`` allowed).
    ``explained_variance_exclude_norm_above``: tokens with a larger activation norm are left
    out of explained variance only (counted in ``explained_variance_excluded_tokens``).
    ``explained_variance_bootstrap`` / ``_ci_level`` / ``_seed``: the bootstrap intervals
    (unit: the eval context, numbered by its position in SAELens's eval stream).
    """

    explained_variance_definition: str = DEFAULT_DEFINITION
    explained_variance_report: list[str] = field(default_factory=list)
    explained_variance_exclude_norm_above: float | None = None
    explained_variance_bootstrap: int = DEFAULT_BOOTSTRAP
    explained_variance_ci_level: float = DEFAULT_CI_LEVEL
    explained_variance_seed: int = 0

    def __post_init__(self) -> None:
        check_definition_name(self.explained_variance_definition)
        self.explained_variance_report = check_report_names(self.explained_variance_report)
        check_norm_threshold(self.explained_variance_exclude_norm_above)
        check_bootstrap(self.explained_variance_bootstrap)
        check_ci_level(self.explained_variance_ci_level)
