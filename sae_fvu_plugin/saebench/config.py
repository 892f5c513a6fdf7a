"""``FVUCoreEvalConfig`` and the output schema: SAEBench's own classes plus the
explained-variance fields (definition, report, norm exclusion, bootstrap intervals)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import Field, TypeAdapter, field_validator, model_validator
from pydantic.dataclasses import dataclass
from sae_bench.evals.core.eval_config import CoreEvalConfig
from sae_bench.evals.core.eval_output import (
    CoreEvalOutput,
    CoreMetricCategories,
    ReconstructionQualityMetrics,
)

from .._integration import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_CI_LEVEL,
    DEFAULT_DEFINITION,
    check_bootstrap,
    check_ci_level,
    check_definition_name,
    check_norm_threshold,
    check_report_names,
    check_seed,
)
from ..definitions import DEFINITIONS

_DEFINITION_HELP = (
    "Definition of explained variance (1 − FVU) reported as `explained_variance`. Presets: "
    + ", ".join(
        f"{n} ({DEFINITIONS[n].reduce}, centre {DEFINITIONS[n].center})"
        for n in DEFINITIONS.presets
    )
    + ". `fvu_a` is conventional R² (ratio of sums around the global mean)."
)


@dataclass
class FVUCoreEvalConfig(CoreEvalConfig):
    """SAEBench's ``CoreEvalConfig`` plus the choice of explained-variance definition."""

    explained_variance_definition: str = Field(
        default=DEFAULT_DEFINITION,
        title="Explained Variance Definition",
        description=_DEFINITION_HELP,
        examples=list(DEFINITIONS.presets),
    )
    explained_variance_report: list[str] = Field(
        default_factory=list,
        title="Explained Variance Report",
        description="Further definitions reported alongside under "
        "`explained_variance_by_definition` (['all'] = every streaming definition).",
        examples=[["fvu_b", "fvu_per_dim"], ["all"]],
    )
    explained_variance_exclude_norm_above: float | None = Field(
        default=None,
        title="Exclude Tokens Above Norm",
        description="Leave tokens whose activation L2 norm exceeds this out of every "
        "explained-variance definition (e.g. rare 'massive activation' tokens); every other "
        "metric keeps them. None keeps all tokens. The count left out is reported as "
        "`explained_variance_excluded_tokens`.",
    )
    explained_variance_bootstrap: int = Field(
        default=DEFAULT_BOOTSTRAP,
        title="Explained Variance Bootstrap Replicates",
        description="Online Poisson-bootstrap replicates behind `explained_variance_ci` "
        "(resampling unit: the eval context, numbered by its position in the eval stream, so "
        "two SAEs evaluated with the same config on the same model and data are paired). "
        "0 turns intervals off.",
    )
    explained_variance_ci_level: float = Field(
        default=DEFAULT_CI_LEVEL,
        title="Explained Variance Interval Level",
        description="Coverage of the bootstrap interval `explained_variance_ci` (the normal "
        "interval: estimate ± z·sd of the replicates).",
    )
    explained_variance_seed: int = Field(
        default=0,
        title="Explained Variance Bootstrap Seed",
        description="Seed of the bootstrap weights; pair two results only if they share it.",
    )

    @field_validator("explained_variance_exclude_norm_above")
    @classmethod
    def _positive_threshold(cls, value: float | None) -> float | None:
        return check_norm_threshold(value)

    @field_validator("explained_variance_definition")
    @classmethod
    def _known_definition(cls, value: str) -> str:
        return check_definition_name(value)

    @field_validator("explained_variance_report")
    @classmethod
    def _known_report(cls, value: list[str]) -> list[str]:
        return check_report_names(value)

    @field_validator("explained_variance_bootstrap")
    @classmethod
    def _bootstrap(cls, value: int) -> int:
        return check_bootstrap(value)

    @field_validator("explained_variance_ci_level")
    @classmethod
    def _level(cls, value: float) -> float:
        return check_ci_level(value)

    @field_validator("explained_variance_seed")
    @classmethod
    def _seed(cls, value: int) -> int:
        return check_seed(value)


