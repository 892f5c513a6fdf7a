"""What an :class:`~sae_fvu_plugin.accumulator.FVUAccumulator` has counted, as plain data:
the :class:`Tally` (sufficient statistics, bootstrap replicates, unit bookkeeping), its
pure merge, its saved form and the validation of a saved form. The accumulator class only
holds a tally behind a lock and calls these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .bootstrap import POISSON_MAX, Replicates, batch_replicates, merge_replicates, unit_hash
from .stats import FVUState, batch_state, merge_states

FORMAT = 2
MASK64 = (1 << 64) - 1
FLOAT_DTYPES = {"float16", "bfloat16", "float32", "float64"}
KEYS = (
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
)


@dataclass
class Tally:
    """Everything counted so far; ``sources`` names the accumulators whose tokens it holds
    (a second merge of the same one would count its tokens twice)."""

    state: FVUState | None = None
    reps: Replicates | None = None
    next_unit: int = 0
    unit_hash: int = 0
    reduced: bool = False
    dtypes: set[str] = field(default_factory=set)
    batch_tokens: list[int] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)
    n_units: int = 0  # distinct bootstrap units counted (0 without the bootstrap)

    @property
    def n_tokens(self) -> int:
        return 0 if self.state is None else int(self.state.n)

    @property
    def n_batches(self) -> int:
        return 0 if self.state is None else self.state.n_batches

    def merged(self, other: Tally) -> Tally:
        """This tally and ``other`` (disjoint tokens) combined: Chan merge of the
        statistics and of every replicate; the unit fingerprints add."""
        if self.sources & other.sources:
            raise ValueError(
                "This accumulator already holds the other's tokens (it is the same one, or was "
                "merged in before); merging again would count every token twice. Merge each "
                "accumulator of disjoint tokens once."
            )
        if other.state is None:
            return self
        if self.state is not None and self.state.d != other.state.d:
            raise ValueError(f"Cannot merge widths d={other.state.d} into d={self.state.d}.")
        state = other.state if self.state is None else merge_states(self.state, other.state)
        reps = self.reps
        if other.reps is not None:
            reps = other.reps if reps is None else merge_replicates(reps, other.reps)
        return Tally(
            state=state,
            reps=reps,
            next_unit=self.next_unit,
            unit_hash=(self.unit_hash + other.unit_hash) & MASK64,
            reduced=self.reduced,
            dtypes=self.dtypes | other.dtypes,
            batch_tokens=self.batch_tokens + other.batch_tokens,
            sources=self.sources | other.sources,
            n_units=self.n_units + other.n_units,
        )

    def check_update(self, width: int) -> None:
        """Refuse an update after ``all_reduce`` or of another width."""
        if self.reduced:
            raise RuntimeError(
                "This accumulator was all_reduce'd: it holds every rank's tokens, and another "
                "update followed by all_reduce would count them again. Call reset() to start a "
                "new evaluation."
            )
        if self.state is not None and width != self.state.d:
            raise ValueError(
                f"x has width d={width} but this accumulator holds d={self.state.d}; use one "
                "accumulator per hook (or call reset())."
            )

    def provenance(self, bootstrap: int, seed: int) -> dict[str, Any]:
        """Tokens counted, eval batches, tokens per batch, input dtypes, bootstrap settings
        and ``empty_replicates``: replicates whose Poisson weights drew no unit at all
        (probability e^-U each with U units; their FVU is undefined and the interval is
        conditional on a non-empty resample)."""
        sizes = self.batch_tokens
        empty = 0 if self.reps is None else int((self.reps.n == 0).sum())
        return {
            "tokens": self.n_tokens,
            "batches": self.n_batches,
            "batch_tokens_min": min(sizes) if sizes else 0,
            "batch_tokens_max": max(sizes) if sizes else 0,
            "input_dtypes": sorted(self.dtypes),
            "bootstrap": bootstrap,
            "seed": seed,
            "units_fingerprint": f"{self.unit_hash:016x}",
            "empty_replicates": empty,
        }

    def to_dict(self, header: dict[str, Any]) -> dict[str, Any]:
        """The saved form (``header``: definitions, bootstrap, seed)."""
        return {
            "format": FORMAT,
            **header,
            "d": None if self.state is None else self.state.d,
            "state": None if self.state is None else self.state.to_vector(),
            "replicates": None if self.reps is None else self.reps.to_vector(),
            "next_unit": self.next_unit,
            "unit_hash": self.unit_hash,
            "dtypes": sorted(self.dtypes),
            "batch_tokens": list(self.batch_tokens),
            "reduced": self.reduced,
            "sources": sorted(self.sources),
            "n_units": self.n_units,
        }


def _bad(msg: str) -> ValueError:
    return ValueError(f"Not a valid FVUAccumulator state_dict: {msg}. Nothing was loaded.")


def validate_state(saved: Any, *, header: dict[str, Any], keys: list[str], bootstrap: int) -> Tally:
    """The :class:`Tally` of a saved form after checking every field and their agreement
    (token count = Σ batch_tokens, batch count = their number, replicate shapes, finite,
    non-negative sums of squares); a ``ValueError`` naming the problem otherwise."""
    if not isinstance(saved, dict):
        raise _bad(f"expected a dict, got {type(saved).__name__}")
    if saved.get("format") != FORMAT:
        raise _bad(f"format {saved.get('format')!r}, this version reads {FORMAT}")
    missing = set(KEYS) - set(saved)
    if missing:
        raise _bad(f"missing keys {sorted(missing)}")
    if saved["definitions"] != header["definitions"]:
        raise ValueError(
            f"This state was saved for definitions {list(saved['definitions'])} but the "
            f"accumulator tracks {list(header['definitions'])} (or a same-named definition "
            "changed); build the accumulator with the saved definitions."
        )
    if (saved["bootstrap"], saved["seed"]) != (header["bootstrap"], header["seed"]):
        raise ValueError(
            f"This state was saved with bootstrap={saved['bootstrap']}, seed={saved['seed']}; the "
            f"accumulator has bootstrap={header['bootstrap']}, seed={header['seed']}."
        )
    tally = Tally(**_bookkeeping(saved))
    if saved["state"] is None:
        if saved["replicates"] is not None or tally.batch_tokens:
            raise _bad("replicates or batch_tokens without a state")
        return tally
    tally.state = _state(saved["state"], saved["d"], keys)
    if tally.state.n != sum(tally.batch_tokens) or tally.state.n_batches != len(tally.batch_tokens):
        raise _bad(
            f"token count {tally.state.n:g} and batch count {tally.state.n_batches} disagree with "
            f"batch_tokens (Σ = {sum(tally.batch_tokens)} over {len(tally.batch_tokens)} batches)"
        )
    if bootstrap:
        tally.reps = _replicates(saved["replicates"], tally.state.d, bootstrap, keys)
        if bool((tally.reps.n > tally.state.n * POISSON_MAX).any()):
            raise _bad("replicate weights exceed any Poisson(1) draw over the counted tokens")
    elif saved["replicates"] is not None:
        raise _bad("replicates saved for an accumulator without bootstrap")
    return tally


def _int_field(saved: dict[str, Any], name: str, low: int, high: int) -> int:
    value = saved[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        raise _bad(f"{name} must be an int in [{low}, {high}), got {value!r}")
    return value


def _bookkeeping(saved: dict[str, Any]) -> dict[str, Any]:
    next_unit = _int_field(saved, "next_unit", 0, 1 << 62)
    unit_hash = _int_field(saved, "unit_hash", 0, 1 << 64)
    dtypes = saved["dtypes"]
    if not isinstance(dtypes, list) or not set(dtypes) <= FLOAT_DTYPES:
        raise _bad(f"dtypes must be a list of {sorted(FLOAT_DTYPES)}, got {dtypes!r}")
    sizes = saved["batch_tokens"]
    if not isinstance(sizes, list) or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes
    ):
        raise _bad("batch_tokens must be a list of positive ints")
    if not isinstance(saved["reduced"], bool):
        raise _bad(f"reduced must be True or False, got {saved['reduced']!r}")
    sources = saved.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise _bad("sources must be a list of accumulator ids")
    n_units = saved.get("n_units", 0)
    if isinstance(n_units, bool) or not isinstance(n_units, int) or n_units < 0:
        raise _bad(f"n_units must be a non-negative int, got {n_units!r}")
    return dict(
        n_units=n_units,
        next_unit=next_unit,
        unit_hash=unit_hash,
        reduced=saved["reduced"],
        dtypes=set(dtypes),
        batch_tokens=list(sizes),
        sources=set(sources),
    )


def _state(vec: Any, d: Any, keys: list[str]) -> FVUState:
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise _bad(f"width d={d!r}")
    expected = 4 + len(keys) + len(FVUState._VECTORS) * d
    if (
        not isinstance(vec, torch.Tensor)
        or vec.dtype != torch.float64
        or vec.ndim != 1
        or vec.numel() != expected
    ):
        raise _bad(f"state vector must be float64 of {expected} numbers for d={d}")
    if not bool(torch.isfinite(vec).all()):
        raise _bad("state vector holds NaN/inf")
    parsed = FVUState.from_vector(vec.clone(), d, keys)
    if (
        parsed.n <= 0
        or parsed.n != math.floor(parsed.n)
        or float(vec[1]) != math.floor(float(vec[1]))
    ):
        raise _bad(
            f"token count {parsed.n} / batch count {float(vec[1])} must be positive integers"
        )
    if any(bool((t < 0).any()) for t in (parsed.m2_x, parsed.m2_r, parsed.batch_m2_x)):
        raise _bad("negative sums of squares")
    return parsed


def _replicates(rv: Any, d: int, bootstrap: int, keys: list[str]) -> Replicates:
    size = Replicates.vector_size(d, bootstrap, len(keys))
    if not isinstance(rv, torch.Tensor) or rv.dtype != torch.float64 or rv.numel() != size:
        raise _bad(f"replicate vector must be float64 of {size} numbers")
    if not bool(torch.isfinite(rv).all()):
        raise _bad("replicate vector holds NaN/inf")
    reps = Replicates.from_vector(rv.clone(), d, bootstrap, keys)
    if bool((reps.n < 0).any()) or bool((reps.n != reps.n.floor()).any()):
        raise _bad("replicate token weights must be non-negative integers")
    return reps


def gather(tally: Tally, header: dict[str, Any], group: Any) -> list[dict[str, Any]]:
    """Every rank's saved form, in rank order, after the ranks agree on the header and
    width (the same ``ValueError`` on every rank otherwise)."""
    import torch.distributed as dist

    world = dist.get_world_size(group)
    mine = {"header": header, "d": None if tally.state is None else tally.state.d}
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, mine, group=group)
    widths = {e["d"] for e in everyone} - {None}
    if any(e["header"] != everyone[0]["header"] for e in everyone) or len(widths) > 1:
        raise ValueError(
            "all_reduce: the ranks' accumulators differ — "
            + "; ".join(
                f"rank {i}: definitions {list(e['header']['definitions'])}, d={e['d']}, "
                f"bootstrap={e['header']['bootstrap']}, seed={e['header']['seed']}"
                for i, e in enumerate(everyone)
            )
            + ". Build the same accumulator on every rank."
        )
    states: list[Any] = [None] * world
    dist.all_gather_object(states, tally.to_dict(header), group=group)
    return states


def batch_tally(
    xs: torch.Tensor,
    hs: torch.Tensor,
    keep: torch.Tensor | None,
    units: torch.Tensor | None,
    keys: list[str],
    weights_of: Any,
    bootstrap: int,
) -> Tally:
    """The tally of one checked batch (``xs``, ``hs`` (N, d); ``keep`` (N,) or None;
    ``units`` (N,) with the bootstrap)."""
    part = Tally(state=batch_state(xs, hs, keys, keep=keep))
    if units is not None:
        rows = None if keep is None else keep.nonzero().squeeze(1)
        xk = xs if rows is None else xs.index_select(0, rows)
        hk = hs if rows is None else hs.index_select(0, rows)
        uk = units if rows is None else units[rows.cpu()]
        x64 = xk.to(torch.float64)
        part.reps = batch_replicates(
            x64, x64 - hk.to(torch.float64), uk, weights_of, keys, bootstrap
        )
        part.unit_hash = unit_hash(uk)
        part.n_units = int(torch.unique(uk).numel())
    part.batch_tokens = [part.n_tokens]
    return part


def pairing_problem(a: tuple[int, int, Tally], b: tuple[int, int, Tally]) -> str:
    """Why two accumulators' replicates ((bootstrap, seed, tally) each) cannot be paired
    ('' if they can): both need the same B and seed and to have seen the same units."""
    (ba, sa, ta), (bb, sb, tb) = a, b
    if not ba or not bb:
        return "both need bootstrap=B > 0"
    if ba != bb:
        return f"B differs ({ba} vs {bb})"
    if sa != sb:
        return f"seed differs ({sa} vs {sb})"
    if ta.n_tokens != tb.n_tokens or ta.unit_hash != tb.unit_hash:
        return (
            f"they saw different units/tokens ({ta.n_tokens} vs {tb.n_tokens} tokens, "
            f"unit fingerprints {ta.unit_hash:x} vs {tb.unit_hash:x})"
        )
    return ""


def reduce_tallies(
    tally: Tally, header: dict[str, Any], keys: list[str], bootstrap: int, group: Any
) -> Tally:
    """Every rank's tally merged in rank order (the same on every rank), marked reduced;
    a tally reduced before is refused (its tokens would count twice)."""
    if tally.reduced:
        raise RuntimeError(
            "all_reduce was already called on this accumulator: its state holds every rank's "
            "tokens and a second reduction would count them again. Call reset() to start over."
        )
    merged = Tally()
    for saved in gather(tally, header, group):
        merged = merged.merged(validate_state(saved, header=header, keys=keys, bootstrap=bootstrap))
    merged.next_unit, merged.reduced = tally.next_unit, True
    return merged


def check_bootstrap_settings(bootstrap: Any, seed: Any) -> None:
    """B = 0 (no intervals) or ≥ 2 replicates; 0 ≤ seed < 2⁶³ (the weights' key is int64)."""
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise ValueError(f"bootstrap must be a non-negative int (replicates), got {bootstrap!r}.")
    if bootstrap == 1:
        raise ValueError(
            "bootstrap=1 cannot give an interval (one replicate has no spread); use 0 (no "
            "intervals) or at least 2 (100 is the default)."
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}.")


def check_mergeable(theirs: dict[str, Any], mine: dict[str, Any]) -> None:
    """Two accumulators' headers agree (definitions, bootstrap, seed), else a ``ValueError``."""
    if theirs["definitions"] != mine["definitions"]:
        raise ValueError(
            f"Cannot merge accumulators tracking {list(theirs['definitions'])} into one "
            f"tracking {list(mine['definitions'])}: build both with the same definitions."
        )
    if (theirs["bootstrap"], theirs["seed"]) != (mine["bootstrap"], mine["seed"]):
        raise ValueError(
            f"Cannot merge an accumulator with bootstrap={theirs['bootstrap']}, "
            f"seed={theirs['seed']} into one with bootstrap={mine['bootstrap']}, "
            f"seed={mine['seed']}."
        )
