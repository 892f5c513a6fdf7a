"""Would exact pruning by the triangle inequality pay on real activations? (Counts, not times.)

Two exact accelerations that change no label, measured by the share of distance
computations they would still do, on SmolLM2-135M ``blocks.{3,15}.hook_resid_post``
(``--tokens`` Austen rows, centred, cached by ``benchmarks/kmeans.py``):

* **Greedy k-means++ seeding** (``seeding.greedy_kmeans_pp``: each step scores every
  sampled row against 2 + ⌊ln k⌋ candidates). A row x whose nearest chosen centre is a
  cannot get closer to a candidate c when ‖c − a‖ ≥ 2‖x − a‖, so only rows of centres
  with ‖c − a‖ < 2 r_a (r_a: the centre's radius) need scores (``cluster``), or, per row,
  those with ‖c − a(x)‖ < 2‖x − a(x)‖ (``row``). Sample: min(N, 32k) rows (the fit's rule
  when this was measured; it samples min(N, max(65536, 64k)) now).
* **Lloyd with group bounds** (Yinyang k-means, Ding et al. 2015: the centroids in t
  groups, one lower bound per row and group; no local filter). After the centroids move
  by δ, u += δ_a and l_g −= max_{c ∈ g} δ_c; a row with u ≤ min_g l_g is skipped (the
  global filter), otherwise only the groups with l_g < u are scored. Printed per
  iteration: rows past Hamerly's single bound (what ``lloyd.Assigner.update`` rescores
  today), rows past the global filter, the per-row distance work, and the work when rows
  are scored in chunks of 1,024 (sorted by their centroid's group) against the union of
  the groups any row of the chunk needs — what one GEMM per chunk computes.

The bounds are checked against the exact distances every iteration (``violations`` must be
0). Distances in float32 (counts only; the fit's own scores are certified).

    python benchmarks/kmeans_pruning.py [--tokens 50000] [--ks 1024] [--layers 3 15]
"""

from __future__ import annotations

import argparse
import math

import torch


def centred(layer: int, n: int) -> torch.Tensor:
    from kmeans import real_activations

    x = real_activations(n, layer).double()
    return (x - x.mean(0)).float()


def seeding_counts(s: torch.Tensor, k: int, gen: torch.Generator) -> list[tuple[float, float]]:
    """Greedy k-means++ on ``s``; per step, the share of rows a pruned step scores
    (cluster-level, per-row)."""
    m = s.shape[0]
    sq = s.square().sum(1)

    def dist(idx: torch.Tensor) -> torch.Tensor:
        return (s @ s[idx].T).mul_(-2).add_(sq[:, None]).add_(sq[idx]).clamp_(min=0)

    trials = 2 + int(math.log(k))
    first = int(torch.randint(m, (1,), generator=gen))
    chosen = [first]
    closest = dist(torch.tensor([first]))[:, 0]
    owner = torch.zeros(m, dtype=torch.long)
    out = []
    for _ in range(1, k):
        cum = torch.cumsum(closest.double(), 0)
        draws = torch.rand(trials, generator=gen, dtype=torch.float64) * cum[-1]
        cand = torch.searchsorted(cum, draws).clamp_(max=m - 1)
        centres = s[torch.tensor(chosen)]
        gap = torch.cdist(s[cand], centres)  # (trials, chosen)
        radius = torch.zeros(len(chosen)).scatter_reduce_(0, owner, closest.sqrt(), "amax")
        sizes = torch.bincount(owner, minlength=len(chosen)).float()
        cluster = float(sizes[(gap < 2 * radius[None, :]).any(0)].sum()) / m
        row = float((gap[:, owner] < 2 * closest.sqrt()[None, :]).any(0).float().mean())
        out.append((cluster, row))
        dd = torch.minimum(dist(cand), closest[:, None])
        nxt = int(cand[int(torch.argmin(dd.sum(0, dtype=torch.float64)))])
        new = dist(torch.tensor([nxt]))[:, 0]
        owner[new < closest] = len(chosen)
        closest = torch.minimum(closest, new)
        closest[nxt] = 0.0
        chosen.append(nxt)
    return out


def _group_bounds(dist: torch.Tensor, labels: torch.Tensor, group: torch.Tensor, t: int):
    n, k = dist.shape
    others = dist.clone()
    others[torch.arange(n), labels] = float("inf")
    bound = torch.full((n, t), float("inf"))
    return bound.scatter_reduce_(1, group[None, :].expand(n, k), others, "amin")


