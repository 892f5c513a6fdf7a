"""Lloyd's k-means iterations over streamed, possibly sharded data.

One pass over the data per iteration: assign every row to its nearest centroid, then
move each centroid to the mean of its rows. The pass → reduce → update loop below does
not know whether it runs on one process or many: the per-iteration sums, counts and
label-change count are combined by the reducer in one ``all_reduce``.

**Assignment with bounds (Hamerly 2010).** Each row keeps an upper bound u on the
distance to its centroid and a lower bound l on the distance to every other centroid.
When the centroids move by δ_k, u += δ_{a(n)} and l −= max_{k≠a(n)} δ_k; a row whose
u ≤ l cannot have changed its nearest centroid and is skipped. Otherwise u is tightened
to the exact distance and, if still u > l, the row's scores against every centroid are
recomputed. Late iterations, where few rows are near a boundary, then cost a fraction of
a full pass; the labels are those of plain Lloyd.

**Scores.** Full assignments use ‖z − c‖² = ‖z‖² − 2 z·c + ‖c‖² as one chunked matmul in
the compute dtype (top two per row). The bounds are widened by the expansion's rounding
error (32 ε (‖z‖² + max ‖c‖²)), so a row is skipped only when that is certain. Centroid
sums, counts and inertia are float64; the returned inertia Σ_n ‖z_n − c_{a(n)}‖² is
computed directly in float64, not from the expansion.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .precision import accumulation_roundoff, unit_roundoff
from .reduce import LocalReducer
from .seeding import _generator
from .source import sub_rows

Batches = Callable[[], Iterator[torch.Tensor]]

_SCORE_ELEMENTS = 1 << 22  # rows × k of one score chunk (16 MiB in float32)
_ROUNDING = 32.0
_FULL_FRACTION = 0.8  # above this share of rows needing scores, score the whole batch


def _eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


@dataclass
class Rows:
    """This rank's rows of one batch: label, and Hamerly's upper / lower bounds."""

    labels: torch.Tensor  # int64
    upper: torch.Tensor  # float64
    lower: torch.Tensor  # float64
    sq: torch.Tensor | None = None  # ‖z‖² per row (float64), kept between iterations


@dataclass
class LloydState:
    """Where a run stands; everything needed to resume it to the identical result."""

    centroids: torch.Tensor  # (k, d) float64
    iteration: int = 0
    converged: bool = False
    history: list[float] = field(default_factory=list)  # inertia of each iteration's labels
    seconds: list[float] = field(default_factory=list)  # wall time of each iteration
    changed: list[int] = field(default_factory=list)  # labels changed in each iteration
    scored: list[float] = field(default_factory=list)  # share of rows scored in full
    rows: list[Rows] | None = None
    movers: torch.Tensor | None = None  # centroids that jumped in the last update


_CANDIDATES = 8  # scores kept per row; rows with more candidates are rescored a level up
_TILE = 32  # half-precision score matmuls: the row width padded to a multiple of this


def _group_size(k: int) -> int:
    """Centroids per group for the grouped top-``_CANDIDATES`` (0: plain ``topk``).

    A row's smallest scores lie in the groups with the smallest minima, so the minima of
    contiguous groups (one vectorised pass) then a top-k over the best groups' columns
    give the same values as ``topk`` over all k columns at ~60 % of its cost at 16,384
    centroids (groups of 128; ~85 % at 4,096 with 64; slower below, where ``topk`` is used).
    """
    return 128 if k >= 8192 else 64 if k >= 4096 else 0


def _smallest(scores: torch.Tensor, m: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``m`` smallest scores per row and their columns (sorted), as ``topk``."""
    if not group:
        return scores.topk(m, dim=1, largest=False)
    r, kp = scores.shape
    best = scores.view(r, kp // group, group).amin(2).topk(m, dim=1, largest=False).indices
    cols = (best[:, :, None] * group + torch.arange(group, device=scores.device)).view(r, -1)
    v, j = scores.gather(1, cols).topk(m, dim=1, largest=False)
    return v, cols.gather(1, j)


_DEMOTE_SHARE = 0.25  # a chunk escalating more rows than this: go up a precision for good
_REF_CENTROIDS = 16  # centroids whose smallest score is a row's reference r


class Assigner:
    """Nearest centroids for one set of centroids (float64 master, data-dtype copy), every
    label certified equal to the float64 argmin.

    **Certified scores.** The score of centroid j for row x is T_j = ‖c_j‖² − 2 x·c_j
    (‖x − c_j‖² = ‖x‖² + T_j). It is computed, less a per-row reference r, by one matmul in
    the score dtype (bfloat16, float32 or float64; its accumulator float32 or wider) with
    three extra columns, so that before its output is rounded the value P_j is a *lower
    bound* of T_j − r within 2 e_j, e_j = κ₁ ‖x‖ ‖c_j‖ + κ₂ ‖c_j‖²:

        P_j = [x, ‖x‖, r, 1] · [−2 c_j, −κ₁ ‖c_j‖, −1, (1 − κ₂) ‖c_j‖²]ᵀ,

        T_j − r − 2 e_j − s ≤ P_j ≤ T_j − r + s,   s = 1.25 γ |r|,

    κ₁ = 1.25 (4u + 2γ), κ₂ = 4u + 2γ, with u the unit roundoff of the score dtype and
    γ = (d + 3) u_acc of its accumulator: the inputs rounded to the score dtype cost
    (2u + u²) Σ |x_i 2c_i| ≤ (4u + 2u²) ‖x‖ ‖c‖ (Cauchy–Schwarz), the accumulation γ times
    the sum of the terms' sizes (2 ‖x‖ ‖c‖ in κ₁, ‖c‖² in κ₂ — now inside the sum, where
    float32's γ ≫ u — and |r| in s), the rounded ‖c‖² and κ-columns at most u of their
    terms, with 25 % to spare. The matmul returns V_j = fl(P_j), with
    |V_j − P_j| ≤ u′ |V_j|, u′ = u / (1 − u); so

        L_j = V_j − u′ |V_j| − s ≤ T_j − r ≤ V_j + u′ |V_j| + 2 e_j + s = U_j.

    The reference r (the smallest score against a few fixed centroids, any value is
    exact: it shifts a row's scores alike) keeps |V_j| small near the row's minimum, so
    the output's rounding — a quarter of the bound when it was taken as u (‖c‖² + 2 ‖x‖
    ‖c‖) — no longer widens it; on N(0, 1) rows and Lloyd centroids the rows with more
    than 8 candidates in bfloat16 fell from 7–13 % to ~1 % (CONTRIBUTING.md).

    L_j grows with V_j, so with b the row's smallest V, the true nearest centroid j* has
    L_{j*} ≤ T_{j*} − r ≤ T_b − r ≤ U_b: it is among the candidates {j : L_j ≤ U_b}, a
    prefix of the row's sorted V. A row with one candidate has its label; several (of
    the ``_CANDIDATES`` smallest) are rescored by the exact float64 distance ‖x − c_j‖²
    (ties: the lowest index, as ``argmin``); rows with more candidates are scored again
    one precision up (bfloat16 → float32 → float64) and, at float64, against every
    centroid directly. When a chunk escalates more than a quarter of its rows (data
    without cluster structure at this k: every centroid near every row, relative to the
    bound), the precision is not paying: the rest of the pass, and the next Lloyd
    iterations, score one level up (``demoted``). The bounds kept for Hamerly's pruning
    come from the same certified intervals (‖x‖² + r + U_b and ‖x‖² + r + L of the
    second smallest V).
    """

    def __init__(
        self, centroids: torch.Tensor, dtype: torch.dtype, score_dtype: torch.dtype | None = None
    ) -> None:
        self.c64 = centroids
        self.c = centroids.to(dtype)
        self.dtype = dtype
        self.sq = self.c.square().sum(1)
        self.k, d = centroids.shape
        self.sq_max = float(self.sq.max()) if self.k else 0.0
        self.err = _ROUNDING * _eps(dtype)
        self.csq64 = centroids.square().sum(1)
        self.cn64 = self.csq64.sqrt()
        self.score_dtype = score_dtype or dtype
        dev = centroids.device
        u = unit_roundoff(self.score_dtype, dev)
        gamma = (d + 3) * accumulation_roundoff(self.score_dtype, dev)
        gamma /= max(1.0 - gamma, 1e-3)
        self.k1, self.k2 = 1.25 * (4 * u + 2 * gamma), 4 * u + 2 * gamma
        self.u_out, self.gamma = u / (1 - u), gamma
        sd = self.score_dtype
        # [c, κ₁/2 ‖c‖, 1/2, −(1 − κ₂)/2 ‖c‖²] (the matmul's alpha is −2), padded: the width
        # to a multiple of _TILE in half precision (AMX and tensor-core tiles: 577 columns
        # ran 1.6× slower than 608 at 16,384 centroids), the centroids to whole groups with
        # +inf scores (never candidates)
        half = sd in (torch.bfloat16, torch.float16)
        self.width = d + 3 + ((-(d + 3)) % _TILE if half else 0)
        self.group = _group_size(self.k)
        kp = self.k + ((-self.k) % self.group if self.group else 0)
        c_aug = torch.zeros(kp, self.width, dtype=centroids.dtype, device=dev)
        c_aug[: self.k, :d] = centroids
        c_aug[: self.k, d] = (self.k1 / 2) * self.cn64
        c_aug[: self.k, d + 1] = 0.5
        c_aug[: self.k, d + 2] = -((1 - self.k2) / 2) * self.csq64
        self.c_aug = c_aug.to(sd)
        bias = torch.zeros(kp, dtype=centroids.dtype, device=dev)
        bias[self.k :] = float("inf")
        self.bias = bias.to(sd)
        # the reference centroids: a few, spread over the index range
        n_ref = min(self.k, _REF_CENTROIDS, max(1, self.k // 16))
        ref = torch.linspace(0, max(self.k - 1, 0), n_ref, device=dev).round().long()
        # (d, n_ref) contiguous: a transposed view of (n_ref, d) took 10× longer
        self.ref_ct = centroids[ref].T.contiguous().to(dtype)
        self.ref_sq = self.csq64[ref].to(dtype)
        self.step = max(1, _SCORE_ELEMENTS // max(kp, 1))
        self._up: Assigner | None = None
        self.counts = {"rows": 0, "rescored": 0, "escalated": 0}  # full(): rows, near ties
        self.demoted = False  # too many near ties for this precision: the next one scores

    def next_dtype(self) -> torch.dtype:
        """The precision rows escalate to (float64 at the top)."""
        up = self._higher()
        return torch.float64 if up is None else up.score_dtype

    def _higher(self) -> Assigner | None:
        """The same centroids one precision up (None at float64)."""
        if self.score_dtype == torch.float64:
            return None
        if self._up is None:
            up = torch.float32 if self.score_dtype in (torch.bfloat16, torch.float16) else None
            if up is not None and unit_roundoff(up, self.c64.device) >= unit_roundoff(
                self.score_dtype, self.c64.device
            ):
                up = None  # float32 matmuls run as TF32 / bfloat16 here: go to float64
            self._up = Assigner(self.c64, self.dtype, up or torch.float64)
        return self._up

    def full(self, x: torch.Tensor, sq: torch.Tensor | None = None) -> Rows:
        """Certified labels against every centroid, and bounds for Hamerly's pruning
        (``sq``: the rows' ‖z‖² in float64, when already known)."""
        n = x.shape[0]
        dev = x.device
        if sq is None:
            sq = torch.empty(n, dtype=torch.float64, device=dev)
            sub = sub_rows(x.shape[1], dev)
            for s in range(0, n, sub):
                sq[s : s + sub] = x[s : s + sub].to(torch.float64).square().sum(1)
        lab = torch.empty(n, dtype=torch.long, device=dev)
        upper = torch.empty(n, dtype=torch.float64, device=dev)
        lower = torch.empty(n, dtype=torch.float64, device=dev)
        if self.k == 0 or n == 0:
            return Rows(lab, upper, lower, sq)
        self.counts["rows"] += n
        d = x.shape[1]
        m = min(self.k, _CANDIDATES)
        buf = torch.zeros(min(self.step, n), self.width, dtype=self.score_dtype, device=dev)
        buf[:, d + 2] = 1  # the ‖c‖² column's multiplier, the same for every chunk
        later: list[torch.Tensor] = []
        for s in range(0, n, self.step):
            if self.demoted:  # the rest one precision up, as a block
                later.append(torch.arange(s, n, device=dev))
                break
            xs = x[s : s + self.step]
            r = xs.shape[0]
            xsq = sq[s : s + r]
            xn = xsq.sqrt()
            a = buf[:r]
            a[:, :d] = xs
            a[:, d] = xn
            a[:, d + 1] = torch.addmm(self.ref_sq, xs, self.ref_ct, alpha=-2).amin(1)
            ref = a[:, d + 1].double()  # the value the matmul used, exactly
            slack = 1.25 * self.gamma * ref.abs() + 1e-30
            scores = torch.addmm(self.bias, a, self.c_aug.T, beta=1, alpha=-2)
            v, idx = _smallest(scores, m, self.group)
            v = v.double()
            low = torch.where(v.isinf(), v, v - self.u_out * v.abs() - slack[:, None])  # L_j
            best = idx[:, 0]
            thr = v[:, 0] + self.u_out * v[:, 0].abs() + slack
            thr += 2 * (self.k1 * xn * self.cn64[best] + self.k2 * self.csq64[best])  # U_b
            inside = low <= thr[:, None]  # candidates (a prefix: L grows with v)
            n_cand = inside.sum(1)
            over = (n_cand == m) & (m < self.k)
            label = best.clone()
            base = xsq + ref
            up = base + thr
            lo = base + low[:, 1] if m >= 2 else torch.full_like(xsq, float("inf"))
            many = torch.nonzero((n_cand > 1) & ~over).flatten()
            if len(many):  # exact distances to the first `width` (a non-candidate is farther)
                width = int(n_cand[many].max())
                cand = idx[many, :width]
                exact = self._exact(xs[many], cand)
                dmin = exact.min(1, keepdim=True).values
                pick = torch.where(exact == dmin, cand, self.k).min(1).values
                others = exact.masked_fill(cand == pick[:, None], float("inf")).min(1).values
                if width < m:
                    others = torch.minimum(others, base[many] + low[many, width])
                label[many], up[many], lo[many] = pick, dmin[:, 0], others
            self.counts["rescored"] += len(many)
            lab[s : s + r] = label
            upper[s : s + r] = up.clamp_(min=0).sqrt_()
            lower[s : s + r] = lo.clamp_(min=0).sqrt_()
            n_over = int(over.sum())
            if n_over:
                later.append(torch.nonzero(over).flatten() + s)
                if n_over > _DEMOTE_SHARE * r and self.score_dtype != torch.float64:
                    self.demoted = True
        if later:
            redo = torch.cat(later)
            self.counts["escalated"] += len(redo)
            higher = self._higher()
            if higher is not None:
                again = higher.full(x[redo], sq[redo])
                lab[redo], upper[redo], lower[redo] = again.labels, again.upper, again.lower
            else:
                lab[redo], upper[redo], lower[redo] = self._exhaustive(x[redo])
        return Rows(lab, upper, lower, sq)

    def _exact(self, x: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """‖x_i − c_{cand[i, r]}‖² in float64, directly (rows, width)."""
        out = torch.empty(cand.shape, dtype=torch.float64, device=x.device)
        step = max(1, sub_rows(x.shape[1], x.device) // max(cand.shape[1], 1))
        for s in range(0, x.shape[0], step):
            diff = x[s : s + step, None, :].to(torch.float64) - self.c64[cand[s : s + step]]
            out[s : s + step] = diff.square_().sum(2)
        return out

    def _exhaustive(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Label (lowest index on ties), distance and distance to the next centroid, every
        ‖x − c_j‖² in float64 directly: the last resort for rows with many near ties."""
        n = x.shape[0]
        best = torch.full((n,), float("inf"), dtype=torch.float64, device=x.device)
        second = best.clone()
        lab = torch.zeros(n, dtype=torch.long, device=x.device)
        width = max(2, sub_rows(x.shape[1], x.device) // max(n, 1))
        x64 = x.to(torch.float64)
        for j in range(0, self.k, width):
            dist = (x64[:, None, :] - self.c64[None, j : j + width]).square_().sum(2)
            cmin, cidx = dist.min(1)  # the first (lowest) index on ties
            rest = dist.scatter(1, cidx[:, None], float("inf")).min(1).values
            closer = cmin < best  # an earlier chunk keeps a tie
            second = torch.minimum(
                torch.where(closer, best, second), torch.where(closer, rest, cmin)
            )
            lab = torch.where(closer, cidx + j, lab)
            best = torch.where(closer, cmin, best)
        return lab, best.sqrt(), second.sqrt()

    def own(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Exact (float64) distance of each row to the given centroid."""
        out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
        step = sub_rows(x.shape[1], x.device)
        for s in range(0, x.shape[0], step):
            diff = x[s : s + step].to(torch.float64) - self.c64[labels[s : s + step]]
            out[s : s + step] = diff.square_().sum(1)
        return out.sqrt_()

    def mover_distance(self, x: torch.Tensor, rows: Rows, movers: torch.Tensor) -> torch.Tensor:
        """Lower bound on each row's distance to the movers other than its own centroid."""
        cm, sqm = self.c[movers], self.sq[movers]
        out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
        for s in range(0, x.shape[0], self.step):
            xs = x[s : s + self.step]
            scores = torch.addmm(sqm, xs, cm.T, beta=1, alpha=-2)
            own = rows.labels[s : s + self.step, None] == movers[None, :]
            scores.masked_fill_(own, float("inf"))
            xsq = xs.square().sum(1).double()
            best = scores.min(1).values.double() + xsq - self.err * (xsq + self.sq_max)
            out[s : s + self.step] = best.clamp_(min=0).sqrt_()
        return out

    def update(
        self, x: torch.Tensor, rows: Rows | None, movers: torch.Tensor | None = None
    ) -> tuple[Rows, int, int]:
        """New labels and bounds for the rows of ``x`` (``rows``: their state after the
        centroids moved, or None; ``movers``: centroids that jumped, whose distances are
        checked directly instead of widening every bound). Returns (rows, labels
        changed, rows scored in full)."""
        n = x.shape[0]
        if rows is None:
            return self.full(x), n, n
        lower = rows.lower
        if movers is not None and len(movers) and n:
            lower = torch.minimum(lower, self.mover_distance(x, rows, movers))
            rows = Rows(rows.labels, rows.upper, lower, rows.sq)
        need = torch.nonzero(rows.upper > lower).flatten()
        if len(need) == 0:
            return rows, 0, 0
        if len(need) > _FULL_FRACTION * n:  # pruning is not paying: score every row
            new = self.full(x, rows.sq)
            return new, int((new.labels != rows.labels).sum()), n
        upper = rows.upper.clone()
        own = self.own(x[need], rows.labels[need])
        upper[need] = own
        need = need[own > lower[need]]
        if len(need) == 0:
            return Rows(rows.labels, upper, lower, rows.sq), 0, 0
        part = self.full(x[need], None if rows.sq is None else rows.sq[need])
        labels, lower = rows.labels.clone(), lower.clone()
        changed = int((part.labels != labels[need]).sum())
        labels[need], upper[need], lower[need] = part.labels, part.upper, part.lower
        return Rows(labels, upper, lower, rows.sq), changed, len(need)


def movers_of(drift: torch.Tensor) -> torch.Tensor:
    """Centroids whose move is an outlier (> 8 × the median move; at most 64): their
    distances are checked directly, so one far jump (a refilled empty cluster) does not
    loosen every row's bound."""
    k = drift.shape[0]
    if k < 16:
        return drift.new_empty(0, dtype=torch.long)
    big = torch.nonzero(drift > 8 * drift.median()).flatten()
    if len(big) > 64:
        big = big[drift[big].topk(64).indices]
    return big


def _shift_bounds(rows: Rows, drift: torch.Tensor, movers: torch.Tensor) -> Rows:
    """u += δ_{a(n)}, l −= max_{k≠a(n), k not a mover} δ_k (movers are checked directly
    in the next assignment)."""
    rest = drift.clone()
    rest[movers] = 0
    if rest.shape[0] >= 2:
        top, idx = rest.topk(2)
        other = torch.where(rows.labels == idx[0], top[1], top[0])
    else:
        other = torch.zeros((), dtype=drift.dtype, device=drift.device)
    return Rows(
        rows.labels, rows.upper + drift[rows.labels], (rows.lower - other).clamp_(min=0), rows.sq
    )


_SPLIT_EPS = 1.0 / 1024


def split_clusters(
    centroids: torch.Tensor, counts: torch.Tensor, empty: torch.Tensor, generator: torch.Generator
) -> list[int]:
    """Refill each empty cluster by splitting a populous one, in place: cluster j is drawn
    with probability ∝ (count_j − 1); c_empty = c_j + δ, c_j = c_j − δ, with δ a small
    (2⁻¹⁰ relative) perturbation of alternating sign across dimensions (faiss's rule).
    Returns the clusters that could not be refilled (every cluster has one row)."""
    sizes = counts.to("cpu", torch.float64).clone()
    d = centroids.shape[1]
    sign = torch.ones(d, dtype=centroids.dtype, device=centroids.device)
    sign[1::2] = -1
    left: list[int] = []
    for e in empty.tolist():
        weights = (sizes - 1).clamp(min=0)
        if float(weights.sum()) <= 0:
            left.append(e)
            continue
        j = int(torch.multinomial(weights / weights.sum(), 1, generator=generator))
        c = centroids[j].clone()
        delta = _SPLIT_EPS * sign * (c.abs() + c.abs().mean() + 1e-12)
        centroids[e] = c + delta
        centroids[j] = c - delta
        sizes[e] = sizes[j] // 2
        sizes[j] -= sizes[e]
    return left


def _farthest_rows(
    batches: Batches,
    rows: list[Rows],
    assigner: Assigner,
    m: int,
    reducer: LocalReducer,
) -> torch.Tensor:
    """The m rows (of all ranks) farthest from their centroid, farthest first (float64)."""
    best_d = torch.empty(0, dtype=torch.float64)
    best_x: torch.Tensor | None = None
    for x, r in zip(batches(), rows, strict=True):
        if x.shape[0] == 0:
            continue
        dist = assigner.own(x, r.labels).cpu()
        top = dist.topk(min(m, len(dist)))
        cand_x = x[top.indices.to(x.device)].to("cpu", torch.float64)
        best_d = torch.cat([best_d, top.values])
        best_x = cand_x if best_x is None else torch.cat([best_x, cand_x])
        keep = best_d.topk(min(m, len(best_d))).indices
        best_d, best_x = best_d[keep], best_x[keep]
    parts = [p for p in reducer.gather((best_d, best_x)) if p[1] is not None]
    all_d = torch.cat([p[0] for p in parts])
    all_x = torch.cat([p[1] for p in parts])
    return all_x[all_d.topk(min(m, len(all_d))).indices]


@dataclass
class LloydResult:
    state: LloydState
    inertia: float  # exact Σ_n ‖z_n − c_{a(n)}‖², all ranks
    labels: list[torch.Tensor]  # this rank's final labels, per batch
    counts: torch.Tensor  # rows per cluster, all ranks
    sq_total: float | None = None  # Σ_n ‖z_n‖², all ranks (None if no iteration ran)


def lloyd(
    batches: Batches,
    state: LloydState,
    *,
    n_iter: int,
    tol: float,
    compute_dtype: torch.dtype,
    reducer: LocalReducer,
    empty: str = "split",
    seed: int = 0,
    on_iteration: Callable[[LloydState], None] | None = None,
    score_dtype: torch.dtype | None = None,
) -> LloydResult:
    """Iterate from ``state`` until ``n_iter`` iterations, no label change, or a centre
    shift Σ_k ‖Δc_k‖² ≤ ``tol`` × Σ_n ‖z_n‖² / (N d) (scikit-learn's rule: ``tol`` times the
    mean per-dimension variance of the centred data). Then one final assignment against
    the final centroids with the exact float64 inertia.

    ``batches`` yields the data in the compute dtype on the work device, the same batches
    in the same order on every call. Empty clusters are refilled deterministically (the
    same way on every rank): ``empty="split"`` splits a populous cluster (faiss's rule),
    ``"farthest"`` moves them to the rows farthest from their centroids (scikit-learn's).
    """
    k, d = state.centroids.shape
    sq_total: float | None = None
    n_total: float | None = None
    while state.iteration < n_iter and not state.converged:
        started = time.perf_counter()
        fresh = state.rows is None
        old = state.centroids
        assigner = Assigner(old, compute_dtype, score_dtype)
        score_dtype = assigner.score_dtype
        sums, counts, changed, scored, sq_sum, rows_out = _assignment_pass(
            batches, state, assigner, compute_dtype, reducer, count_sq=sq_total is None
        )
        if sq_total is None:
            sq_total, n_total = sq_sum, float(counts.sum())
        # inertia of these labels against the centroids they were assigned to
        inertia = (
            sq_total - 2 * float((old * sums).sum()) + float((counts * old.square().sum(1)).sum())
        )
        new = sums / counts.clamp(min=1)[:, None]
        refill_empty(
            new, old, counts, empty, seed, state.iteration, batches, rows_out, assigner, reducer
        )
        drift = (new - old).square().sum(1)
        shift = float(drift.sum())
        drift = drift.sqrt_()
        movers = movers_of(drift)
        if assigner.demoted:  # later iterations score one precision up from the start
            score_dtype = assigner.next_dtype()
        state.rows = [_shift_bounds(r, drift, movers) for r in rows_out]
        state.movers = movers
        state.history.append(inertia)
        state.seconds.append(time.perf_counter() - started)
        state.changed.append(int(changed))
        state.scored.append(scored / max(n_total or 1.0, 1.0))
        state.centroids = new
        state.iteration += 1
        tol_abs = tol * sq_total / max((n_total or 1.0) * d, 1.0)
        state.converged = (not fresh and changed == 0) or shift <= tol_abs
        if on_iteration is not None:
            on_iteration(state)
    result = final_assignment(batches, state, compute_dtype, reducer, score_dtype)
    result.sq_total = sq_total
    return result


def _assignment_pass(
    batches: Batches,
    state: LloydState,
    assigner: Assigner,
    compute_dtype: torch.dtype,
    reducer: LocalReducer,
    *,
    count_sq: bool,
) -> tuple[torch.Tensor, torch.Tensor, float, float, float, list[Rows]]:
    """One pass over the data: each row's label (rescoring only rows whose bounds allow a
    move), the per-cluster sums and counts (summed over ranks), labels changed, rows
    scored and — with ``count_sq``, once per fit — Σ_n ‖z_n‖²."""
    k, d = state.centroids.shape
    dev = state.centroids.device
    sums = torch.zeros(k, d, dtype=torch.float64, device=dev)
    part = torch.zeros(k, d, dtype=compute_dtype, device=dev)
    counts = torch.zeros(k, dtype=torch.float64, device=dev)
    changed = scored = sq_sum = 0.0
    rows_out: list[Rows] = []
    for i, x in enumerate(batches()):
        prev = state.rows[i] if state.rows is not None else None
        rows, ch, sc = assigner.update(x, prev, state.movers)
        rows_out.append(rows)
        changed += ch
        scored += sc
        if compute_dtype == torch.float64:
            sums.index_add_(0, rows.labels, x)
        else:
            part.index_add_(0, rows.labels, x)
            sums += part
            part.zero_()
        counts += torch.bincount(rows.labels, minlength=k).to(torch.float64)
        if count_sq:  # row sums in the compute dtype, total in float64
            sq_sum += float(x.square().sum(1).sum(dtype=torch.float64))
    packed = torch.cat(
        [
            sums.flatten(),
            counts,
            torch.tensor([changed, scored, sq_sum], dtype=torch.float64, device=dev),
        ]
    )
    reducer.sum_(packed)
    changed, scored, sq_sum = packed[k * d + k :].tolist()
    return packed[: k * d].view(k, d), packed[k * d : k * d + k], changed, scored, sq_sum, rows_out


def refill_empty(
    new: torch.Tensor,
    old: torch.Tensor,
    counts: torch.Tensor,
    empty: str,
    seed: int,
    iteration: int,
    batches: Batches,
    rows_out: list[Rows],
    assigner: Assigner,
    reducer: LocalReducer,
) -> None:
    """Refill the empty clusters of ``new`` in place, the same way on every rank:
    ``"farthest"`` takes the rows farthest from their centroids (scikit-learn's rule),
    ``"split"`` splits populous clusters (faiss's rule); a cluster left empty keeps its
    old centroid."""
    empties = torch.nonzero(counts == 0).flatten()
    if not len(empties):
        return
    if empty == "farthest":
        far = _farthest_rows(batches, rows_out, assigner, len(empties), reducer).to(new.device)
        new[empties[: len(far)]] = far
        left = empties[len(far) :].tolist()
    else:
        left = split_clusters(new, counts, empties, _generator(seed, 31, iteration))
    if left:
        new[left] = old[left]


def final_assignment(
    batches: Batches,
    state: LloydState,
    compute_dtype: torch.dtype,
    reducer: LocalReducer,
    score_dtype: torch.dtype | None = None,
) -> LloydResult:
    """Labels against ``state.centroids`` and the exact float64 inertia (``state`` is not
    modified, so a checkpoint taken after it resumes to the same result)."""
    k = state.centroids.shape[0]
    dev = state.centroids.device
    assigner = Assigner(state.centroids, compute_dtype, score_dtype)
    labels: list[torch.Tensor] = []
    totals = torch.zeros(k + 1, dtype=torch.float64, device=dev)
    for i, x in enumerate(batches()):
        prev = state.rows[i] if state.rows is not None else None
        rows, _, _ = assigner.update(x, prev, state.movers)
        labels.append(rows.labels)
        if x.shape[0]:
            totals[k] += assigner.own(x, rows.labels).square().sum()
        totals[:k] += torch.bincount(rows.labels, minlength=k).to(torch.float64)
    reducer.sum_(totals)
    return LloydResult(state, float(totals[k]), labels, totals[:k].clone())
