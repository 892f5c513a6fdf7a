"""Activation sources and their exact statistics.

A source is read, never modified: :func:`data_stats` returns what it learns (count, width,
dtype, mean, per-dimension M2, the scatter matrix for PCA, and a content fingerprint) in a
:class:`DataStats`, merged exactly across batches and ranks (Chan's centred update, float64).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .reduce import LocalReducer

DEFAULT_BATCH_ROWS = 1 << 15


class ActivationSource:
    """Re-iterable activation batches of shape (n, d).

    ``acts``: a tensor (..., d); a list/tuple of tensors; a function returning a fresh
    iterator; or any re-iterable object. A one-shot iterator (a generator) is refused:
    Lloyd needs one pass per iteration. Every pass must yield the same batches in the same
    order (the fingerprint of the first pass names them).
    """

    def __init__(self, acts: Any, batch_rows: int = DEFAULT_BATCH_ROWS) -> None:
        self._factory: Callable[[], Iterable[torch.Tensor]]
        self.in_memory = isinstance(acts, (torch.Tensor, list, tuple))
        if isinstance(acts, np.ndarray):
            raise TypeError(
                f"acts is a numpy array of shape {acts.shape}; pass torch.from_numpy(acts)."
            )
        if isinstance(acts, torch.Tensor):
            if acts.ndim < 2:
                raise ValueError(
                    f"acts has shape {tuple(acts.shape)}; expected (..., d) with d the width "
                    "(one row per token). For a single token use acts.reshape(1, -1)."
                )
            t = acts.reshape(-1, acts.shape[-1])
            self._factory = lambda: t.split(batch_rows)
        elif callable(acts):
            self._factory = acts
        elif isinstance(acts, Iterable):
            if iter(acts) is acts:
                raise TypeError(
                    "acts is a one-shot iterator (e.g. a generator); k-means makes one pass "
                    "per iteration. Pass a list of batches, a tensor, or a function that "
                    "returns a fresh iterator."
                )
            self._factory = lambda: acts
        else:
            raise TypeError(
                f"acts must be a tensor, a list of tensors or a function returning an "
                f"iterator of tensors; got {type(acts).__name__}."
            )

    _signature: list[tuple[int, int, float]] | None = None
    _passes = 0

    def batches(self) -> Iterator[torch.Tensor]:
        """The batches as (rows, d) floating-point tensors (empty batches included). A
        factory's later passes are checked against its first complete one (rows, width and
        a checksum of each batch): a pass that differs is a ``ValueError`` naming it."""
        self._passes += 1
        check = not self.in_memory
        seen: list[tuple[int, int, float]] = []
        d: int | None = None
        for i, b in enumerate(self._factory()):
            if isinstance(b, np.ndarray):
                raise TypeError(
                    f"activation batch {i} is a numpy array; pass torch.from_numpy(x) (or a "
                    "list of such tensors)."
                )
            if not isinstance(b, torch.Tensor) or not b.is_floating_point():
                raise TypeError(
                    f"activation batch {i} is {getattr(b, 'dtype', type(b).__name__)}; "
                    "expected a floating-point tensor of shape (..., d)."
                )
            if b.ndim < 2:
                raise ValueError(
                    f"activation batch {i} has shape {tuple(b.shape)}; expected (..., d)."
                )
            b = b.reshape(-1, b.shape[-1])
            if d is None:
                d = b.shape[1]
            elif b.shape[1] != d:
                raise ValueError(f"activation batch {i} has width {b.shape[1]}, expected {d}.")
            if check:
                seen.append(self._compare(i, b, len(seen)))
            yield b
        if check and self._signature is None:
            self._signature = seen
        elif check and self._signature is not None and len(seen) != len(self._signature):
            raise ValueError(
                f"pass {self._passes} over the activations yielded {len(seen)} batches, the "
                f"first pass {len(self._signature)}: the batch factory must yield the same "
                "batches in the same order on every call."
            )

    def _compare(self, i: int, b: torch.Tensor, k: int) -> tuple[int, int, float]:
        """This batch's (rows, width, checksum), checked against the first pass."""
        sig = (int(b.shape[0]), int(b.shape[1]), float(b[:, :16].sum(dtype=torch.float64)))
        first = self._signature
        if first is not None and (k >= len(first) or first[k] != sig):
            was = "no batch" if k >= len(first) else f"rows {first[k][0]}, width {first[k][1]}"
            raise ValueError(
                f"pass {self._passes} over the activations: batch {i} (rows {sig[0]}, width "
                f"{sig[1]}) differs from the first pass ({was}; or other values). The batch "
                "factory must yield the same batches in the same order on every call (a "
                "shuffled DataLoader does not); fix the order or collect the activations once."
            )
        return sig


@dataclass
class DataStats:
    """Count, mean, per-dimension M2 = Σ_n (x_ni − μ_i)² and optionally the scatter
    Σ_n (x_n − μ)(x_n − μ)ᵀ of all rows on all ranks (float64), with the width, the input
    dtype, this rank's row count and a fingerprint of every value streamed."""

    n: int
    d: int
    dtype: torch.dtype
    mean: torch.Tensor
    m2: torch.Tensor
    scatter: torch.Tensor | None
    fingerprint: str
    local_n: int
    local_sizes: list[int]  # this rank's non-empty batches, in order
    row_offset: int = 0  # rows on the ranks before this one (its rows' global index start)

    @property
    def total_ss(self) -> float:
        """Σ_n ‖x_n − μ‖²."""
        return float(self.m2.sum())


