"""Lloyd's k-means and PCA over activations that may not fit in memory.

Data come from an :class:`ActivationSource` (a tensor, a list of batches, or a function
returning a fresh iterator of batches); every Lloyd iteration is one streaming pass.

Assignment uses the expansion ‖x − c‖² = ‖x‖² − 2 x·c + ‖c‖² as one chunked matmul
(argmin of ‖c‖² − 2 x·c) in the compute dtype, on data centred by the global mean (which
keeps the expansion accurate when activations carry a large mean). Centroid sums, counts
and inertia are accumulated in float64; inertia is Σ_n ‖x_n − c_{a(n)}‖² computed directly,
not from the expansion.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_SCORE_ELEMENTS = 1 << 22  # rows × k of one distance chunk (16 MiB in float32)


class ActivationSource:
    """Re-iterable activation batches of shape (n, d).

    ``acts``: a tensor (..., d); a list/tuple of tensors; a function returning a fresh
    iterator; or any re-iterable object. A one-shot iterator (a generator) is refused:
    Lloyd needs one pass per iteration.
    """

    def __init__(self, acts: Any, batch_rows: int = 1 << 15) -> None:
        self._factory: Callable[[], Iterable[torch.Tensor]]
        self.in_memory = isinstance(acts, (torch.Tensor, list, tuple))
        if isinstance(acts, torch.Tensor):
            if acts.ndim < 2:
                raise ValueError(
                    f"acts has shape {tuple(acts.shape)}; expected (..., d) with d the width."
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
        self.n: int | None = None
        self.d: int | None = None
        self.dtype: torch.dtype | None = None  # of the first batch, set by data_stats

    def batches(self) -> Iterator[torch.Tensor]:
        for i, b in enumerate(self._factory()):
            if not isinstance(b, torch.Tensor) or not b.is_floating_point():
                raise TypeError(
                    f"activation batch {i} is {getattr(b, 'dtype', type(b).__name__)}; "
                    "expected a floating-point tensor of shape (..., d)."
                )
            b = b.reshape(-1, b.shape[-1])
            if self.d is not None and b.shape[1] != self.d:
                raise ValueError(f"activation batch {i} has width {b.shape[1]}, expected {self.d}.")
            yield b


@dataclass
class DataStats:
    """Mean, per-dim M2 and (optionally) the scatter matrix, float64, Chan-merged."""

    n: int
    mean: torch.Tensor
    m2: torch.Tensor
    scatter: torch.Tensor | None
    fingerprint: str

    @property
    def total_ss(self) -> float:
        """Σ_n ‖x_n − μ‖²."""
        return float(self.m2.sum())


def data_stats(source: ActivationSource, device: torch.device, scatter: bool = False) -> DataStats:
    """One pass: count, mean, M2 (and Σ (x−μ)(x−μ)ᵀ for PCA), float64, Chan-merged over
    cache-sized row chunks; checks every value is finite."""
    n = 0
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None
    cov: torch.Tensor | None = None
    digest = hashlib.sha256()
    for i, b in enumerate(source.batches()):
        if source.d is None:
            source.d, source.dtype = b.shape[1], b.dtype
        if b.shape[0] == 0:
            continue
        step = sub_rows(b.shape[1], device)
        for s in range(0, b.shape[0], step):
            x = b[s : s + step].to(device, torch.float64)
            nb = x.shape[0]
            mb = x.mean(0)
            if not bool(torch.isfinite(mb).all()):  # NaN/inf anywhere propagates to the mean
                bad = int((~torch.isfinite(b)).sum())
                raise ValueError(
                    f"activation batch {i} has {bad} NaN/inf values (shape {tuple(b.shape)}); "
                    "k-means needs finite activations. Drop those tokens or fix the model/hook."
                )
            xc = x - mb
            m2b = (xc * xc).sum(0)
            cb = xc.T @ xc if scatter else None
            digest.update(f"{nb}:{float(mb.sum()):.17g}".encode())
            if mean is None or m2 is None:
                n, mean, m2, cov = nb, mb, m2b, cb
                continue
            tot = n + nb
            delta = mb - mean
            mean = mean + delta * (nb / tot)
            m2 = m2 + m2b + delta.square() * (n * nb / tot)
            if cov is not None and cb is not None:
                cov = cov + cb + torch.outer(delta, delta) * (n * nb / tot)
            n = tot
    if mean is None or m2 is None or n == 0:
        raise ValueError("No activations: the source yielded no rows.")
    source.n = n
    return DataStats(n, mean, m2, cov, f"{n}:{source.d}:{digest.hexdigest()[:16]}")


@dataclass
class PCAResult:
    components: torch.Tensor  # (p, d), rows orthonormal, by decreasing variance
    explained_variance: torch.Tensor  # (p,), eigenvalues / (n − 1), like sklearn
    explained_variance_ratio: torch.Tensor  # (p,)


def pca_from_stats(stats: DataStats, n_components: int) -> PCAResult:
    """Top principal axes of the centred data: eigenvectors of Σ (x−μ)(x−μ)ᵀ.

    Sign convention: each component's largest-magnitude coordinate is positive.
    """
    assert stats.scatter is not None
    evals, evecs = torch.linalg.eigh(stats.scatter)
    order = torch.argsort(evals, descending=True)[:n_components]
    comps = evecs[:, order].T.contiguous()
    idx = comps.abs().argmax(1)
    signs = torch.sign(comps[torch.arange(len(comps)), idx])
    comps = comps * signs[:, None]
    vals = evals[order].clamp(min=0)
    total = float(torch.trace(stats.scatter))
    return PCAResult(comps, vals / max(stats.n - 1, 1), vals / total)


@dataclass
class LloydState:
    centroids: torch.Tensor  # (k, d) float64, in the centred frame
    iteration: int = 0
    labels: torch.Tensor | None = None  # int64 (n,), labels of the last pass
    history: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # wall time of each iteration
    converged: bool = False


def _chunk_rows(k: int) -> int:
    return max(1, _SCORE_ELEMENTS // max(k, 1))


def assign_chunks(
    x: torch.Tensor, centroids: torch.Tensor, sq_norms: torch.Tensor
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Per chunk of rows: (rows, min_k(‖c_k‖² − 2x·c_k), argmin) by one matmul each."""
    step = _chunk_rows(centroids.shape[0])
    for s in range(0, x.shape[0], step):
        sl = slice(s, min(s + step, x.shape[0]))
        best, lab = torch.addmm(sq_norms, x[sl], centroids.T, beta=1, alpha=-2).min(1)
        yield sl, best, lab


