"""Initial centroids: greedy k-means++, k-means||, random rows, from streamed and sharded data.

Squared distances use the expansion ‖a − b‖² = ‖a‖² − 2 a·b + ‖b‖² on data already centred
by the global mean (so the expansion keeps its accuracy when activations carry a mean).
Every random draw comes from a ``torch.Generator`` seeded from (seed, rank, round), so a
seeding is reproducible for a given data order and number of ranks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .precision import accumulation_roundoff, unit_roundoff
from .reduce import LocalReducer

Batches = Callable[[], Iterator[torch.Tensor]]


def _generator(*key: int) -> torch.Generator:
    seed = 0
    for part in key:
        seed = (seed * 1_000_003 + int(part) + 1) % (1 << 62)
    return torch.Generator().manual_seed(seed)


def _row_stream(offset: int, *key: int) -> torch.Generator:
    """The generator keyed by ``key``, past the draws of the first ``offset`` rows (those on
    the ranks before this one), so row g always gets the g-th draw whatever the ranks."""
    gen = _generator(*key)
    left = offset
    while left > 0:
        step = min(left, 1 << 22)
        torch.rand(step, generator=gen, dtype=torch.float64)
        left -= step
    return gen


def uniform_sample(
    batches: Batches, m: int, seed: int, reducer: LocalReducer, offset: int = 0
) -> torch.Tensor:
    """m rows drawn uniformly without replacement from all rows of all ranks (float64, in
    random order): every row gets a random key, the m smallest keys are kept.

    Row g (its global index: ``offset``, the rows on the ranks before this one, plus its
    place here) gets the g-th draw of one stream keyed by ``seed``, so the sample — and
    every seeding built on it — is the same whatever the number of ranks."""
    gen = _row_stream(offset, seed, 0, 7)
    keys = torch.empty(0, dtype=torch.float64)
    rows: torch.Tensor | None = None
    for b in batches():
        if b.shape[0] == 0:
            continue
        kb = torch.rand(b.shape[0], generator=gen, dtype=torch.float64)
        both = torch.cat([keys, kb])
        keep = torch.topk(both, min(m, len(both)), largest=False).indices
        old = keep[keep < len(keys)]
        new = (keep[keep >= len(keys)] - len(keys)).to(b.device)
        fresh = b[new].to("cpu", torch.float64)
        rows = fresh if rows is None else torch.cat([rows[old], fresh])
        keys = torch.cat([keys[old], kb[new.cpu()]])
    parts = reducer.gather((keys, rows))
    all_keys = torch.cat([k for k, r in parts if r is not None])
    all_rows = torch.cat([r for k, r in parts if r is not None])
    order = torch.argsort(all_keys)[:m]
    return all_rows[order]


_TAIL_SHARE = 0.1  # α: the share of the sample drawn ∝ ‖z‖² (benchmarks/kmeans_quality.py)


def importance_sample(
    batches: Batches, m: int, seed: int, reducer: LocalReducer, offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A weighted sample of about m rows that sees the tails (a lightweight coreset,
    Bachem, Lucic & Krause 2018), from all rows of all ranks.

    On centred data z (N rows, S = Σ_n ‖z_n‖²) row n has importance
    q_n = (1 − α) / N + α ‖z_n‖² / S (α = 0.1) and is kept independently with probability
    p_n = min(1, m q_n), weighted 1 / p_n, so Σ_kept w_n f(z_n) is an unbiased estimate of
    Σ_n f(z_n) for any f (the k-means potential of every candidate centre set included). A
    rare, far-out row (a massive-activation token) is kept with probability near 1 and
    weight near 1 instead of being missed by a uniform sample. Two passes; row g (its
    global index) uses the g-th draw of one stream keyed by ``seed``, so the sample is the
    same whatever the number of ranks. With m ≥ N every row is kept with weight 1.
    Returns (rows float64, weights float64), in global row order."""
    totals = torch.zeros(2, dtype=torch.float64)
    for b in batches():
        totals[0] += b.shape[0]
        totals[1] += float(b.square().sum(1).sum(dtype=torch.float64))
    n, total = reducer.sum_(totals).tolist()
    gen = _row_stream(offset, seed, 0, 11)
    rows: list[torch.Tensor] = []
    weights: list[torch.Tensor] = []
    keys: list[torch.Tensor] = []
    seen = offset
    for b in batches():
        if b.shape[0] == 0:
            continue
        u = torch.rand(b.shape[0], generator=gen, dtype=torch.float64)
        sq = b.square().sum(1).to("cpu", torch.float64)
        a = _TAIL_SHARE if total > 0 else 0.0
        q = (1 - a) / n + (a * sq / total if total > 0 else torch.zeros_like(sq))
        p = torch.ones_like(q) if m >= n else (m * q).clamp_(max=1.0)
        keep = torch.nonzero(u < p).flatten()
        rows.append(b[keep.to(b.device)].to("cpu", torch.float64))
        weights.append(1.0 / p[keep])
        keys.append((keep + seen).to(torch.float64))
        seen += b.shape[0]
    d = rows[0].shape[1] if rows else 0
    mine = (
        torch.cat(keys) if keys else torch.empty(0, dtype=torch.float64),
        torch.cat(rows) if rows else torch.empty(0, d, dtype=torch.float64),
        torch.cat(weights) if weights else torch.empty(0, dtype=torch.float64),
    )
    parts = [part for part in reducer.gather(mine) if len(part[0])] or [mine]
    order = torch.argsort(torch.cat([part[0] for part in parts]))  # global row order
    kept = torch.cat([part[1] for part in parts])[order]
    return kept, torch.cat([part[2] for part in parts])[order]


