"""Streaming, mergeable FVU with bootstrap intervals: :class:`FVUAccumulator`.

It only stores, merges and calls: the statistics and formulas live in :mod:`.stats`, the
bootstrap replicates in :mod:`.bootstrap`.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from typing import Any

import torch

from .accumulator_state import (
    Tally,
    batch_tally,
    check_bootstrap_settings,
    check_mergeable,
    pairing_problem,
    reduce_tallies,
    validate_state,
)
from .bootstrap import (
    count_default_units,
    default_units,
    given_units,
    intervals,
    paired_intervals,
    poisson_weights,
    replicate_fvus,
)
from .definitions import DEFINITIONS, FVUDefinition, check_definition
from .functional import check_pair
from .stats import compute_fvu, ratio_key


class NotPairedError(ValueError):
    """Two accumulators whose bootstrap replicates cannot be compared pairwise."""


def resolve_definitions(definitions: Any, *, streaming: bool) -> dict[str, FVUDefinition]:
    """{name: definition} from names, ``FVUDefinition`` objects or ``"all"`` (every
    registered definition that streams — the same set everywhere)."""
    if isinstance(definitions, (str, FVUDefinition)):
        definitions = [definitions]
    out: dict[str, FVUDefinition] = {}
    for item in definitions:
        if isinstance(item, FVUDefinition):
            defn = check_definition(item)
            name = DEFINITIONS.name_of(defn) or defn.label()
            out[name] = defn
        elif item == "all":
            for n in DEFINITIONS:
                if DEFINITIONS[n].streamable:
                    out[n] = DEFINITIONS[n]
        elif isinstance(item, str):
            out[item] = check_definition(DEFINITIONS[item])
        else:
            raise TypeError(f"definitions must be names or FVUDefinition objects, got {item!r}.")
    if not out:
        raise ValueError("FVUAccumulator needs at least one definition.")
    if streaming:
        for name, defn in out.items():
            if not defn.streamable:
                raise ValueError(
                    f"Definition {name!r} ({defn.reduce}, centred on the global mean) cannot "
                    "be streamed: each per-token/per-batch ratio needs the global mean of "
                    "all batches before it is formed. Use sae_fvu_plugin.fvu(x, x_hat, "
                    f"{name!r}, batch_ids=...) on the whole data, or center='batch'."
                )
    return out


class FVUAccumulator:
    """Accumulate FVU over eval batches, one :meth:`update` per batch.

    The state is float64 on the CPU, merged with Chan's centred update, so the result
    equals :func:`sae_fvu_plugin.fvu` on the concatenated data (with each token's batch id)
    to float64 rounding, whatever the batch split or merge order.

    ``definitions``: names, :class:`FVUDefinition` objects, or ``"all"`` (every registered
    definition that streams). A per-token / per-batch definition centred on the *global*
    mean cannot stream and is refused here.

    ``bootstrap=B`` (0, or ≥ 2) keeps B online Poisson-bootstrap replicates (see
    :mod:`sae_fvu_plugin.bootstrap`) for :meth:`confidence_interval` and :meth:`compare`;
    ``seed`` (0 ≤ seed < 2⁶³) keys their weights. Resampling units: ``update(...,
    units=...)``, else each row of a 3-D (batch, seq, d) input, or each token of a 2-D
    input, numbered in update order (per process; under torch.distributed pass global
    ``units``).

    Updates are serialised by a lock (none is lost across threads); a refused update
    changes nothing; a second merge of the same tokens, or ``all_reduce``, is refused.

    >>> acc = FVUAccumulator(["fvu_a", "fvu_b"])
    >>> acc.update(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [1.0]]))
    >>> acc.compute()
    {'fvu_a': 1.0, 'fvu_b': 1.0}
    """

    def __init__(
        self,
        definitions: str | FVUDefinition | Sequence[str | FVUDefinition] = ("fvu_a",),
        *,
        bootstrap: int = 0,
        seed: int = 0,
    ) -> None:
        self.definitions: dict[str, FVUDefinition] = resolve_definitions(
            definitions, streaming=True
        )
        self.names: list[str] = list(self.definitions)
        self.keys: list[str] = sorted(
            {k for k in map(ratio_key, self.definitions.values()) if k is not None}
        )
        check_bootstrap_settings(bootstrap, seed)
        self.bootstrap, self.seed = bootstrap, seed
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._tally = Tally(sources={uuid.uuid4().hex})

    @property
    def d(self) -> int | None:
        """Width of the activations seen so far (None before the first token)."""
        return None if self._tally.state is None else self._tally.state.d

    n_tokens = property(lambda self: self._tally.n_tokens, doc="Tokens counted so far.")
    n_batches = property(lambda self: self._tally.n_batches, doc="Batches counted so far.")
    n_units = property(lambda self: self._tally.n_units, doc="Bootstrap units counted so far.")

    def _header(self) -> dict[str, Any]:
        return {
            "definitions": {n: d.model_dump() for n, d in self.definitions.items()},
            "bootstrap": self.bootstrap,
            "seed": self.seed,
        }

    def update(
        self,
        x: torch.Tensor,
        x_hat: torch.Tensor,
        mask: torch.Tensor | None = None,
        units: torch.Tensor | None = None,
    ) -> None:
        """Add one eval batch: ``x``, ``x_hat`` of shape (..., d), ``mask`` keeps tokens,
        ``units`` (ints, per token or per row of a 3-D input) name the bootstrap units.
        Reduced on ``x``'s device (O(B d) numbers move to the CPU). A batch with no
        unmasked token is skipped; NaN/inf raises ``ValueError`` and changes nothing."""
        with self._lock:
            t = self._tally
            xs, hs, keep = check_pair(x, x_hat, mask)
            t.check_update(xs.shape[1])
            uid = None
            if self.bootstrap:
                uid = default_units(x, t.next_unit) if units is None else given_units(x, units)
            step = count_default_units(x) if units is None and self.bootstrap else 0
            if xs.shape[0] == 0 or (keep is not None and not bool(keep.any())):
                t.next_unit += step
                return
            part = batch_tally(xs, hs, keep, uid, self.keys, self._weights, self.bootstrap)
            part.dtypes = {str(x.dtype).removeprefix("torch.")}
            # everything above may raise (NaN/inf, bad units); only now does the state change
            merged = t.merged(part)
            merged.next_unit = t.next_unit + step
            self._tally = merged

    def _weights(self, units: torch.Tensor) -> torch.Tensor:
        return poisson_weights(self.seed, units, self.bootstrap)

    def merge(self, other: FVUAccumulator) -> FVUAccumulator:
        """Fold ``other`` (disjoint tokens, same definitions and bootstrap) into this one;
        returns self. Merging itself, or an accumulator whose tokens this one already
        holds (a second merge of the same one), is refused."""
        if not isinstance(other, FVUAccumulator):
            raise TypeError(f"can only merge an FVUAccumulator, got {type(other).__name__}.")
        check_mergeable(other._header(), self._header())
        with self._lock, other._lock:
            self._tally = self._tally.merged(other._tally)
        return self

    def compute(self) -> dict[str, float]:
        """{name: FVU}. Raises ``ValueError`` if no token was accumulated."""
        with self._lock:
            if self._tally.state is None:
                raise ValueError(
                    "No tokens were accumulated (no update, or every batch was empty or "
                    "fully masked); FVU is undefined. Feed at least one unmasked token."
                )
            return {n: compute_fvu(d, self._tally.state) for n, d in self.definitions.items()}

    def explained_variance(self) -> dict[str, float]:
        """{name: 1 − FVU}."""
        return {n: 1.0 - v for n, v in self.compute().items()}

    def bootstrap_replicates(self) -> dict[str, torch.Tensor]:
        """{name: (B,) FVU of every bootstrap replicate} (NaN where a replicate is
        degenerate, e.g. zero variance)."""
        with self._lock:
            if not self.bootstrap:
                raise ValueError(
                    "This accumulator keeps no replicates; build it with bootstrap=B > 0."
                )
            if self._tally.reps is None:
                raise ValueError("No tokens were accumulated; there are no replicates yet.")
            return replicate_fvus(self._tally.reps, self.definitions)

    def confidence_interval(
        self,
        level: float = 0.95,
        method: str = "normal",
        replicates: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, tuple[float, float]]:
        """{name: (low, high)}: the bootstrap interval of FVU at ``level`` (explained
        variance: (1 − high, 1 − low)); ``method``: see :func:`~sae_fvu_plugin.bootstrap.
        intervals`; ``replicates``: :meth:`bootstrap_replicates` output, when at hand."""
        reps = self.bootstrap_replicates() if replicates is None else replicates
        return intervals(self.compute(), reps, level, method)

    def compare(
        self, other: FVUAccumulator, level: float = 0.95, method: str = "normal"
    ) -> dict[str, tuple[float, float, float]]:
        """{name: (low, high, estimate)} of FVU(self) − FVU(other) on the same units: the
        interval of the paired replicate differences. Raises :class:`NotPairedError` when
        the two did not see the same units with the same seed and B."""
        why = self.pairing_problem(other)
        if why:
            raise NotPairedError(f"The two accumulators are not paired: {why}.")
        reps = self.bootstrap_replicates(), other.bootstrap_replicates()
        return paired_intervals(self.compute(), other.compute(), *reps, level, method)

    def pairing_problem(self, other: FVUAccumulator) -> str:
        """Why replicates of ``self`` and ``other`` cannot be paired ('' if they can)."""
        return pairing_problem(
            (self.bootstrap, self.seed, self._tally), (other.bootstrap, other.seed, other._tally)
        )

    def provenance(self) -> dict[str, Any]:
        """Tokens counted, eval batches, tokens per batch, input dtypes, bootstrap settings."""
        return self._tally.provenance(self.bootstrap, self.seed)

    def state_dict(self) -> dict[str, Any]:
        """Plain, ``torch.save``-able state (definitions recorded to catch mix-ups)."""
        with self._lock:
            return self._tally.to_dict(self._header())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output after validating every field and their
        agreement; a state built for other definitions or bootstrap settings, or tampered,
        is refused and this accumulator is left unchanged."""
        tally = validate_state(
            state, header=self._header(), keys=self.keys, bootstrap=self.bootstrap
        )
        with self._lock:
            self._tally = tally

    def all_reduce(self, group: Any = None) -> None:
        """Merge every rank's state in rank order (each rank ends identical); a no-op
        without a process group. The ranks first agree on definitions, width, bootstrap and
        seed (else the same ``ValueError`` on every rank); a second call is refused."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        with self._lock:
            self._tally = reduce_tallies(
                self._tally, self._header(), self.keys, self.bootstrap, group
            )
