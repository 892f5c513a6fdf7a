"""Streaming, mergeable FVU: :class:`FVUAccumulator`.

It only stores, merges and calls: the statistics and formulas live in :mod:`.stats`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .definitions import DEFINITIONS, FVUDefinition
from .functional import check_pair
from .stats import FVUState, batch_state, compute_fvu, merge_states, ratio_key

_FORMAT = 1


class FVUAccumulator:
    """Accumulate FVU over eval batches, one :meth:`update` per batch.

    The state is float64 on the CPU, merged with Chan's centred update, so the result
    equals :func:`sae_fvu_plugin.fvu` on the concatenated data (with each token's batch id)
    to float64 rounding, whatever the batch split or merge order.

    ``definitions``: names (or ``"all"`` = every registered definition that streams).
    A per-token / per-batch definition centred on the *global* mean cannot stream (each
    ratio needs the final mean) and is refused here; use :func:`sae_fvu_plugin.fvu` on the
    whole data, or the batch-centred variant.

    >>> acc = FVUAccumulator(["fvu_a", "fvu_b"])
    >>> acc.update(torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [1.0]]))
    >>> acc.compute()
    {'fvu_a': 1.0, 'fvu_b': 1.0}
    """

    def __init__(self, definitions: str | Sequence[str] = ("fvu_a",)) -> None:
        if isinstance(definitions, str):
            definitions = [definitions]
        names: list[str] = []
        for name in definitions:
            if name == "all":
                names += [n for n in DEFINITIONS if DEFINITIONS[n].streamable]
            else:
                names.append(name)
        self.names: list[str] = DEFINITIONS.resolve(names)
        if not self.names:
            raise ValueError("FVUAccumulator needs at least one definition name.")
        self.definitions: dict[str, FVUDefinition] = {n: DEFINITIONS[n] for n in self.names}
        for name, defn in self.definitions.items():
            if not defn.streamable:
                raise ValueError(
                    f"Definition {name!r} ({defn.reduce}, centred on the global mean) cannot "
                    "be streamed: each per-token/per-batch ratio needs the global mean of "
                    "all batches before it is formed. Use sae_fvu_plugin.fvu(x, x_hat, "
                    f"{name!r}, batch_ids=...) on the whole data, or center='batch'."
                )
        self.keys: list[str] = sorted(
            {k for k in map(ratio_key, self.definitions.values()) if k is not None}
        )
        self._state: FVUState | None = None

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

    def reset(self) -> None:
        self._state = None

    def update(
        self, x: torch.Tensor, x_hat: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        """Add one eval batch: ``x``, ``x_hat`` of shape (..., d), ``mask`` keeps tokens.

        The reduction runs on ``x``'s device; only O(d) numbers move to the CPU. A batch
        with no unmasked token is skipped (it is not counted as a batch). NaN/inf raises
        ``ValueError`` and leaves the state unchanged.
        """
        xs, hs, keep = check_pair(x, x_hat, mask)
        if self._state is not None and xs.shape[1] != self._state.d:
            raise ValueError(
                f"x has width d={xs.shape[1]} but this accumulator holds d={self._state.d}; "
                "use one accumulator per hook (or call reset())."
            )
        if xs.shape[0] == 0 or (keep is not None and not bool(keep.any())):
            return
        part = batch_state(xs, hs, self.keys, keep=keep)
        self._state = part if self._state is None else merge_states(self._state, part)

    def merge(self, other: FVUAccumulator) -> FVUAccumulator:
        """Fold ``other`` (disjoint tokens, same definitions) into this one; returns self."""
        if not isinstance(other, FVUAccumulator):
            raise TypeError(f"can only merge an FVUAccumulator, got {type(other).__name__}.")
        if other.definitions != self.definitions:
            raise ValueError(
                f"Cannot merge accumulators tracking {list(other.definitions)} into one "
                f"tracking {list(self.definitions)}: build both with the same definitions."
            )
        if other._state is None:
            return self
        if self._state is None:
            self._state = _copy(other._state)
        else:
            self._state = merge_states(self._state, other._state)
        return self

    def compute(self) -> dict[str, float]:
        """{name: FVU}. Raises ``ValueError`` if no token was accumulated."""
        if self._state is None:
            raise ValueError(
                "No tokens were accumulated (no update, or every batch was empty or fully "
                "masked); FVU is undefined. Feed at least one unmasked token."
            )
        return {n: compute_fvu(d, self._state) for n, d in self.definitions.items()}

    def explained_variance(self) -> dict[str, float]:
        """{name: 1 − FVU}."""
        return {n: 1.0 - v for n, v in self.compute().items()}

    # -- persistence and distribution -------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain, ``torch.save``-able state (definitions are recorded to catch mix-ups)."""
        return {
            "format": _FORMAT,
            "definitions": {n: d.model_dump() for n, d in self.definitions.items()},
            "d": self.d,
            "state": None if self._state is None else self._state.to_vector(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; refuses a state built for other definitions."""
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(
                "Not an FVUAccumulator state_dict (missing or unknown 'format'); expected "
                "the output of FVUAccumulator.state_dict()."
            )
        saved = state["definitions"]
        mine = {n: d.model_dump() for n, d in self.definitions.items()}
        if saved != mine:
            raise ValueError(
                f"This state was saved for definitions {list(saved)} but the accumulator "
                f"tracks {list(mine)} (or a same-named definition changed); build the "
                "accumulator with the saved definitions."
            )
        vec, d = state["state"], state["d"]
        if vec is None:
            self._state = None
            return
        expected = 4 + len(self.keys) + len(FVUState._VECTORS) * int(d)
        if not isinstance(vec, torch.Tensor) or vec.numel() != expected:
            raise ValueError(
                f"Corrupt FVUAccumulator state: vector of {getattr(vec, 'numel', lambda: '?')()} "
                f"numbers, expected {expected} for d={d}."
            )
        self._state = FVUState.from_vector(vec.to("cpu", torch.float64), int(d), self.keys)

    def all_reduce(self, group: Any = None) -> None:
        """Merge the states of every rank of ``group`` (``torch.distributed``) in rank
        order, so each rank ends with the identical, combined state.

        States are gathered, not summed: Chan's merge is not a plain sum.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "all_reduce needs an initialised torch.distributed process group "
                "(torch.distributed.init_process_group(...))."
            )
        device = torch.device("cpu")
        if dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        world = dist.get_world_size(group)
        d_local = torch.tensor([-1 if self.d is None else self.d], device=device)
        ds = [torch.empty_like(d_local) for _ in range(world)]
        dist.all_gather(ds, d_local, group=group)
        widths = {int(t) for t in ds} - {-1}
        if len(widths) > 1:
            raise ValueError(f"Ranks hold different widths d: {sorted(widths)}.")
        if not widths:
            return
        d = widths.pop()
        mine = self._state if self._state is not None else FVUState.empty(d, self.keys)
        vec = mine.to_vector().to(device)
        vecs = [torch.empty_like(vec) for _ in range(world)]
        dist.all_gather(vecs, vec, group=group)
        merged = FVUState.empty(d, self.keys)
        for v in vecs:
            merged = merge_states(merged, FVUState.from_vector(v.cpu(), d, self.keys))
        self._state = merged if merged.n > 0 else None


def _copy(s: FVUState) -> FVUState:
    return FVUState.from_vector(s.to_vector(), s.d, sorted(s.ratio_sums))