_SCREEN_OFF_SHARE = 0.6  # rescored share (moving average) above which the screen costs more
_GATHER_SHARE = 0.4  # above this share of unsure rows a step rescores all rows (no gather)
_SCREEN_COLUMNS = 16  # the projected screen's candidate columns, padded to a multiple


class _Running:
    """What a greedy seeding's screens share: the moving share of rows a step left unsure,
    the steps it ran, the rows it scored and left (``counts``), and when it runs."""

    def __init__(self) -> None:
        self.share = 0.0  # moving average of the unsure share of rows
        self.steps = 0
        self.rescored = 0
        self.scored = 0

    def use(self) -> bool:
        """Whether this step runs the screen: while its unsure share stays at most
        ``_SCREEN_OFF_SHARE``, and every ``_RETRY``-th step when above (the share falls as
        centres are chosen; a step it cannot help costs ~1/8 more; after the projected
        screen the bfloat16 one sees the hard rows)."""
        self.steps += 1
        return self.share <= _SCREEN_OFF_SHARE or self.steps % _RETRY == 0

    def progress(self) -> list[float]:
        """[share, steps, scored, rescored]: what a resumed seeding needs (:func:`seeding_state`)."""
        return [self.share, float(self.steps), float(self.scored), float(self.rescored)]

    def restore(self, run: list[float]) -> None:
        self.share, steps, scored, rescored = run
        self.steps, self.scored, self.rescored = int(steps), int(scored), int(rescored)

    def counted(self, seen: int, out: torch.Tensor) -> torch.Tensor:
        """``out``, the rows a step left unsure of the ``seen`` it screened, counted."""
        self.rescored += len(out)
        self.scored += seen
        self.share = 0.9 * self.share + 0.1 * len(out) / max(seen, 1)
        return out