_MAPPINGS = {
    "explained_variance_by_definition",
    "explained_variance_ci",
    "explained_variance_replicates",
    "explained_variance_provenance",
    "explained_variance_ci_note",
}


@dataclass
class FVUReconstructionQualityMetrics(ReconstructionQualityMetrics):
    """SAEBench's reconstruction metrics plus the definition used, every reported value
    and its bootstrap interval."""

    explained_variance_definition: str = Field(
        default=DEFAULT_DEFINITION,
        title="Explained Variance Definition",
        description="Name of the FVU definition behind `explained_variance`.",
    )
    explained_variance_by_definition: dict[str, float] = Field(
        default_factory=dict,
        title="Explained Variance by Definition",
        description="{definition name: 1 − FVU} for the selected definition and "
        "`explained_variance_report`, on the same tokens.",
    )
    explained_variance_excluded_tokens: int = Field(
        default=0,
        title="Tokens Excluded from Explained Variance",
        description="Tokens left out of explained variance by "
        "`explained_variance_exclude_norm_above` (0 when unset).",
    )
    explained_variance_ci: dict[str, list[float] | None] = Field(
        default_factory=dict,
        title="Explained Variance Interval",
        description="{definition: [low, high]}: bootstrap interval of 1 − FVU (estimate ± "
        "z·sd of the replicates); null where none can be given (see "
        "`explained_variance_ci_note`).",
    )
    explained_variance_ci_note: dict[str, str] = Field(
        default_factory=dict,
        title="Explained Variance Interval Note",
        description="{definition: why its interval is null}: fewer than two eval contexts, "
        "or replicates that are not all finite.",
    )
    explained_variance_ci_level: float | None = Field(
        default=None, title="Interval Level", description="Coverage of `explained_variance_ci`."
    )
    explained_variance_bootstrap: int = Field(
        default=0, title="Bootstrap Replicates", description="B behind the intervals (0: none)."
    )
    explained_variance_bootstrap_seed: int | None = Field(
        default=None, title="Bootstrap Seed", description="Seed of the bootstrap weights."
    )
    explained_variance_replicates: dict[str, list[float | None]] = Field(
        default_factory=dict,
        title="Explained Variance Replicates",
        description="{definition: the B bootstrap values of 1 − FVU}, for paired comparisons "
        "(`sae-fvu compare A.json B.json`).",
    )
    explained_variance_provenance: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        title="Explained Variance Provenance",
        description="{definition: tokens counted, eval batches and their size in tokens (the "
        "batch-centred definitions depend on it), input dtypes, bootstrap settings, units "
        "fingerprint}.",
    )
    explained_variance_note: str | None = Field(
        default=None,
        title="Explained Variance Note",
        description="Why explained variance is NaN, when it is (NaN/inf reconstructions, every "
        "token excluded).",
    )

    # SAEBench keeps metrics flat; the mappings here are tables of scalars.
    @model_validator(mode="after")
    @classmethod
    def validate_dict(cls, data: Any) -> Any:
        for name, value in asdict(data).items():
            if isinstance(value, dict) and name not in _MAPPINGS:
                raise ValueError(f"Metric {name!r} must be a scalar, got a dict.")
        return data


@dataclass
class FVUCoreMetricCategories(CoreMetricCategories):
    reconstruction_quality: FVUReconstructionQualityMetrics = Field(
        title="Reconstruction Quality",
        description="Metrics related to how well the SAE reconstructs the original activation",
    )


@dataclass
class FVUCoreEvalOutput(CoreEvalOutput):
    """SAEBench's core eval output with the FVU definition in config and metrics."""

    eval_config: FVUCoreEvalConfig
    eval_result_metrics: FVUCoreMetricCategories


def output_json_schema() -> dict[str, Any]:
    """JSON schema of :class:`FVUCoreEvalOutput` (shipped as ``schemas/...json``)."""
    return TypeAdapter(FVUCoreEvalOutput).json_schema()
