"""Which seeding sample and empty-cluster rule give the best k-means on real activations?

For each data set and k, seeds 0..S−1, the final inertia Σ_n min_k ‖x_n − c_k‖² (float64,
recomputed the same way for everyone) of:

* scikit-learn ``KMeans(n_init=1, random_state=seed, max_iter=ITERS)`` (greedy k-means++
  on all rows: the quality reference);
* ours, ``fit_kmeans(x, k, seed=seed, n_iter=ITERS)`` with every combination of
  ``init_sampling`` ∈ {uniform, importance} (``importance@0.5``: tail share α = 0.5),
  ``empty`` ∈ {split, farthest} and ``init_sample`` (``--samples``).

scikit-learn's inertias are cached in the package cache (``bench/sklearn_inertia.json``).

Printed: ratio of mean inertias over the seeds (ours / scikit-learn), the worst single-seed
ratio and the mean seconds per fit. Data: SmolLM2-135M ``blocks.{3,15}.hook_resid_post``
on Austen (``--tokens`` rows, BOS dropped, cached by ``benchmarks/kmeans.py``) and a
Gaussian mixture of ``benchmarks/kmeans_seeding.py`` (k components, d 64, offset 1000).
Target: the default ≤ 1.005 × scikit-learn everywhere.

    python benchmarks/kmeans_quality.py [--tokens 50000] [--ks 256 1024] [--seeds 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")


def inertia(x: torch.Tensor, c: torch.Tensor) -> float:
    x64, c64 = x.double(), c.double()
    csq = c64.square().sum(1)
    total = 0.0
    for s in range(0, x64.shape[0], 8192):
        xs = x64[s : s + 8192]
        d = (xs.square().sum(1, keepdim=True) - 2 * xs @ c64.T + csq).clamp_(min=0)
        total += float(d.min(1).values.sum())
    return total


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=50_000)
    p.add_argument("--ks", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--data", nargs="+", default=["L3", "L15", "mixture"])
    p.add_argument("--sklearn", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--samplings", nargs="+", default=["uniform", "importance"])
    p.add_argument("--empties", nargs="+", default=["split", "farthest"])
    p.add_argument(
        "--samples", nargs="+", type=int, default=[0], help="init_sample values (0: default)"
    )
    a = p.parse_args()
    from kmeans import real_activations
    from kmeans_seeding import mixture
    from sklearn.cluster import KMeans

    from sae_fvu_plugin.clustering import fit_kmeans, seeding
    from sae_fvu_plugin.data import cache_dir

    tail_default = seeding._TAIL_SHARE
    sk_cache = cache_dir() / "bench" / "sklearn_inertia.json"
    known = json.loads(sk_cache.read_text()) if sk_cache.is_file() else {}

    torch.set_num_threads(torch.get_num_threads())
    variants = list(itertools.product(a.samplings, a.empties, a.samples))
    head = " | ".join(f"{s[:4]}+{e[:5]:>5}+{m or 'def':>5} mean worst   s" for s, e, m in variants)
    print(f"ratios: ours / scikit-learn, mean inertia over {a.seeds} seeds, {a.iters} iterations")
    print(f"{'data':>8} {'k':>5} | {'sklearn s':>9} | {head}")
    for name, k in itertools.product(a.data, a.ks):
        if name == "mixture":
            x = mixture(a.tokens, 64, k, 2.0, 1000.0, 0).float()
        else:
            x = real_activations(a.tokens, layer=int(name[1:]))
        sk, sk_t = [], 0.0
        for seed in range(a.seeds):
            key = f"{name}|{a.tokens}|{k}|{seed}|{a.iters}"
            if key in known:  # (cached: the seconds column then shows 0)
                sk.append(known[key])
            elif a.sklearn:
                t = time.perf_counter()
                km = KMeans(k, n_init=1, random_state=seed, max_iter=a.iters).fit(x.numpy())
                sk_t += time.perf_counter() - t
                sk.append(inertia(x, torch.from_numpy(km.cluster_centers_)))
                known[key] = sk[-1]
                sk_cache.parent.mkdir(parents=True, exist_ok=True)
                sk_cache.write_text(json.dumps(known, indent=1))
        cells = []
        for sampling, empty, m in variants:
            vals, secs = [], 0.0
            for seed in range(a.seeds):
                t = time.perf_counter()
                seeding._TAIL_SHARE = float(sampling.partition("@")[2] or tail_default)
                sae = fit_kmeans(
                    x,
                    k,
                    seed=seed,
                    n_iter=a.iters,
                    init_sampling=sampling.partition("@")[0],
                    empty=empty,
                    init_sample=m or None,
                    progress=False,
                )
                secs += time.perf_counter() - t
                vals.append(inertia(x, sae.W_enc.T.double() + sae.b_dec.double()))
            ref = np.mean(sk) if sk else np.nan
            worst = max(v / s for v, s in zip(vals, sk, strict=True)) if sk else np.nan
            cells.append(f"{np.mean(vals) / ref:>10.4f} {worst:>6.3f} {secs / a.seeds:>4.0f}")
        print(
            f"{name:>8} {k:>5} | {sk_t / max(a.seeds, 1):>9.1f} | {' | '.join(cells)}", flush=True
        )


if __name__ == "__main__":
    main()