class _Screen(_Running):
    """The rows a greedy k-means++ step's candidates may be nearer to, screened by one
    low-precision product with a certified bound; only those rows are scored exactly.

    A step needs, for every candidate j, the potential Σ_n w_n min(d32(p_n, c_j),
    closest_n), with d32 = ‖p‖² + ‖c‖² − 2 p·c the expansion in the data precision
    (float32). Late in a seeding almost every row is farther from every candidate than
    from its chosen centre, so its term is w_n closest_n whatever the candidate. The
    screen takes Assigner's certified lower bound (:class:`.lloyd.Assigner`) in
    ``score_dtype`` (bfloat16: the rows read at half the bytes, on AMX ~6× the float32
    product) as one matmul with two extra columns,

        V_nj = [p_n, ‖p_n‖, 1] · [−2 c_j, −κ₁ ‖c_j‖, (1 − κ₂ − 2s) ‖c_j‖²]ᵀ ≤ ‖c_j‖² − 2 p_n·c_j,

    κ₁ = 1.25 (8u + 2γ), κ₂ = 4u as there, and s = 4 (d + 2) u_data covering the data
    precision's rounding of d32 and of the norms ((‖p‖ + ‖c‖)² ≤ 2 (‖p‖² + ‖c‖²)). A row
    with V_nj ≥ closest_n − (1 − 2s) ‖p_n‖² for every candidate has d32 ≥ closest_n for
    all of them; the others ("unsure": ~1 % of the rows over a whole 4,096-centre seeding
    on SmolLM2 activations, more in the first steps) are scored by the plain step's own
    float32 product on their rows only — the same values bit for bit where the BLAS
    computes a subset of rows as it computes them all (MKL and OpenBLAS do; a test
    compares the two paths). The step's potentials are then Σ_n w_n closest_n (the last
    entry of the step's cumulative sum) plus the unsure rows' changes: the plain sums in
    another order, so the same centres unless two candidates' potentials agree to ~1e-13
    (a test compares the centres). A step with over ``_GATHER_SHARE`` of its rows unsure
    scores all of them; when the unsure share stays above ``_SCREEN_OFF_SHARE`` (data with
    no structure at this scale, or far from the origin) the screen turns off.
    """

    def __init__(self, s: torch.Tensor, sq: torch.Tensor, score_dtype: torch.dtype) -> None:
        dev, d = s.device, s.shape[1]
        self.s, self.sq = s, sq
        self.norm = sq.sqrt()
        u = unit_roundoff(score_dtype, dev)
        gamma = (d + 1) * accumulation_roundoff(score_dtype, dev)
        gamma /= max(1.0 - gamma, 1e-3)
        self.k1, k2 = 1.25 * (8 * u + 2 * gamma), 4 * u
        slack = 4 * (d + 2) * unit_roundoff(s.dtype, dev)
        # [p, ‖p‖, 1] padded to a multiple of 32 columns (the bias rides on the ones: one
        # plain product, as fast as the unpadded one on AMX; 577 columns cost ~40 % more)
        self.width = d + 2 + (-(d + 2)) % 32
        self.aug = torch.zeros(s.shape[0], self.width, dtype=score_dtype, device=dev)
        self.aug[:, :d] = s
        self.aug[:, d] = self.norm
        self.aug[:, d + 1] = 1.0
        self.bias = (1 - k2 - 2 * slack) * sq
        self.keep = (1 - 2 * slack) * sq
        super().__init__()
        self._rows: torch.Tensor | None = None  # gathered rows of aug, every step

    @staticmethod
    def pays(s: torch.Tensor, score_dtype: torch.dtype | None) -> bool:
        """Whether screening in ``score_dtype`` can help points ``s`` (a lower precision)."""
        if score_dtype is None or score_dtype == s.dtype:
            return False
        return unit_roundoff(score_dtype, s.device) > 64 * unit_roundoff(s.dtype, s.device)

    def unsure(
        self, idx: torch.Tensor, closest: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The rows a candidate ``idx`` may be nearer to than ``closest``: every other
        row's d32 to every candidate is ≥ its ``closest``. With ``rows`` (the rows another
        screen left unsure, ascending) only those are screened — gathered into a buffer
        kept for the seeding, or all rows screened and the answer taken on ``rows`` where
        they are over ``_GATHER_SHARE`` of them — and the answer is a subset of them."""
        d, n = self.s.shape[1], len(idx)
        c = torch.zeros(self.width, n, dtype=self.s.dtype, device=self.s.device)
        c[:d] = -2 * self.s[idx].T
        c[d] = -self.k1 * self.norm[idx]
        c[d + 1] = self.bias[idx]
        c = c.to(self.aug.dtype)
        m = self.aug.shape[0]
        if rows is None or len(rows) > _GATHER_SHARE * m:
            v = self.aug @ c
            near = (v < (closest - self.keep)[:, None]).any(1)
            out = near.nonzero().flatten() if rows is None else rows[near[rows]]
        else:
            if self._rows is None:
                self._rows = torch.empty(
                    int(_GATHER_SHARE * m) + 1, self.width, dtype=self.aug.dtype, device=c.device
                )
            part = torch.index_select(self.aug, 0, rows, out=self._rows[: len(rows)])
            v = part @ c
            out = rows[(v < (closest[rows] - self.keep[rows])[:, None]).any(1)]
        return self.counted(m if rows is None else len(rows), out)

    def near(self, idx: torch.Tensor, closest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, D): the rows a candidate ``idx`` may be nearer to than ``closest``, and
        their min(d32(p_n, p_idx), closest_n) (len(rows), len(idx)) as the plain step
        computes it; every other row's is closest_n for every candidate."""
        return _exact(self.s, self.sq, idx, closest, self.unsure(idx, closest))


