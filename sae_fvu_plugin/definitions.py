"""Named definitions of the fraction of variance unexplained (FVU).

Notation: evaluated (unmasked) tokens n = 1..N, dimensions i = 1..d, activation x_n,
reconstruction x̂_n, residual r_n = x_n − x̂_n, eval batch b(n) of token n.

A definition is a point on three axes:

* ``center`` — what is subtracted from x before measuring its spread:
  ``global`` μ = mean_n x_n, ``batch`` μ_b = mean of the token's eval batch, ``none`` 0.
* ``center_residual`` — whether the residual's own mean (same scope as ``center``) is
  removed too, r̃_n = r_n − mean(r); otherwise r̃_n = r_n.
* ``reduce`` — how the squares are aggregated, with c_n the centre chosen above:

  ``pooled``     FVU = Σ_n ‖r̃_n‖² / Σ_n ‖x_n − c_n‖²
  ``per_token``  FVU = mean_n ‖r̃_n‖² / ‖x_n − c_n‖²
  ``per_dim``    FVU = mean_i  Σ_n r̃_ni² / Σ_n (x_ni − c_ni)²
  ``per_batch``  FVU = mean_b  Σ_{n∈b} ‖r̃_n‖² / Σ_{n∈b} ‖x_n − c_n‖²

Explained variance is 1 − FVU. ``saebench_0_6`` sits outside the axes: it reproduces
SAEBench 0.6.0's shipped (wrong) formula, see :data:`SAEBENCH_0_6`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Reduce = Literal["pooled", "per_token", "per_dim", "per_batch"]
Center = Literal["global", "batch", "none"]


class UnknownDefinitionError(ValueError):
    """Raised for a definition name that is not in the registry."""


class FVUDefinition(BaseModel):
    """One FVU formula: ``reduce`` × ``center`` × ``center_residual`` (see module doc).

    ``formula="saebench_0_6"`` replaces the axes with SAEBench 0.6.0's shipped formula
    (kept to explain published numbers; it is wrong whenever activations have a mean).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    reduce: Reduce = Field(description="Aggregation: pooled, per_token, per_dim or per_batch.")
    center: Center = Field(description="Centre of x: global mean, eval-batch mean, or none.")
    center_residual: bool = Field(
        default=False, description="Remove the residual's mean (same scope as `center`)."
    )
    formula: Literal["standard", "saebench_0_6"] = Field(
        default="standard",
        description="'standard' follows the three axes; 'saebench_0_6' reproduces SAEBench "
        "0.6.0's explained_variance exactly, bug included.",
    )
    description: str = Field(default="", description="Who reports this definition.")

    @model_validator(mode="after")
    def _check_axes(self) -> FVUDefinition:
        if self.center_residual and self.center == "none":
            raise ValueError(
                "center_residual=True needs center='global' or 'batch' (the residual is "
                "centred over the same scope as x); got center='none'."
            )
        return self

    def label(self) -> str:
        """A name for an unregistered definition: ``reduce/center[/res]`` (or its formula)."""
        if self.formula != "standard":
            return self.formula
        return f"{self.reduce}/{self.center}" + ("/res" if self.center_residual else "")

    @property
    def streamable(self) -> bool:
        """True when one pass over the batches suffices (``FVUAccumulator`` can hold it).

        Per-token and per-batch ratios centred on the *global* mean need that mean before
        the first ratio is formed, so they need two passes over the data.
        """
        return not (self.reduce in ("per_token", "per_batch") and self.center == "global")


_PRESETS: dict[str, FVUDefinition] = {
    "fvu_a": FVUDefinition(
        reduce="pooled",
        center="global",
        description="Ratio of sums around the global mean: conventional R² (sklearn "
        "r2_score multioutput='variance_weighted'); SAELens >= 6.45.1 explained_variance.",
    ),
    "fvu_b": FVUDefinition(
        reduce="per_token",
        center="batch",
        description="Mean of per-token ratios around the eval-batch mean: SAEBench and "
        "SAELens explained_variance_legacy (every published SAEBench number).",
    ),
    "fvu_per_dim": FVUDefinition(
        reduce="per_dim",
        center="global",
        description="Mean over dimensions of per-dimension FVU: sklearn r2_score default "
        "(uniform_average), torchmetrics R2Score.",
    ),
    "fvu_uncentered": FVUDefinition(
        reduce="pooled",
        center="none",
        description="Σ‖r‖² / Σ‖x‖² with no centring (pooled normalized MSE).",
    ),
    "openai_nmse": FVUDefinition(
        reduce="per_token",
        center="none",
        description="Mean of per-token ‖r‖²/‖x‖²: OpenAI sparse_autoencoder "
        "normalized_mean_squared_error.",
    ),
    "sklearn_evs": FVUDefinition(
        reduce="per_dim",
        center="global",
        center_residual=True,
        description="Per-dimension Var(r)/Var(x), uniformly averaged: sklearn "
        "explained_variance_score.",
    ),
    "sparsify": FVUDefinition(
        reduce="per_batch",
        center="batch",
        description="Per eval batch Σ‖r‖²/Σ‖x−μ_b‖², averaged over batches: EleutherAI "
        "sparsify fvu.",
    ),
    "dictionary_learning": FVUDefinition(
        reduce="per_batch",
        center="batch",
        center_residual=True,
        description="Per eval batch ΣVar(r)/ΣVar(x), averaged over batches: "
        "dictionary_learning frac_variance_explained.",
    ),
    "fvu_a_evs": FVUDefinition(
        reduce="pooled",
        center="global",
        center_residual=True,
        description="Ratio of sums with the residual's mean removed: 1 − ΣVar(r)/ΣVar(x) "
        "(torchmetrics ExplainedVariance(multioutput='variance_weighted'), sklearn "
        "explained_variance_score(multioutput='variance_weighted')).",
    ),
    "saebench_0_6": FVUDefinition(
        reduce="per_batch",
        center="none",
        formula="saebench_0_6",
        description="Faithful reproduction of SAEBench 0.6.0's shipped explained_variance "
        "(a bug: 1 − R/(S − (S/d)²)); only for explaining published numbers.",
    ),
}

