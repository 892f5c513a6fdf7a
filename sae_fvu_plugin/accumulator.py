"""Streaming, mergeable FVU with bootstrap intervals: :class:`FVUAccumulator`.

It only stores, merges and calls: the statistics and formulas live in :mod:`.stats`, the
bootstrap replicates in :mod:`.bootstrap`.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from .bootstrap import (
    Replicates,
    batch_replicates,
    merge_replicates,
    normal_interval,
    percentile_interval,
    poisson_weights,
    unit_hash,
)
from .definitions import DEFINITIONS, FVUDefinition, check_definition
from .functional import check_pair
from .stats import FVUState, FVUWarning, batch_state, compute_fvu, merge_states, ratio_key

_FORMAT = 2
_MASK64 = (1 << 64) - 1


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

    ``bootstrap=B`` (> 0) keeps B online Poisson-bootstrap replicates (see
    :mod:`sae_fvu_plugin.bootstrap`) for :meth:`confidence_interval` and :meth:`compare`;
    ``seed`` keys their weights. Resampling units: ``update(..., units=...)``, else each row
    of a 3-D (batch, seq, d) input, or each token of a 2-D input, numbered in update order
    (per process; under torch.distributed pass global ``units``).

    Threads: one accumulator may be updated from several threads (updates are serialised
    by a lock; none is lost). ``merge(self)`` and a second ``all_reduce`` are refused —
    both would count tokens twice.

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
        if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
            raise ValueError(
                f"bootstrap must be a non-negative int (replicates), got {bootstrap!r}."
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
        self.bootstrap = bootstrap
        self.seed = seed
        self._lock = threading.RLock()
        self.reset()

    # ------------------------------------------------------------------- basics

    def reset(self) -> None:
        with self._lock:
            self._state: FVUState | None = None
            self._reps: Replicates | None = None
            self._next_unit = 0
            self._unit_hash = 0
            self._reduced = False
            self._dtypes: set[str] = set()
            self._batch_tokens: list[int] = []

    @property
    def d(self) -> int | None:
        """Width of the activations seen so far (None before the first token)."""
        return None if self._state is None else self._state.d

    @property
    def n_tokens(self) -> int:
        return 0 if self._state is None else int(self._state.n)

    @property
    def n_batches(self) -> int:
        return 0 if self._state is None else self._state.n_batches

    def _default_units(self, x: torch.Tensor) -> torch.Tensor:
        """Row ids of a 3-D input (token ids of a 2-D one), numbered in update order."""
        import torch.distributed as dist

        shape = x.shape[:-1]
        n_units = shape[0] if x.ndim >= 3 else int(torch.tensor(shape).prod()) if shape else 1
        base = self._next_unit
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            base += dist.get_rank() << 40  # distinct per rank; pass units= to pair across runs
        ids = torch.arange(base, base + n_units, dtype=torch.int64)
        self._next_unit += n_units
        if x.ndim >= 3:
            ids = ids.view(-1, *([1] * (len(shape) - 1))).expand(*shape)
        return ids.reshape(-1)

    def _units(self, x: torch.Tensor, units: Any) -> torch.Tensor:
        if units is None:
            return self._default_units(x)
        if (
            not isinstance(units, torch.Tensor)
            or units.is_floating_point()
            or units.dtype == torch.bool
        ):
            raise TypeError(
                f"units must be an integer tensor (one id per token, or per row of a 3-D input), "
                f"got {getattr(units, 'dtype', type(units).__name__)}."
            )
        shape = x.shape[:-1]
        if units.shape == shape:
            return units.reshape(-1).to("cpu", torch.int64)
        if x.ndim >= 3 and units.shape == shape[:1]:
            return (
                units.to("cpu", torch.int64)
                .view(-1, *([1] * (len(shape) - 1)))
                .expand(*shape)
                .reshape(-1)
            )
        raise ValueError(
            f"units has shape {tuple(units.shape)}; expected x.shape[:-1] = {tuple(shape)} (one id "
            f"per token) or ({shape[0]},) (one per row)."
        )

    def update(
        self,
        x: torch.Tensor,
        x_hat: torch.Tensor,
        mask: torch.Tensor | None = None,
        units: torch.Tensor | None = None,
    ) -> None:
        """Add one eval batch: ``x``, ``x_hat`` of shape (..., d), ``mask`` keeps tokens,
        ``units`` (ints, per token or per row of a 3-D input) name the bootstrap units.

        The reduction runs on ``x``'s device; only O(d) numbers (O(B d) with the bootstrap)
        move to the CPU. A batch with no unmasked token is skipped (not counted as a
        batch). NaN/inf raises ``ValueError`` and leaves the state unchanged.
        """
        with self._lock:
            if self._reduced:
                raise RuntimeError(
                    "This accumulator was all_reduce'd: it holds every rank's tokens, and "
                    "another update followed by all_reduce would count them again. Call "
                    "reset() to start a new evaluation."
                )
            xs, hs, keep = check_pair(x, x_hat, mask)
            if self._state is not None and xs.shape[1] != self._state.d:
                raise ValueError(
                    f"x has width d={xs.shape[1]} but this accumulator holds d={self._state.d}; "
                    "use one accumulator per hook (or call reset())."
                )
            uid = self._units(x, units) if self.bootstrap else None
            if xs.shape[0] == 0 or (keep is not None and not bool(keep.any())):
                return
            part = batch_state(xs, hs, self.keys, keep=keep)
            reps = None
            if self.bootstrap:
                assert uid is not None
                rows = None if keep is None else keep.nonzero().squeeze(1)
                xk = xs if rows is None else xs.index_select(0, rows)
                hk = hs if rows is None else hs.index_select(0, rows)
                uk = uid if rows is None else uid[rows.cpu()]
                x64 = xk.to(torch.float64)
                reps = batch_replicates(
                    x64, x64 - hk.to(torch.float64), uk, self._weights, self.keys, self.bootstrap
                )
                self._unit_hash = (self._unit_hash + unit_hash(uk)) & _MASK64
            self._state = part if self._state is None else merge_states(self._state, part)
            if reps is not None:
                self._reps = reps if self._reps is None else merge_replicates(self._reps, reps)
            self._dtypes.add(str(x.dtype).removeprefix("torch."))
            self._batch_tokens.append(int(part.n))

    def _weights(self, units: torch.Tensor) -> torch.Tensor:
        return poisson_weights(self.seed, units, self.bootstrap)

    def merge(self, other: FVUAccumulator) -> FVUAccumulator:
        """Fold ``other`` (disjoint tokens, same definitions and bootstrap) into this one;
        returns self. ``acc.merge(acc)`` is refused (it would double-count)."""
        if not isinstance(other, FVUAccumulator):
            raise TypeError(f"can only merge an FVUAccumulator, got {type(other).__name__}.")
        if other is self:
            raise ValueError(
                "acc.merge(acc) would count every token twice; merge accumulators that saw "
                "disjoint tokens."
            )
        if other.definitions != self.definitions:
            raise ValueError(
                f"Cannot merge accumulators tracking {list(other.definitions)} into one "
                f"tracking {list(self.definitions)}: build both with the same definitions."
            )
        if (other.bootstrap, other.seed) != (self.bootstrap, self.seed):
            raise ValueError(
                f"Cannot merge an accumulator with bootstrap={other.bootstrap}, seed={other.seed} "
                f"into one with bootstrap={self.bootstrap}, seed={self.seed}."
            )
        with self._lock, other._lock:
            if other._state is None:
                return self
            if self._state is not None and self._state.d != other._state.d:
                raise ValueError(f"Cannot merge widths d={other._state.d} into d={self._state.d}.")
            self._state = (
                _copy(other._state)
                if self._state is None
                else merge_states(self._state, other._state)
            )
            if other._reps is not None:
                theirs = _copy_reps(other._reps, self.keys)
                self._reps = theirs if self._reps is None else merge_replicates(self._reps, theirs)
            self._unit_hash = (self._unit_hash + other._unit_hash) & _MASK64
            self._dtypes |= other._dtypes
            self._batch_tokens += other._batch_tokens
        return self

    # -------------------------------------------------------------------- results

    def compute(self) -> dict[str, float]:
        """{name: FVU}. Raises ``ValueError`` if no token was accumulated."""
        with self._lock:
            if self._state is None:
                raise ValueError(
                    "No tokens were accumulated (no update, or every batch was empty or "
                    "fully masked); FVU is undefined. Feed at least one unmasked token."
                )
            return {n: compute_fvu(d, self._state) for n, d in self.definitions.items()}

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
            if self._reps is None:
                raise ValueError("No tokens were accumulated; there are no replicates yet.")
            out = {n: torch.empty(self.bootstrap, dtype=torch.float64) for n in self.names}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FVUWarning)
                for i in range(self.bootstrap):
                    state = self._reps.state(i)
                    for name, defn in self.definitions.items():
                        out[name][i] = compute_fvu(defn, state) if state.n > 0 else math.nan
            return out

    def confidence_interval(
        self,
        level: float = 0.95,
        method: str = "normal",
        replicates: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, tuple[float, float]]:
        """{name: (low, high)}: the bootstrap interval of FVU at ``level`` (for explained
        variance: (1 − high, 1 − low)). ``method="normal"`` (default): estimate ± z·sd of
        the replicates, the better calibrated in our simulations (see
        :func:`~sae_fvu_plugin.bootstrap.normal_interval`); ``"percentile"``: the replicate
        quantiles. ``replicates``: :meth:`bootstrap_replicates` output, when already at hand."""
        _check_level(level)
        reps = self.bootstrap_replicates() if replicates is None else replicates
        if method == "percentile":
            return {n: percentile_interval(v, level) for n, v in reps.items()}
        if method != "normal":
            raise ValueError(f"method must be 'normal' or 'percentile', got {method!r}.")
        point = self.compute()
        return {n: normal_interval(point[n], v, level) for n, v in reps.items()}

    def compare(
        self, other: FVUAccumulator, level: float = 0.95, method: str = "normal"
    ) -> dict[str, tuple[float, float, float]]:
        """{name: (low, high, estimate)} of FVU(self) − FVU(other) on the same units: the
        interval of the paired replicate differences. Raises :class:`NotPairedError` when
        the two did not see the same units with the same seed and B."""
        _check_level(level)
        why = self.pairing_problem(other)
        if why:
            raise NotPairedError(f"The two accumulators are not paired: {why}.")
        mine, theirs = self.bootstrap_replicates(), other.bootstrap_replicates()
        a, b = self.compute(), other.compute()
        out = {}
        for name in self.names:
            if name not in theirs:
                continue
            diff, est = mine[name] - theirs[name], a[name] - b[name]
            if method == "percentile":
                lo, hi = percentile_interval(diff, level)
            else:
                lo, hi = normal_interval(est, diff, level)
            out[name] = (lo, hi, est)
        return out

    def pairing_problem(self, other: FVUAccumulator) -> str:
        """Why replicates of ``self`` and ``other`` cannot be paired ('' if they can)."""
        if not self.bootstrap or not other.bootstrap:
            return "both need bootstrap=B > 0"
        if self.bootstrap != other.bootstrap:
            return f"B differs ({self.bootstrap} vs {other.bootstrap})"
        if self.seed != other.seed:
            return f"seed differs ({self.seed} vs {other.seed})"
        if self.n_tokens != other.n_tokens or self._unit_hash != other._unit_hash:
            return (
                f"they saw different units/tokens ({self.n_tokens} vs {other.n_tokens} tokens, "
                f"unit fingerprints {self._unit_hash:x} vs {other._unit_hash:x})"
            )
        return ""

    def provenance(self) -> dict[str, Any]:
        """Tokens counted, eval batches, tokens per batch, input dtypes, bootstrap settings."""
        sizes = self._batch_tokens
        return {
            "tokens": self.n_tokens,
            "batches": self.n_batches,
            "batch_tokens_min": min(sizes) if sizes else 0,
            "batch_tokens_max": max(sizes) if sizes else 0,
            "input_dtypes": sorted(self._dtypes),
            "bootstrap": self.bootstrap,
            "seed": self.seed,
            "units_fingerprint": f"{self._unit_hash:016x}",
        }

    # -- persistence and distribution -------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain, ``torch.save``-able state (definitions recorded to catch mix-ups)."""
        with self._lock:
            return {
                "format": _FORMAT,
                "definitions": {n: d.model_dump() for n, d in self.definitions.items()},
                "d": self.d,
                "state": None if self._state is None else self._state.to_vector(),
                "bootstrap": self.bootstrap,
                "seed": self.seed,
                "replicates": None if self._reps is None else self._reps.to_vector(),
                "next_unit": self._next_unit,
                "unit_hash": self._unit_hash,
                "dtypes": sorted(self._dtypes),
                "batch_tokens": list(self._batch_tokens),
                "reduced": self._reduced,
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output after validating every field; a state built
        for other definitions or bootstrap settings, or tampered, is refused and this
        accumulator is left unchanged."""
        loaded = _validated(state, self)
        with self._lock:
            (
                self._state,
                self._reps,
                self._next_unit,
                self._unit_hash,
                self._dtypes,
                self._batch_tokens,
                self._reduced,
            ) = loaded

    def all_reduce(self, group: Any = None) -> None:
        """Merge the states of every rank of ``group`` (``torch.distributed``) in rank
        order, so each rank ends with the identical, combined state. Without an
        initialised process group this is a no-op (one process is a world of one).

        The ranks first agree on definitions, width, bootstrap and seed; a mismatch is the
        same clear ``ValueError`` on every rank. A second ``all_reduce`` is refused."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        with self._lock:
            if self._reduced:
                raise RuntimeError(
                    "all_reduce was already called on this accumulator: its state holds every "
                    "rank's tokens and a second reduction would count them again. Call reset() "
                    "to start over."
                )
            world = dist.get_world_size(group)
            descriptor = {
                "definitions": {n: d.model_dump() for n, d in self.definitions.items()},
                "d": self.d,
                "bootstrap": self.bootstrap,
                "seed": self.seed,
            }
            everyone: list[Any] = [None] * world
            dist.all_gather_object(everyone, descriptor, group=group)
            widths = {e["d"] for e in everyone} - {None}
            same = all(
                (e["definitions"], e["bootstrap"], e["seed"])
                == (everyone[0]["definitions"], everyone[0]["bootstrap"], everyone[0]["seed"])
                for e in everyone
            )
            if not same or len(widths) > 1:
                raise ValueError(
                    "all_reduce: the ranks' accumulators differ — "
                    + "; ".join(
                        f"rank {i}: definitions {list(e['definitions'])}, d={e['d']}, "
                        f"bootstrap={e['bootstrap']}, seed={e['seed']}"
                        for i, e in enumerate(everyone)
                    )
                    + ". Build the same accumulator on every rank."
                )
            payload = self.state_dict()
            states: list[Any] = [None] * world
            dist.all_gather_object(states, payload, group=group)
            merged = FVUAccumulator(
                list(self.definitions.values()), bootstrap=self.bootstrap, seed=self.seed
            )
            merged.definitions = dict(self.definitions)
            merged.names = list(self.names)
            merged.keys = list(self.keys)
            for s in states:
                part = FVUAccumulator(
                    list(self.definitions.values()), bootstrap=self.bootstrap, seed=self.seed
                )
                part.definitions, part.names, part.keys = (
                    merged.definitions,
                    merged.names,
                    merged.keys,
                )
                part.load_state_dict(s)
                if part._state is not None:
                    merged.merge(part)
            self._state, self._reps = merged._state, merged._reps
            self._unit_hash, self._dtypes = merged._unit_hash, merged._dtypes
            self._batch_tokens = merged._batch_tokens
            self._reduced = True


def _check_level(level: float) -> None:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {level!r}.")


def _copy(s: FVUState) -> FVUState:
    return FVUState.from_vector(s.to_vector(), s.d, sorted(s.ratio_sums))


def _copy_reps(r: Replicates, keys: list[str]) -> Replicates:
    return Replicates.from_vector(r.to_vector(), r.d, r.b, keys)


def _validated(state: Any, acc: FVUAccumulator) -> tuple[Any, ...]:
    """The parts of a state_dict after checking keys, formats, shapes, dtypes,
    finiteness and counts (a ``ValueError`` naming the problem otherwise)."""

    def bad(msg: str) -> ValueError:
        return ValueError(f"Not a valid FVUAccumulator state_dict: {msg}. Nothing was loaded.")

    if not isinstance(state, dict):
        raise bad(f"expected a dict, got {type(state).__name__}")
    if state.get("format") != _FORMAT:
        raise bad(f"format {state.get('format')!r}, this version reads {_FORMAT}")
    need = {
        "definitions",
        "d",
        "state",
        "bootstrap",
        "seed",
        "replicates",
        "next_unit",
        "unit_hash",
        "dtypes",
        "batch_tokens",
        "reduced",
    }
    missing = need - set(state)
    if missing:
        raise bad(f"missing keys {sorted(missing)}")
    mine = {n: d.model_dump() for n, d in acc.definitions.items()}
    if state["definitions"] != mine:
        raise ValueError(
            f"This state was saved for definitions {list(state['definitions'])} but the "
            f"accumulator tracks {list(mine)} (or a same-named definition changed); build the "
            "accumulator with the saved definitions."
        )
    if (state["bootstrap"], state["seed"]) != (acc.bootstrap, acc.seed):
        raise ValueError(
            f"This state was saved with bootstrap={state['bootstrap']}, seed={state['seed']}; the "
            f"accumulator has bootstrap={acc.bootstrap}, seed={acc.seed}."
        )
    vec, d = state["state"], state["d"]
    if vec is None:
        if state["replicates"] is not None:
            raise bad("replicates without a state")
        return (
            None,
            None,
            int(state["next_unit"]),
            int(state["unit_hash"]) & _MASK64,
            set(state["dtypes"]),
            list(state["batch_tokens"]),
            bool(state["reduced"]),
        )
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise bad(f"width d={d!r}")
    expected = 4 + len(acc.keys) + len(FVUState._VECTORS) * d
    if (
        not isinstance(vec, torch.Tensor)
        or vec.dtype != torch.float64
        or vec.ndim != 1
        or vec.numel() != expected
    ):
        raise bad(f"state vector must be float64 of {expected} numbers for d={d}")
    if not bool(torch.isfinite(vec).all()):
        raise bad("state vector holds NaN/inf")
    parsed = FVUState.from_vector(vec.clone(), d, acc.keys)
    if (
        parsed.n <= 0
        or parsed.n != math.floor(parsed.n)
        or parsed.n_batches < 1
        or vec[1] != math.floor(float(vec[1]))
    ):
        raise bad(f"token count {parsed.n} / batch count {float(vec[1])} must be positive integers")
    if (
        bool((parsed.m2_x < 0).any())
        or bool((parsed.m2_r < 0).any())
        or bool((parsed.batch_m2_x < 0).any())
    ):
        raise bad("negative sums of squares")
    reps = None
    if acc.bootstrap:
        rv = state["replicates"]
        size = Replicates.vector_size(d, acc.bootstrap, len(acc.keys))
        if not isinstance(rv, torch.Tensor) or rv.dtype != torch.float64 or rv.numel() != size:
            raise bad(f"replicate vector must be float64 of {size} numbers")
        if not bool(torch.isfinite(rv).all()):
            raise bad("replicate vector holds NaN/inf")
        reps = Replicates.from_vector(rv.clone(), d, acc.bootstrap, acc.keys)
        if bool((reps.n < 0).any()) or bool((reps.n != reps.n.floor()).any()):
            raise bad("replicate token weights must be non-negative integers")
    elif state["replicates"] is not None:
        raise bad("replicates saved for an accumulator without bootstrap")
    nu = state["next_unit"]
    if isinstance(nu, bool) or not isinstance(nu, int) or nu < 0:
        raise bad(f"next_unit {nu!r}")
    sizes = state["batch_tokens"]
    if not isinstance(sizes, list) or any(not isinstance(s, int) or s < 0 for s in sizes):
        raise bad("batch_tokens must be a list of non-negative ints")
    return (
        parsed,
        reps,
        nu,
        int(state["unit_hash"]) & _MASK64,
        set(state["dtypes"]),
        list(sizes),
        bool(state["reduced"]),
    )