def sub_rows(d: int, device: torch.device) -> int:
    """Rows per float64 work chunk: ~256K elements on the CPU (fastest measured at
    16K × 576), ~4M elsewhere."""
    return max(1, (1 << 18 if device.type == "cpu" else 1 << 22) // max(d, 1))


def _hash_batch(digest: Any, b: torch.Tensor) -> None:
    """Shape, dtype and the bytes of every value (any float dtype, any device)."""
    t = b.detach().contiguous().cpu()
    digest.update(f"{tuple(t.shape)}:{t.dtype};".encode())
    if t.numel():
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)


def _chan(
    a: tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None],
    b: tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None],
) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Merge (n, mean, M2, scatter) of two disjoint sets: δ = μ_b − μ_a,
    μ = μ_a + δ n_b/n, M2 = M2_a + M2_b + δ² n_a n_b/n (scatter: δδᵀ)."""
    na, ma, m2a, ca = a
    nb, mb, m2b, cb = b
    if na == 0:
        return b
    if nb == 0:
        return a
    n = na + nb
    delta = mb - ma
    w = na * nb / n
    scatter = None if ca is None or cb is None else ca + cb + torch.outer(delta, delta) * w
    return n, ma + delta * (nb / n), m2a + m2b + delta.square() * w, scatter


def data_stats(
    source: ActivationSource,
    device: torch.device,
    reducer: LocalReducer,
    *,
    scatter: bool = False,
) -> DataStats:
    """One pass: count, mean, M2 (and the scatter for PCA), float64, Chan-merged over
    cache-sized row chunks and then across ranks in rank order; checks every value is
    finite; fingerprints every value (sha256 of shapes, dtypes and bytes, in order)."""
    acc: tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
    digest = hashlib.sha256()
    d: int | None = None
    dtype: torch.dtype | None = None
    sizes: list[int] = []
    for i, b in enumerate(source.batches()):
        _hash_batch(digest, b)
        if b.shape[0]:
            sizes.append(b.shape[0])
        if d is None:
            d, dtype = b.shape[1], b.dtype
        elif b.dtype != dtype:
            raise TypeError(
                f"activation batch {i} is {b.dtype} but batch 0 was {dtype}; give every batch "
                "the same dtype."
            )
        step = sub_rows(b.shape[1], device)
        for s in range(0, b.shape[0], step):
            x = b[s : s + step].to(device, torch.float64)
            mb = x.mean(0)
            if not bool(torch.isfinite(mb).all()):  # NaN/inf anywhere propagates to the mean
                bad = int((~torch.isfinite(b)).sum())
                raise ValueError(
                    f"activation batch {i} has {bad} NaN/inf values (shape {tuple(b.shape)}); "
                    "k-means needs finite activations. Drop those tokens or fix the model/hook."
                )
            xc = x - mb
            part = (x.shape[0], mb, (xc * xc).sum(0), xc.T @ xc if scatter else None)
            acc = part if acc is None else _chan(acc, part)
    local_n = 0 if acc is None else acc[0]
    shards = reducer.gather(
        {
            "stats": acc,
            "d": d,
            "dtype": None if dtype is None else str(dtype),
            "hash": digest.hexdigest(),
        }
    )
    widths = {s["d"] for s in shards if s["d"] is not None}
    dtypes = {s["dtype"] for s in shards if s["dtype"] is not None}
    if len(widths) > 1 or len(dtypes) > 1:
        raise ValueError(
            "The ranks hold activations of different widths or dtypes: "
            + ", ".join(f"rank {i}: d={s['d']}, {s['dtype']}" for i, s in enumerate(shards))
            + ". Every rank must collect the same hook in the same dtype."
        )
    merged: tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
    for s in shards:
        if s["stats"] is None:
            continue
        cnt, mu, m2v, sc = s["stats"]
        part = (cnt, mu.to(device), m2v.to(device), None if sc is None else sc.to(device))
        merged = part if merged is None else _chan(merged, part)
    if merged is None or merged[0] == 0 or not widths:
        raise ValueError(
            "No activations: the source yielded no rows"
            + (" on any rank." if reducer.world > 1 else ".")
        )
    n, mean, m2, cov = merged
    fingerprint = hashlib.sha256(("|".join(s["hash"] for s in shards)).encode()).hexdigest()
    return DataStats(
        n=int(n),
        d=int(widths.pop()),
        dtype=getattr(torch, dtypes.pop().removeprefix("torch.")),
        mean=mean,
        m2=m2,
        scatter=cov,
        fingerprint=f"sha256:{fingerprint}:n={n}:world={reducer.world}",
        local_n=local_n,
        local_sizes=sizes,
        row_offset=sum(
            int(s["stats"][0]) for s in shards[: reducer.rank] if s["stats"] is not None
        ),
    )