def lloyd_counts(x: torch.Tensor, k: int, groups: int, iters: int, gen: torch.Generator):
    """Lloyd from k-means++ (D²) seeds; per iteration the shares described above."""
    n = x.shape[0]
    xsq = x.square().sum(1)
    pick = [int(torch.randint(n, (1,), generator=gen))]
    near = (x - x[pick[0]]).square().sum(1)
    for _ in range(k - 1):
        pick.append(int(torch.multinomial(near.double(), 1, generator=gen)))
        near = torch.minimum(near, (x - x[pick[-1]]).square().sum(1))
    c = x[torch.tensor(pick)].clone()

    def dists(c: torch.Tensor) -> torch.Tensor:
        d2 = torch.addmm(c.square().sum(1)[None, :], x, c.T, alpha=-2) + xsq[:, None]
        return d2.clamp_(min=0).sqrt_()

    t = max(1, k // groups)
    g = c[torch.randperm(k, generator=gen)[:t]].clone()
    for _ in range(5):  # group the centroids by a few Lloyd steps on them
        gl = torch.cdist(c, g).argmin(1)
        for j in range(t):
            if bool((gl == j).any()):
                g[j] = c[gl == j].mean(0)
    group = torch.cdist(c, g).argmin(1)
    size = torch.bincount(group, minlength=t).float()
    rows = torch.arange(n)
    d = dists(c)
    lab = d.argmin(1)
    upper = d[rows, lab].clone()
    upper_h = upper.clone()  # Hamerly's own upper bound
    lower = _group_bounds(d, lab, group, t)
    single = lower.min(1).values
    out = []
    for _ in range(iters):
        sums = torch.zeros_like(c).index_add_(0, lab, x)
        cnt = torch.bincount(lab, minlength=k).float()
        new = torch.where(cnt[:, None] > 0, sums / cnt.clamp(min=1)[:, None], c)
        delta = (new - c).norm(dim=1)
        c = new
        d = dists(c)
        true = d.argmin(1)
        upper = upper + delta[lab]
        upper_h = upper_h + delta[lab]
        lower = lower - torch.zeros(t).scatter_reduce_(0, group, delta, "amax")[None, :]
        top, idx = delta.topk(2)
        single = single - torch.where(lab == idx[0], top[1], top[0])  # max_{c ≠ a} δ_c
        tight = d[rows, lab]  # u tightened to the exact distance where a bound fails
        hamerly = ~(upper_h <= single) & ~(tight <= single)
        first = upper <= lower.min(1).values
        glob = ~first & ~(tight <= lower.min(1).values)
        exam = (lower < tight[:, None]) & glob[:, None]
        work = float((exam.float() @ size).sum()) / (n * k)
        need = torch.nonzero(glob).flatten()
        need = need[torch.argsort(group[lab[need]], stable=True)]
        chunked = sum(
            len(part) * float(size[exam[part].any(0)].sum()) for part in need.split(1024)
        ) / (n * k)
        fresh = torch.where(glob, true, lab)
        exact = _group_bounds(d, fresh, group, t)
        moved = fresh != lab
        lower = torch.where(exam, exact, lower)
        old_g = group[lab]
        keep = lower[rows, old_g]
        lower[rows, old_g] = torch.where(
            moved & ~exam[rows, old_g], torch.minimum(keep, d[rows, lab]), keep
        )
        violations = int((lower > exact + 1e-3).sum()) + int((fresh != true).sum())
        upper = torch.where(first, upper, d[rows, fresh])  # skipped rows keep theirs
        upper_h = torch.where(upper_h <= single, upper_h, d[rows, fresh])
        lab = fresh
        single = torch.where(hamerly, exact.min(1).values, single)
        out.append(
            (
                float(hamerly.float().mean()),
                float(glob.float().mean()),
                work,
                chunked,
                float(moved.float().mean()),
                violations,
            )
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=50_000)
    p.add_argument("--ks", type=int, nargs="+", default=[1024])
    p.add_argument("--layers", type=int, nargs="+", default=[3, 15])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--group-sizes", type=int, nargs="+", default=[10, 64])
    p.add_argument("--no-seeding", action="store_true")
    a = p.parse_args()
    for layer in a.layers:
        x = centred(layer, a.tokens)
        for k in a.ks:
            if not a.no_seeding:
                m = min(len(x), 32 * k)
                counts = seeding_counts(x[:m], k, torch.Generator().manual_seed(0))
                print(
                    f"layer {layer}, k {k}: greedy k-means++ on {m} rows; share of rows a "
                    "pruned step scores (cluster-level / per-row), by eighths of the steps:"
                )
                for i in range(8):
                    part = counts[i * len(counts) // 8 : (i + 1) * len(counts) // 8]
                    cl = sum(c for c, _ in part) / len(part)
                    rw = sum(r for _, r in part) / len(part)
                    print(f"  steps {i}/8-{i + 1}/8: {cl:.3f} / {rw:.3f}")
            for gs in a.group_sizes:
                print(
                    f"layer {layer}, k {k}, groups of ~{gs}: per iteration, rows past "
                    "Hamerly's bound | past the global filter | distance work per row | "
                    "in 1,024-row chunks | rows moved | violations"
                )
                rows = lloyd_counts(x, k, gs, a.iters, torch.Generator().manual_seed(0))
                for i, (h, g, w, ch, mv, v) in enumerate(rows, 1):
                    print(f"  {i:>3}: {h:.3f} | {g:.3f} | {w:.3f} | {ch:.3f} | {mv:.4f} | {v}")
                mean = [sum(r[j] for r in rows) / len(rows) for j in range(4)]
                print("  mean: " + " | ".join(f"{v:.3f}" for v in mean))


if __name__ == "__main__":
    main()