SAEBENCH_0_6 = _PRESETS["saebench_0_6"]
"""SAEBench 0.6.0 ``get_sparsity_and_variance_metrics`` formula, reproduced exactly.

Per eval batch b (masked tokens only): S_b = mean_n ‖x_n‖², R_b = mean_n ‖r_n‖².
With S = mean_b S_b and R = mean_b R_b, SAEBench reports 1 − R / (S − (S/d)²): it
subtracts the square of the mean *of squares* per dimension, not ‖E[x]‖², so the value is
wrong for activations with a mean and can exceed 1.
"""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")


def check_definition(definition: Any) -> FVUDefinition:
    """``definition`` re-validated: objects made with ``model_construct`` or
    ``model_copy(update=...)`` skip pydantic's checks, so a field like ``center="bogus"``
    would otherwise silently compute the uncentred value."""
    if not isinstance(definition, FVUDefinition):
        raise TypeError(f"definition must be an FVUDefinition, got {type(definition).__name__}.")
    try:
        return FVUDefinition.model_validate(
            {k: getattr(definition, k) for k in FVUDefinition.model_fields}
        )
    except ValidationError as err:
        raise ValueError(f"Invalid FVUDefinition {definition!r}: {err}") from None


class DefinitionRegistry(Mapping[str, FVUDefinition]):
    """Name → :class:`FVUDefinition`. Presets are protected; user names can be added."""

    def __init__(self, presets: Mapping[str, FVUDefinition]) -> None:
        self._defs: dict[str, FVUDefinition] = dict(presets)
        self._presets = frozenset(presets)

    def __getitem__(self, name: str) -> FVUDefinition:
        try:
            return self._defs[name]
        except KeyError:
            raise UnknownDefinitionError(
                f"Unknown explained-variance definition {name!r}. Valid names: "
                f"{', '.join(self._defs)}. Register a new one with "
                "sae_fvu_plugin.register_definition(name, FVUDefinition(...))."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._defs)

    def __len__(self) -> int:
        return len(self._defs)

    @property
    def presets(self) -> tuple[str, ...]:
        return tuple(n for n in self._defs if n in self._presets)

    def register(self, name: str, definition: FVUDefinition, *, overwrite: bool = False) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name == "all":
            raise ValueError(
                f"Definition name {name!r} is not valid: 1-64 letters, digits, '_', '.', '-' "
                "(starting with a letter or '_'); 'all' is reserved."
            )
        definition = check_definition(definition)
        if name in self._presets:
            raise ValueError(f"{name!r} is a built-in preset and cannot be replaced.")
        if name in self._defs and not overwrite and self._defs[name] != definition:
            raise ValueError(
                f"{name!r} is already registered with a different definition; pass "
                "overwrite=True to replace it."
            )
        self._defs[name] = definition

    def unregister(self, name: str) -> None:
        if name in self._presets:
            raise ValueError(f"{name!r} is a built-in preset and cannot be removed.")
        self[name]  # raises the helpful error for unknown names
        del self._defs[name]

    def name_of(self, definition: FVUDefinition) -> str | None:
        """The registered name of a definition equal to ``definition`` (None if none)."""
        for name, d in self._defs.items():
            if d == definition:
                return name
        return None

    def resolve(self, names: str | Sequence[str]) -> list[str]:
        """Expand ``"all"`` (every registered definition that streams — the same set as
        :class:`~sae_fvu_plugin.FVUAccumulator`'s ``"all"``), check every name exists."""
        seq = [names] if isinstance(names, str) else list(names)
        out: list[str] = []
        for name in seq:
            every = [n for n, d in self._defs.items() if d.streamable]
            for n in every if name == "all" else [name]:
                self[n]
                if n not in out:
                    out.append(n)
        return out


DEFINITIONS = DefinitionRegistry(_PRESETS)


def get_definition(name: str | FVUDefinition) -> FVUDefinition:
    """The definition registered under ``name`` (an :class:`FVUDefinition` passes through).

    Raises :class:`UnknownDefinitionError` (a ``ValueError``) listing the valid names.
    """
    if isinstance(name, FVUDefinition):
        return check_definition(name)
    if not isinstance(name, str):
        raise TypeError(f"definition must be a name or an FVUDefinition, got {name!r}.")
    return DEFINITIONS[name]


def register_definition(name: str, definition: FVUDefinition, *, overwrite: bool = False) -> None:
    """Add a user definition to :data:`DEFINITIONS` (presets cannot be replaced).

    >>> register_definition("pooled_batch", FVUDefinition(reduce="pooled", center="batch"))
    """
    DEFINITIONS.register(name, definition, overwrite=overwrite)
