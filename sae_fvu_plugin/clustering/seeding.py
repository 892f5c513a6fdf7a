"""Initial centroids: greedy k-means++, k-means||, random rows, from streamed and sharded data.

Squared distances use the expansion ‖a − b‖² = ‖a‖² − 2 a·b + ‖b‖² on data already centred
by the global mean (so the expansion keeps its accuracy when activations carry a mean).
Every random draw comes from a ``torch.Generator`` seeded from (seed, rank, round), so a
seeding is reproducible for a given data order and number of ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

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
        q = (1 - a) / n + (a * sq / total if total > 0 else 0.0)
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


class _Screen:
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
        self.share = 0.0  # moving average of the unsure share of rows
        self.rescored = 0
        self.scored = 0

    @staticmethod
    def pays(s: torch.Tensor, score_dtype: torch.dtype | None) -> bool:
        """Whether screening in ``score_dtype`` can help points ``s`` (a lower precision)."""
        if score_dtype is None or score_dtype == s.dtype:
            return False
        return unit_roundoff(score_dtype, s.device) > 64 * unit_roundoff(s.dtype, s.device)

    @property
    def on(self) -> bool:
        return self.share <= _SCREEN_OFF_SHARE

    def near(self, idx: torch.Tensor, closest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, D): the rows a candidate ``idx`` may be nearer to than ``closest``, and
        their min(d32(p_n, p_idx), closest_n) (len(rows), len(idx)) as the plain step
        computes it; every other row's is closest_n for every candidate."""
        d = self.s.shape[1]
        c = torch.zeros(self.width, len(idx), dtype=self.s.dtype, device=self.s.device)
        c[:d] = -2 * self.s[idx].T
        c[d] = -self.k1 * self.norm[idx]
        c[d + 1] = self.bias[idx]
        v = self.aug @ c.to(self.aug.dtype)
        m = self.s.shape[0]
        rows = (v < (closest - self.keep)[:, None]).any(1).nonzero().flatten()
        self.rescored += len(rows)
        self.scored += m
        self.share = 0.9 * self.share + 0.1 * len(rows) / max(m, 1)
        if len(rows) > _GATHER_SHARE * m:  # gathering them would cost more: all rows
            rows = torch.arange(m, device=self.s.device)
            d32 = self.s @ self.s[idx].T
            d32.mul_(-2).add_(self.sq[:, None])
        else:
            d32 = self.s[rows] @ self.s[idx].T
            d32.mul_(-2).add_(self.sq[rows, None])
        d32.add_(self.sq[idx]).clamp_(min=0)
        return rows, torch.minimum(d32, closest[rows, None], out=d32)


def greedy_kmeans_pp(
    points: torch.Tensor,
    k: int,
    generator: torch.Generator,
    n_local_trials: int | None = None,
    weights: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    score_dtype: torch.dtype | None = None,
    counts: dict[str, int] | None = None,
) -> torch.Tensor:
    """Greedy k-means++ (Arthur & Vassilvitskii 2007; scikit-learn's variant) on ``points``
    (m, d), optionally weighted: the first centre is drawn ∝ weight; each next one from
    ``n_local_trials`` (default 2 + ⌊ln k⌋) candidates drawn ∝ w·D², keeping the candidate
    that leaves the smallest potential Σ_n w_n min_c ‖p_n − c‖². Returns (k, d) float64.

    Distances are the expansion in ``dtype``; with a lower ``score_dtype`` (the fit's
    calibrated score precision, bfloat16 where it is fast) each step's candidate distances
    are screened in it and only rows a candidate may be nearer to are scored in ``dtype``
    (:class:`_Screen`): the same centres, several times faster in a large seeding.
    ``counts``, if given, receives the screen's ``scored`` and ``rescored`` row counts.
    With fewer distinct points than k, the remaining centres are unused points in order.
    """
    dev = points.device
    s = points.to(dtype)
    m = s.shape[0]
    trials = n_local_trials or 2 + int(math.log(k))
    w = torch.ones(m, dtype=dtype, device=dev) if weights is None else weights.to(dev, dtype)
    sq = s.square().sum(1)
    screen = _Screen(s, sq, score_dtype) if score_dtype and _Screen.pays(s, score_dtype) else None

    def dist_sq(idx: torch.Tensor) -> torch.Tensor:
        """(m, len(idx)) squared distances, clamped at 0 (one tall matmul)."""
        idx = idx.to(dev)
        out = s @ s[idx].T
        return out.mul_(-2).add_(sq[:, None]).add_(sq[idx]).clamp_(min=0)

    w64 = w.to("cpu", torch.float64)
    first = int(torch.multinomial(w64 / w64.sum(), 1, generator=generator))
    chosen = [first]
    used = torch.zeros(m, dtype=torch.bool, device=dev)
    used[first] = True
    closest = dist_sq(torch.tensor([first]))[:, 0]
    closest[first] = 0.0
    for _ in range(1, k):
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
            cand = torch.searchsorted(cum, draws).clamp_(max=m - 1)
            if screen is not None and screen.on:
                rows, near = screen.near(cand.to(dev), closest)
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
    if counts is not None and screen is not None:
        counts.update(scored=screen.scored, rescored=screen.rescored)
    return points[torch.tensor(chosen, device=dev)].to(torch.float64).clone()


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
