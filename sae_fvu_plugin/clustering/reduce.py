"""Where a fit's numbers are combined: one process, or every rank of a ``torch.distributed``
process group. The fitting code calls these methods and never asks which one it has.

With a process group initialised, each rank's ``acts`` are its shard of the data and every
reduction below spans the group: sums by ``all_reduce``, everything that is not a plain sum
(Chan-merged statistics, samples, candidate rows) gathered and combined in rank order, so
every rank computes the same result.
"""

from __future__ import annotations

from typing import Any

import torch


class LocalReducer:
    """A world of one process."""

    rank = 0
    world = 1

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place (here: unchanged)."""
        return t

    def gather(self, obj: Any) -> list[Any]:
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        return [obj]

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        return obj

    def describe(self) -> str:
        return "1 process"


class DistributedReducer(LocalReducer):
    """Every rank of ``group`` (the default group when None)."""

    def __init__(self, group: Any = None) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))
        self.comm_device = (
            torch.device("cuda", torch.cuda.current_device())
            if self.backend == "nccl"
            else torch.device("cpu")
        )

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        buf = t.to(self.comm_device)
        self._dist.all_reduce(buf, op=self._dist.ReduceOp.SUM, group=self.group)
        if buf is not t:
            t.copy_(buf)
        return t

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        self._dist.all_gather_object(out, _to_cpu(obj), group=self.group)
        return out

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        box = [_to_cpu(obj) if self.rank == src else None]
        self._dist.broadcast_object_list(box, src=src, group=self.group)
        return box[0]

    def describe(self) -> str:
        return f"{self.world} processes ({self.backend})"


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    return obj


def current_reducer(group: Any = None) -> LocalReducer:
    """A :class:`DistributedReducer` when a ``torch.distributed`` group is initialised
    (with more than one rank), else a :class:`LocalReducer`."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        return DistributedReducer(group)
    return LocalReducer()


def agree(reducer: LocalReducer, what: str, value: Any) -> None:
    """Raise the same clear error on every rank when ranks disagree on ``value``."""
    values = reducer.gather(value)
    if any(v != values[0] for v in values):
        raise ValueError(
            f"The ranks of the process group disagree on {what}: "
            + ", ".join(f"rank {i}: {v!r}" for i, v in enumerate(values))
            + ". Every rank must call the fit with the same options and data width."
        )
