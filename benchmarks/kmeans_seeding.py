"""Seeding quality: this project's k-means against scikit-learn's, same data, same seeds.

Gaussian mixtures over a grid of (k, d, mean offset, separation); for each, seeds 0..S−1:
  * default fit (greedy k-means++, n_init=1) vs scikit-learn ``KMeans(n_init=1,
    random_state=seed)``: ratio of final inertias;
  * ``n_init=5`` vs scikit-learn's best of 5 (``n_init=5``);
  * for reference, plain k-means++ (``n_local_trials=1``) and ``init="k-means||"``.
Printed: per configuration the median and worst ratio, the worst the other way round
(scikit-learn / ours: a single run of either lands in a worse local optimum now and then),
and the ratio of mean inertias over the seeds; then over all configurations.
Targets: default median ≤ 1.005 and worst ≤ 1.05; n_init=5 ≤ 1.005.

    python benchmarks/kmeans_seeding.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")


def mixture(n: int, d: int, k: int, sep: float, offset: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(10_000 + seed)
    centers = torch.randn(k, d, generator=g, dtype=torch.float64) * sep
    lab = torch.randint(k, (n,), generator=g)
    return offset + centers[lab] + torch.randn(n, d, generator=g, dtype=torch.float64)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--n", type=int, default=6000)
    a = p.parse_args()
    from sklearn.cluster import KMeans

    from sae_fvu_plugin.clustering import fit_kmeans

    grid = list(itertools.product([8, 24, 64], [16, 64], [0.0, 1000.0], [2.0, 6.0]))
    print(
        f"{len(grid)} mixtures × {a.seeds} seeds, n = {a.n}; ratios = ours / scikit-learn's inertia"
    )
    head = (
        f"{'k':>3} {'d':>3} {'offset':>6} {'sep':>4} | {'default med':>11} {'worst':>7} "
        f"{'sk worst':>8} {'means':>6} | {'n_init=5 med':>12} {'worst':>7} | {'plain++ med':>11} "
        f"| {'k-means|| med':>13}"
    )
    print(head)
    every: dict[str, list[float]] = {"default": [], "n_init5": [], "plain": [], "par": []}
    reverse: list[float] = []
    t0 = time.time()
    for k, d, offset, sep in grid:
        r: dict[str, list[float]] = {key: [] for key in every}
        ours_abs, sk_abs = [], []
        for seed in range(a.seeds):
            x = mixture(a.n, d, k, sep, offset, seed)
            xn = x.numpy()
            sk1 = KMeans(k, n_init=1, random_state=seed).fit(xn).inertia_
            sk5 = KMeans(k, n_init=5, random_state=seed).fit(xn).inertia_
            common = dict(seed=seed, progress=False, n_iter=300)
            mine = fit_kmeans(x, k, **common).cfg.metadata.inertia
            ours_abs.append(mine)
            sk_abs.append(sk1)
            r["default"].append(mine / sk1)
            r["n_init5"].append(fit_kmeans(x, k, n_init=5, **common).cfg.metadata.inertia / sk5)
            r["plain"].append(
                fit_kmeans(x, k, n_local_trials=1, **common).cfg.metadata.inertia / sk1
            )
            r["par"].append(fit_kmeans(x, k, init="k-means||", **common).cfg.metadata.inertia / sk1)
        for key in every:
            every[key] += r[key]
        back = [1 / v for v in r["default"]]
        reverse += back
        print(
            f"{k:>3} {d:>3} {offset:>6.0f} {sep:>4.0f} | {np.median(r['default']):>11.4f} {max(r['default']):>7.4f} "
            f"{max(back):>8.4f} {np.mean(ours_abs) / np.mean(sk_abs):>6.3f} | "
            f"{np.median(r['n_init5']):>12.4f} {max(r['n_init5']):>7.4f} | {np.median(r['plain']):>11.4f} | {np.median(r['par']):>13.4f}"
        )
    print(
        f"\nall {len(every['default'])} runs: default median {np.median(every['default']):.4f}, "
        f"worst {max(every['default']):.4f} (scikit-learn / ours worst {max(reverse):.4f}), "
        f"share ≤ 1.05: {np.mean(np.array(every['default']) <= 1.05):.1%}; "
        f"n_init=5 median {np.median(every['n_init5']):.4f}, worst {max(every['n_init5']):.4f}; "
        f"plain k-means++ median {np.median(every['plain']):.4f}, worst {max(every['plain']):.4f}; "
        f"k-means|| median {np.median(every['par']):.4f}, worst {max(every['par']):.4f} "
        f"({time.time() - t0:.0f} s)"
    )


if __name__ == "__main__":
    main()