def _exact(
    s: torch.Tensor,
    sq: torch.Tensor,
    idx: torch.Tensor,
    closest: torch.Tensor,
    rows: torch.Tensor,
    buffer: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, min(d32(p_n, p_idx), closest_n)) for ``rows``, scored by the plain step's own
    float32 product — all rows at once where gathering over ``_GATHER_SHARE`` of them
    would cost more (then ``rows`` is every row). ``buffer`` (at least
    ``_GATHER_SHARE`` · rows × d, reused from step to step) receives the gathered rows
    without a fresh allocation (a fresh one costs ~5× the copy in page faults)."""
    m = s.shape[0]
    if len(rows) > _GATHER_SHARE * m:
        rows = torch.arange(m, device=s.device)
        d32 = s @ s[idx].T
        d32.mul_(-2).add_(sq[:, None])
    else:
        if buffer is not None and len(rows) <= len(buffer):
            part = torch.index_select(s, 0, rows, out=buffer[: len(rows)])
        else:
            part = s[rows]
        d32 = part @ s[idx].T
        d32.mul_(-2).add_(sq[rows, None])
    d32.add_(sq[idx]).clamp_(min=0)
    return rows, torch.minimum(d32, closest[rows, None], out=d32)


class _Projected(_Running):
    """The rows a greedy k-means++ step's candidates may be nearer to, screened by a
    certified lower bound from a rank-r projection (r ≪ d): one (rows × (r + 2)) product
    where the plain step takes a (rows × d) one, in the data precision, so it pays on any
    CPU or GPU (:class:`_Screen` needs fast bfloat16).

    With V (d × r) orthonormal (the top principal directions of the sample's rows scaled
    to unit norm, so the massive rows do not take them; any orthonormal V is exact, a good
    one prunes more), y_n = Vᵀ p_n and e_n = ‖p_n − V y_n‖ (float64, stored in
    the data precision), Cauchy–Schwarz on the residual gives for the exact squared
    distance T of the stored values

        T(n, c) = ‖y_n − y_c‖² + ‖(I − VVᵀ)(p_n − p_c)‖² ≥ ‖y_n − y_c‖² + (e_n − e_c)² = B(n, c),

    the whole residual energy and none of its alignment. B is taken as one product with two
    extra columns, V_nc = [y_n, e_n, 1] · [−2 y_c, −2 e_c, b_c]ᵀ, b_c = ‖y_c‖² + e_c² −
    σ ‖p_c‖², σ = 8 (d + 2) u + 8 (r + 3) u (twice the rounding of the step's own d32 —
    |d32 − T| ≤ 4 (d + 2) u (‖p_n‖² + ‖p_c‖²), as for :class:`_Screen` — plus twice that of
    this product and of storing y, e; u of the data precision). A row with V_nc ≥
    closest_n − ‖y_n‖² − e_n² + σ ‖p_n‖² for every candidate c has d32(n, c) ≥ closest_n for
    all of them: the step leaves it as it is. The others are scored exactly
    (:func:`_exact`). On SmolLM2's activations at 4,096 centres (AMD EPYC, float32) a
    whole layer-3 seeding runs 3.4× faster than the plain step, 10 % of the rows scored
    exactly; at layer 15, where 64 directions left 36 % of the rows over the first 1,024
    steps, ``_RANK`` = 128 leaves 17 % (CONTRIBUTING.md, "The screen's own product, and
    its rank"). The triangle inequality from the chosen centres prunes less at a higher
    cost (measured in its "The projected seeding screen").
    """

    def __init__(self, s: torch.Tensor, sq: torch.Tensor, rank: int) -> None:
        dev, (m, d) = s.device, s.shape
        u = unit_roundoff(s.dtype, dev)
        self.sigma = 8 * (d + 2) * u + 8 * (rank + 3) * u
        sub = s[:: max(1, m // _BASIS_ROWS)].to(torch.float64)
        sub = sub / sub.norm(dim=1, keepdim=True).clamp(min=1e-30)  # massive rows count once
        basis = torch.linalg.eigh(sub.T @ sub).eigenvectors[:, -rank:]
        self.width = rank + 2 + (-(rank + 2)) % 8
        self.aug = torch.zeros(m, self.width, dtype=s.dtype, device=dev)
        base = torch.empty(m, dtype=s.dtype, device=dev)
        for lo in range(0, m, 1 << 16):
            part = s[lo : lo + (1 << 16)].to(torch.float64)
            y = part @ basis
            ysq = y.square().sum(1)
            e = (part.square().sum(1) - ysq).clamp_(min=0).sqrt_()
            self.aug[lo : lo + len(part), :rank] = y
            self.aug[lo : lo + len(part), rank] = e
            base[lo : lo + len(part)] = ysq + e.square()
        self.aug[:, rank + 1] = 1.0
        self.rank = rank
        # ‖y‖² + e² − σ ‖p‖²: b_c of a candidate, and closest_n minus it a row's threshold
        self.keep = base - self.sigma * sq
        super().__init__()
        self._v: torch.Tensor | None = None  # the screen product's output, every step

    @staticmethod
    def pays(s: torch.Tensor) -> bool:
        """Whether the data precision is fine enough for the bound to prune (not TF32) and
        the data wide enough for a projection to save work."""
        return s.shape[1] >= 16 and unit_roundoff(s.dtype, s.device) <= 2.0**-20

    def unsure(self, idx: torch.Tensor, closest: torch.Tensor) -> torch.Tensor:
        """The rows a candidate ``idx`` may be nearer to than ``closest``: min over the
        candidates of V_nc below the row's threshold. The product's candidate columns
        are padded with zeros to a multiple of ``_SCREEN_COLUMNS`` and written into one
        buffer reused by every step (the screen ran 2.5–3.1× slower with a fresh
        11-column product on the AMD EPYC; CONTRIBUTING.md, "The screen's own product,
        and its rank"); the padding's columns are never read."""
        r, n = self.rank, len(idx)
        cols = n + (-n) % _SCREEN_COLUMNS
        c = torch.zeros(self.width, cols, dtype=self.aug.dtype, device=self.aug.device)
        c[: r + 1, :n] = -2 * self.aug[idx, : r + 1].T
        c[r + 1, :n] = self.keep[idx]
        if self._v is None or self._v.shape[1] != cols:
            self._v = torch.empty(self.aug.shape[0], cols, dtype=c.dtype, device=c.device)
        v = torch.mm(self.aug, c, out=self._v)[:, :n]
        return self.counted(len(v), (v.amin(1) < closest - self.keep).nonzero().flatten())


_RANK = 128  # projected directions, at most d / 4 (CONTRIBUTING.md: the screen's rank)
_RETRY = 16
_BASIS_ROWS = 65_536  # rows the directions are estimated from


def greedy_kmeans_pp(
    points: torch.Tensor,
    k: int,
    generator: torch.Generator,
    n_local_trials: int | None = None,
    weights: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    score_dtype: torch.dtype | None = None,
    counts: dict[str, int] | None = None,
    prune: bool = True,
    resume: dict[str, Any] | None = None,
    save: Callable[[dict[str, Any]], None] | None = None,
    save_every: float = 120.0,
) -> torch.Tensor:
    """Greedy k-means++ (Arthur & Vassilvitskii 2007; scikit-learn's variant) on ``points``
    (m, d), optionally weighted: the first centre is drawn ∝ weight; each next one from
    ``n_local_trials`` (default 2 + ⌊ln k⌋) candidates drawn ∝ w·D², keeping the candidate
    that leaves the smallest potential Σ_n w_n min_c ‖p_n − c‖². Returns (k, d) float64.

    Distances are the expansion in ``dtype``; with a lower ``score_dtype`` (the fit's
    calibrated score precision, bfloat16 where it is fast) each step's candidate distances
    are screened in it and only rows a candidate may be nearer to are scored in ``dtype``
    (:class:`_Screen`). Before that, with ``prune`` (default), a bound from a rank-128
    projection rules out most rows in a product ~1/4 the size (:class:`_Projected`).
    Both give the plain float32 step's centres (a step's potentials
    are summed in another order: the same centres unless two candidates' potentials agree
    to ~1e-13), many times faster in a large seeding. ``counts``, if given, receives each
    screen's ``screen_scored`` / ``screen_rescored`` and ``projected_scored`` /
    ``projected_rescored`` row counts (rows a step would score, rows it scored exactly).
    With fewer distinct points than k, the remaining centres are unused points in order.

    **Resuming.** With ``save``, every ``save_every`` seconds (after a whole step) it is
    given the seeding's state — the chosen rows, each row's current distance, the
    generator's state and the screens' running shares (:func:`seeding_state`); the same
    call with that state as ``resume`` continues from there to the centres the
    uninterrupted call returns, bit for bit (a 16,384-centre seeding of 786k rows runs
    for an hour on two cores: a kill loses at most ``save_every`` of it). A state that
    does not fit these points and ``k`` raises ``ValueError`` naming what differs.
    """
    dev = points.device
    s = points.to(dtype)
    m = s.shape[0]
    trials = n_local_trials or 2 + int(math.log(k))
    w = torch.ones(m, dtype=dtype, device=dev) if weights is None else weights.to(dev, dtype)
    sq = s.square().sum(1)
    screen = _Screen(s, sq, score_dtype) if score_dtype and _Screen.pays(s, score_dtype) else None
    # both where both pay: the bfloat16 screen then scores only the projected one's rows
    # (CONTRIBUTING.md, "Both screens on an AVX-512-BF16 CPU")
    proj = _Projected(s, sq, min(_RANK, s.shape[1] // 4)) if prune and _Projected.pays(s) else None
    screens = [part for part in (proj, screen) if part is not None]

    def dist_sq(idx: torch.Tensor) -> torch.Tensor:
        """(m, len(idx)) squared distances, clamped at 0 (one tall matmul)."""
        idx = idx.to(dev)
        out = s @ s[idx].T
        return out.mul_(-2).add_(sq[:, None]).add_(sq[idx]).clamp_(min=0)

    buffer: torch.Tensor | None = None  # gathered rows, reused by every step
    used = torch.zeros(m, dtype=torch.bool, device=dev)
    if resume is None:
        w64 = w.to("cpu", torch.float64)
        first = int(torch.multinomial(w64 / w64.sum(), 1, generator=generator))
        chosen = [first]
        closest = dist_sq(torch.tensor([first]))[:, 0]
        closest[first] = 0.0
    else:
        chosen, closest = _restore(resume, m, k, s.dtype, generator, screens)
        closest = closest.to(dev)
    used[torch.tensor(chosen, device=dev)] = True
    last_save = time.monotonic()
    for _ in range(len(chosen), k):
        weighted = (w * closest).to("cpu", torch.float64)
        cum = torch.cumsum(weighted, 0)
        if not float(cum[-1]) > 0:  # every point coincides with a centre: take unused points
            free = torch.nonzero(~used).flatten()
            if len(free) == 0:
                break
            nxt = int(free[0])
            closest = torch.minimum(closest, dist_sq(torch.tensor([nxt]))[:, 0])
        else:
            draws = torch.rand(trials, generator=generator, dtype=torch.float64) * cum[-1]
            cand = torch.searchsorted(cum, draws).clamp_(max=m - 1).to(dev)
            rows = proj.unsure(cand, closest) if proj is not None and proj.use() else None
            if screen is not None and screen.use():  # on the projected screen's rows, if any
                rows = screen.unsure(cand, closest, rows)
            if rows is not None:
                if buffer is None:
                    buffer = torch.empty(
                        int(_GATHER_SHARE * m) + 1, s.shape[1], dtype=s.dtype, device=dev
                    )
                rows, near = _exact(s, sq, cand, closest, rows, buffer)
                wr = w[rows]
                change = (near * wr[:, None]).sum(0, dtype=torch.float64)
                change -= (closest[rows] * wr).sum(dtype=torch.float64)
                best = int(torch.argmin(float(cum[-1]) + change.cpu()))
                closest = closest.clone()
                closest[rows] = near[:, best]
            else:
                dist = torch.minimum(dist_sq(cand), closest[:, None])
                pots = (dist * w[:, None]).sum(0, dtype=torch.float64)
                best = int(torch.argmin(pots))
                closest = dist[:, best].contiguous()
            nxt = int(cand[best])
        closest[nxt] = 0.0
        chosen.append(nxt)
        used[nxt] = True
        if save is not None and len(chosen) < k and time.monotonic() - last_save >= save_every:
            save(seeding_state(chosen, closest, generator, screens))
            last_save = time.monotonic()
    if counts is not None:
        for name, part in (("screen", screen), ("projected", proj)):
            if part is not None:
                counts.update({f"{name}_scored": part.scored, f"{name}_rescored": part.rescored})
    return points[torch.tensor(chosen, device=dev)].to(torch.float64).clone()


def seeding_state(
    chosen: list[int],
    closest: torch.Tensor,
    generator: torch.Generator,
    screens: Sequence[_Running],
) -> dict[str, Any]:
    """A greedy k-means++ seeding's state after a whole step (CPU copies): ``chosen`` (the
    rows taken, in order), ``closest`` (each row's squared distance to them, as the steps
    computed it), ``rng`` (the generator's state) and ``screen`` (each running screen's
    share, steps and row counts, 4 values a screen, the projected one first: which rows a
    step scores exactly, hence its sums' order)."""
    run = [x for part in screens for x in part.progress()] or [0.0, 0.0, 0.0, 0.0]
    return {
        "chosen": torch.tensor(chosen, dtype=torch.long),
        "closest": closest.detach().to("cpu", copy=True),
        "rng": generator.get_state(),
        "screen": torch.tensor(run, dtype=torch.float64),
    }


def _restore(
    state: dict[str, Any],
    m: int,
    k: int,
    dtype: torch.dtype,
    generator: torch.Generator,
    screens: Sequence[_Running],
) -> tuple[list[int], torch.Tensor]:
    """(chosen, closest) of a saved :func:`seeding_state`, the generator and the screens set
    back; ``ValueError`` when it was not saved for ``m`` points of ``dtype`` and ``k``. A
    state with one screen's record where two screens run (saved before they ran together,
    when the bfloat16 screen replaced the projected one) sets back the last of them."""
    if not isinstance(state, dict):
        raise ValueError(f"the seeding state is a {type(state).__name__}, not a dict")
    chosen, closest = state.get("chosen"), state.get("closest")
    rng, run = state.get("rng"), state.get("screen")
    if not (isinstance(chosen, torch.Tensor) and chosen.dtype == torch.long and chosen.ndim == 1):
        raise ValueError("the seeding state's chosen rows are not a 1-D int64 tensor")
    if not 1 <= len(chosen) < k:
        raise ValueError(f"the seeding state holds {len(chosen)} chosen rows for k = {k}")
    if int(chosen.min()) < 0 or int(chosen.max()) >= m or len(chosen.unique()) != len(chosen):
        raise ValueError(f"the seeding state's chosen rows are not distinct rows of {m}")
    if not (isinstance(closest, torch.Tensor) and closest.shape == (m,)):
        shape = tuple(closest.shape) if isinstance(closest, torch.Tensor) else closest
        raise ValueError(f"the seeding state's distances have shape {shape}, the sample ({m},)")
    if closest.dtype != dtype:
        raise ValueError(f"the seeding state's distances are {closest.dtype}, the fit's {dtype}")
    if not (bool(torch.isfinite(closest).all()) and float(closest.min()) >= 0):
        raise ValueError("the seeding state's distances are not finite and non-negative")
    if not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8):
        raise ValueError("the seeding state's generator state is not a uint8 tensor")
    sizes = {(4,), (4 * len(screens),)}
    if not (isinstance(run, torch.Tensor) and run.shape in sizes and run.dtype == torch.float64):
        raise ValueError(
            f"the seeding state's screen record is not {' or '.join(str(n[0]) for n in sorted(sizes))} "
            "float64 values"
        )
    try:
        generator.set_state(rng)
    except RuntimeError as err:
        raise ValueError(f"the seeding state's generator state is invalid ({err})") from None
    values = run.tolist()
    parts = screens if len(values) == 4 * len(screens) else screens[-1:]
    for i, part in enumerate(parts):
        part.restore(values[4 * i : 4 * i + 4])
    return [int(i) for i in chosen], closest.clone()


def _min_dist_sq(x: torch.Tensor, cands: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """min over candidates of ‖x − c‖², per row (float64), in row chunks."""
    c = cands.to(x.device, dtype)
    csq = c.square().sum(1)
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    step = max(1, (1 << 22) // max(c.shape[0], 1))
    for s in range(0, x.shape[0], step):
        xs = x[s : s + step].to(dtype)
        best = torch.addmm(csq, xs, c.T, beta=1, alpha=-2).min(1).values
        out[s : s + step] = (best.to(torch.float64) + xs.square().sum(1).double()).clamp_(min=0)
    return out


def _nearest(x: torch.Tensor, cands: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    c = cands.to(x.device, dtype)
    csq = c.square().sum(1)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    step = max(1, (1 << 22) // max(c.shape[0], 1))
    for s in range(0, x.shape[0], step):
        out[s : s + step] = torch.addmm(csq, x[s : s + step].to(dtype), c.T, alpha=-2).argmin(1)
    return out


def kmeans_parallel(
    batches: Batches,
    k: int,
    seed: int,
    reducer: LocalReducer,
    *,
    rounds: int = 5,
    oversampling: float = 2.0,
    n_local_trials: int | None = None,
    dtype: torch.dtype = torch.float32,
    score_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """k-means|| (Bahmani et al. 2012) over all rows of all ranks.

    One uniform row starts the candidate set C; φ = Σ_n D²(x_n) with D the distance to C.
    Each of ``rounds`` passes keeps every row independently with probability
    min(1, ℓ D²(x)/φ), ℓ = ``oversampling`` × k, and adds the kept rows of every rank to C.
    A last pass weights each candidate by the rows nearest to it; weighted greedy
    k-means++ on the candidates picks the k centres. If fewer than k candidates were
    drawn, uniform rows complete the set. Costs 3 + 2 × ``rounds`` passes over the data.
    """
    start = uniform_sample(batches, 1, seed, reducer)
    cands = start
    d2: list[torch.Tensor] = []
    for b in batches():
        d2.append(_min_dist_sq(b, cands, dtype))
    ell = oversampling * k
    for r in range(rounds):
        total = torch.tensor([float(sum(float(t.sum()) for t in d2))], dtype=torch.float64)
        phi = float(reducer.sum_(total))
        if not phi > 0:
            break
        gen = _generator(seed, reducer.rank, 100 + r)
        picked: list[torch.Tensor] = []
        for b, dist in zip(batches(), d2, strict=True):
            u = torch.rand(b.shape[0], generator=gen, dtype=torch.float64)
            keep = (u.to(dist.device) < (ell * dist / phi)).nonzero().flatten()
            if len(keep):
                picked.append(b[keep].to("cpu", torch.float64))
        mine = torch.cat(picked) if picked else torch.empty(0, start.shape[1], dtype=torch.float64)
        new = torch.cat(reducer.gather(mine))
        if len(new) == 0:
            continue
        cands = torch.cat([cands, new])
        d2 = [
            torch.minimum(dist, _min_dist_sq(b, new, dtype))
            for b, dist in zip(batches(), d2, strict=True)
        ]
    if len(cands) < k:
        extra = uniform_sample(batches, k, seed + 1, reducer)
        cands = torch.cat([cands, extra[: k - len(cands)]])
    weights = torch.zeros(len(cands), dtype=torch.float64)
    for b in batches():
        if b.shape[0]:
            lab = _nearest(b, cands, dtype)
            weights += torch.bincount(lab.cpu(), minlength=len(cands)).to(torch.float64)
    weights = reducer.sum_(weights)
    weights = weights.clamp(min=1e-12)  # a candidate may be nobody's nearest after ties
    return greedy_kmeans_pp(
        cands, k, _generator(seed, 999), n_local_trials, weights, dtype, score_dtype
    )


def random_rows(sample: torch.Tensor, k: int) -> torch.Tensor:
    """The first k rows of a uniform random sample (k distinct rows of the data)."""
    return sample[:k].to(torch.float64).clone()