def assign(x: torch.Tensor, centroids: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for each row."""
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for sl, _, lab in assign_chunks(x, centroids, sq_norms):
        out[sl] = lab
    return out


class _Pass:
    """One Lloyd pass over the data, in chunks of rows: nearest centroid by one matmul per
    chunk (argmin of ‖c_k‖² − 2 x·c_k); the batch's centroid sums in the compute dtype,
    accumulated in float64 across batches; counts; labels. Its inertia is
    Σ‖x‖² + Σ_n min_k(‖c_k‖² − 2 x_n·c_k) (Σ‖x‖² measured once, ``row_sq``).
    ``exact=True`` (the final pass) computes ‖x − c‖² and the sums in float64."""

    def __init__(
        self, centroids64: torch.Tensor, dtype: torch.dtype, exact: bool, row_sq: bool
    ) -> None:
        k, d = centroids64.shape
        dev = centroids64.device
        self.c64 = centroids64
        self.c = centroids64.to(dtype)
        self.sq = self.c.square().sum(1)
        self.exact = exact or dtype == torch.float64
        self.row_sq = row_sq
        self.sums = torch.zeros(k, d, dtype=torch.float64, device=dev)
        self.part = torch.zeros(k, d, dtype=dtype, device=dev)
        self.counts = torch.zeros(k, dtype=torch.float64, device=dev)
        self.exact_inertia = torch.zeros((), dtype=torch.float64, device=dev)
        self.best_sum = torch.zeros((), dtype=torch.float64, device=dev)
        self.sq_sum = torch.zeros((), dtype=torch.float64, device=dev)
        self.labels: list[torch.Tensor] = []
        self.best: list[torch.Tensor] = []

    def add(self, x: torch.Tensor) -> None:
        x = x.to(self.c.dtype)
        k = self.c.shape[0]
        labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
        best_all = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
        for sl, best, lab in assign_chunks(x, self.c, self.sq):
            xs = x[sl]
            labels[sl] = lab
            best_all[sl] = best
            if self.exact:
                self._add_exact(xs, lab)
            else:
                self.part.index_add_(0, lab, xs)
        if not self.exact:
            self.sums += self.part
            self.part.zero_()
        if self.row_sq:
            self.sq_sum += x.square().sum(dtype=torch.float64)
        self.best_sum += best_all.sum()
        self.counts += torch.bincount(labels, minlength=k).to(torch.float64)
        self.labels.append(labels.cpu())
        self.best.append(best_all)

    def _add_exact(self, xs: torch.Tensor, lab: torch.Tensor) -> None:
        step = sub_rows(xs.shape[1], xs.device)
        for s in range(0, xs.shape[0], step):
            x64 = xs[s : s + step].to(torch.float64)
            lb = lab[s : s + step]
            self.exact_inertia += (x64 - self.c64[lb]).square_().sum()
            self.sums.index_add_(0, lb, x64)

    def farthest_rows(self, m: int, batches: Iterator[torch.Tensor]) -> torch.Tensor:
        """Global row numbers of the m rows farthest from their centroid, farthest first
        (one more pass for the rows' ‖x‖²; only needed to re-seed empty clusters)."""
        sq = torch.cat([b.to(self.c.dtype).square().sum(1).to(torch.float64) for b in batches])
        d = torch.cat(self.best) + sq.to(self.best[0].device)
        return d.topk(min(m, d.shape[0])).indices.cpu()


def sub_rows(d: int, device: torch.device) -> int:
    """Rows per float64 work chunk: ~256K elements on the CPU (fastest measured at 16K × 576), ~4M elsewhere."""
    return max(1, (1 << 18 if device.type == "cpu" else 1 << 22) // max(d, 1))


def gather_rows(batches: Iterator[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """The given global row numbers of a stream of batches, in the given order (float64)."""
    want = {int(r): i for i, r in enumerate(rows)}
    out: list[torch.Tensor | None] = [None] * len(want)
    start = 0
    for b in batches:
        for r in range(start, start + b.shape[0]):
            if r in want:
                out[want[r]] = b[r - start].to(torch.float64)
        start += b.shape[0]
    return torch.stack([t for t in out if t is not None])


def lloyd(
    batches: Callable[[], Iterator[torch.Tensor]],
    state: LloydState,
    *,
    n_iter: int,
    tol: float,
    compute_dtype: torch.dtype,
    device: torch.device,
    on_iteration: Callable[[LloydState], None] | None = None,
    empty: str = "split",
    seed: int = 0,
) -> tuple[LloydState, float, torch.Tensor]:
    """Run Lloyd iterations from ``state`` until ``n_iter``, label-stability, or a centre
    shift Σ‖Δc‖² ≤ ``tol`` (absolute; callers scale it like sklearn). Then one final
    assignment pass with the final centroids. Returns (state, inertia, labels).

    Batches must already be centred and on ``device``. Empty clusters are re-seeded
    deterministically: ``empty="split"`` (default, like faiss) splits a populous cluster
    in two — one chosen with probability ∝ (size − 1), its centroid copied with a small
    symmetric perturbation; ``empty="farthest"`` (like scikit-learn) moves them to the
    rows farthest from their centroids. ``state.history``
    holds each iteration's inertia from the matmul expansion; the returned final inertia
    is exact (float64 distances).
    """

    def one_pass(c64: torch.Tensor, exact: bool, row_sq: bool) -> _Pass:
        acc = _Pass(c64, compute_dtype, exact, row_sq)
        for x in batches():
            acc.add(x)
        return acc

    sq_total: float | None = None  # Σ‖x‖², the same in every pass
    while state.iteration < n_iter and not state.converged:
        started = time.perf_counter()
        c64 = state.centroids
        acc = one_pass(c64, exact=False, row_sq=sq_total is None)
        if sq_total is None:
            sq_total = float(acc.sq_sum)
        new = acc.sums / acc.counts.clamp(min=1)[:, None]
        empties = torch.nonzero(acc.counts == 0).flatten()
        if len(empties) and empty == "farthest":  # two more passes over the data
            far = acc.farthest_rows(len(empties), batches())
            donors = gather_rows(batches(), far).to(new.device)
            new[empties[: len(donors)]] = donors
        elif len(empties):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + state.iteration)
            split_clusters(new, acc.counts, empties, gen)
        labels = torch.cat(acc.labels)
        same = state.labels is not None and torch.equal(labels, state.labels)
        shift = float((new - c64).square().sum())
        state.history.append(sq_total + float(acc.best_sum))
        state.seconds.append(time.perf_counter() - started)
        state.centroids, state.labels = new, labels
        state.iteration += 1
        state.converged = bool(same) or shift <= tol
        if on_iteration is not None:
            on_iteration(state)
    final = one_pass(state.centroids, exact=True, row_sq=False)
    return state, float(final.exact_inertia), torch.cat(final.labels)


_SPLIT_EPS = 1.0 / 1024


def split_clusters(
    centroids: torch.Tensor, counts: torch.Tensor, empty: torch.Tensor, generator: torch.Generator
) -> None:
    """Refill each empty cluster by splitting a populous one, in place: cluster j is drawn
    with probability ∝ (count_j − 1); c_empty = c_j + δ, c_j = c_j − δ, with δ a small
    (2⁻¹⁰ relative) perturbation of alternating sign across dimensions; counts are halved."""
    sizes = counts.to("cpu", torch.float64).clone()
    d = centroids.shape[1]
    sign = torch.ones(d, dtype=centroids.dtype, device=centroids.device)
    sign[1::2] = -1
    for e in empty.tolist():
        weights = (sizes - 1).clamp(min=0)
        if float(weights.sum()) <= 0:
            break
        j = int(torch.multinomial(weights / weights.sum(), 1, generator=generator))
        c = centroids[j].clone()
        delta = _SPLIT_EPS * sign * (c.abs() + c.abs().mean() + 1e-12)
        centroids[e] = c + delta
        centroids[j] = c - delta
        sizes[e] = sizes[j] // 2
        sizes[j] -= sizes[e]


def kmeans_plus_plus(
    sample: torch.Tensor, k: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) on ``sample`` rows.

    First centre uniform; each next one drawn with probability ∝ squared distance to the
    nearest centre chosen so far (distances by ‖s‖² − 2 s·c + ‖c‖², one matrix-vector
    product per centre, in ``dtype``). Deterministic for a generator state.
    """
    s = sample.to(dtype)
    n = s.shape[0]
    sq = s.square().sum(1)
    idx = [int(torch.randint(n, (1,), generator=generator))]
    d2 = (sq - 2 * (s @ s[idx[0]]) + sq[idx[0]]).clamp(min=0)
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[idx[0]] = True
    for _ in range(1, k):
        p = d2.to("cpu", torch.float64).clamp(min=0)
        p[chosen] = 0
        total = float(p.sum())
        if total <= 0:  # fewer distinct points than k: take unused rows in order
            nxt = int(torch.nonzero(~chosen)[0])
        else:
            nxt = int(torch.multinomial(p / total, 1, generator=generator))
        idx.append(nxt)
        chosen[nxt] = True
        d2 = torch.minimum(d2, (sq - 2 * (s @ s[nxt]) + sq[nxt]).clamp(min=0))
    return sample[idx].to(torch.float64).clone()


def uniform_sample(
    batches: Iterator[torch.Tensor], m: int, generator: torch.Generator
) -> torch.Tensor:
    """m rows drawn uniformly without replacement from a stream: every row gets a random
    key and the m smallest keys are kept (deterministic for a generator state)."""
    keys = torch.empty(0, dtype=torch.float64)
    rows: torch.Tensor | None = None
    for b in batches:
        b64 = b.to(torch.float64)
        kb = torch.rand(b.shape[0], generator=generator, dtype=torch.float64)
        keys = torch.cat([keys, kb])
        rows = b64 if rows is None else torch.cat([rows, b64.to(rows.device)])
        if keys.shape[0] > m:
            keep = torch.topk(keys, m, largest=False).indices
            keys, rows = keys[keep], rows[keep.to(rows.device)]
    assert rows is not None
    order = torch.argsort(keys)
    return rows[order.to(rows.device)]


# ------------------------------------------------------------------------ checkpoints


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomic write (temp file + rename): an interrupted save never corrupts the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: Path, expected: dict[str, Any]) -> dict[str, Any] | None:
    """The saved payload if ``path`` exists and was written for ``expected`` settings."""
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or not a torch file
        raise ValueError(
            f"Checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err}). "
            "Delete it to start over, or point checkpoint= elsewhere; it was not modified."
        ) from err
    if not isinstance(payload, dict) or payload.get("settings") != expected:
        got = payload.get("settings") if isinstance(payload, dict) else None
        diff = (
            {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
            if isinstance(got, dict)
            else "not a sae_fvu_plugin k-means checkpoint"
        )
        raise ValueError(
            f"Checkpoint {path} was written for other settings or data ({diff}: saved vs "
            "requested). Use another checkpoint path or delete it; it was not modified."
        )
    return payload


def tolerance(tol: float, stats: DataStats) -> float:
    """sklearn's scaling: tol × mean per-dimension variance of the data."""
    d = stats.m2.shape[0]
    return tol * float(stats.m2.sum()) / (stats.n * d) if math.isfinite(tol) else tol
