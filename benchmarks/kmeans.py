"""k-means speed and quality: this project vs faiss-cpu, scikit-learn and
fast-pytorch-kmeans, on the same data from the same initial centroids, in one run.

Data: 200,000 × 512 float32 drawn from a 2,000-component Gaussian mixture with a mean
offset (activation-like). For each k ∈ {1024, 4096}: 10 Lloyd iterations from the same
k initial centroids (random rows; every library accepts them), then every result's final
inertia Σ_n min_k ‖x_n − c_k‖² is recomputed the same way (float64). Printed: seconds per
iteration (whole fit / iterations; for this project also the median Lloyd iteration
alone, without its one data-statistics pass and its final exact-inertia pass), ratio to
faiss-cpu, inertia and its ratio to the best.
Target on CPU: time per iteration ≤ faiss-cpu's, inertia within 0.5 % of the best.
On a GPU (``--device cuda``) it also prints the achieved FLOP/s of the assignment matmul.

    python benchmarks/kmeans.py [--n 200000] [--d 512] [--ks 1024 4096] [--iters 10]
        [--libs ours faiss sklearn fastpt] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")


def make_data(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(2000, d, generator=g) * 3
    scales = torch.rand(2000, 1, generator=g) + 0.5
    lab = torch.randint(2000, (n,), generator=g)
    return 5.0 + centers[lab] + scales[lab] * torch.randn(n, d, generator=g)


def inertia(x: torch.Tensor, c: torch.Tensor) -> float:
    """Σ_n min_k ‖x_n − c_k‖², nearest by float32 matmul, distance exact in float64."""
    c32 = c.float()
    sq = c32.square().sum(1)
    total = 0.0
    for s in range(0, len(x), 8192):
        xs = x[s : s + 8192]
        lab = torch.addmm(sq, xs, c32.T, alpha=-2).argmin(1)
        total += float((xs.double() - c[lab].double()).square().sum())
    return total


def run_ours(x, init, iters, device):
    from sae_fvu_plugin.clustering import fit_kmeans

    t = time.perf_counter()
    sae = fit_kmeans(
        x, init.shape[0], n_iter=iters, tol=0.0, init=init, progress=False, device=device
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    cents = (sae.W_enc.T.double() + sae.b_dec.double()).cpu()
    per_iter = sorted(sae.cfg.metadata.iteration_seconds)
    RUNNERS_LLOYD["ours"] = per_iter[len(per_iter) // 2]  # median Lloyd iteration
    return dt, sae.cfg.metadata.n_iter_run, cents


def run_faiss(x, init, iters, device):
    import faiss

    k, d = init.shape
    km = faiss.Kmeans(d, k, niter=iters, verbose=False, seed=0, max_points_per_centroid=10**9)
    xn = np.ascontiguousarray(x.numpy())
    t = time.perf_counter()
    km.train(xn, init_centroids=np.ascontiguousarray(init.numpy()))
    return time.perf_counter() - t, iters, torch.from_numpy(km.centroids).double()


def run_sklearn(x, init, iters, device):
    from sklearn.cluster import KMeans

    km = KMeans(
        init.shape[0], init=init.numpy(), n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd"
    )
    t = time.perf_counter()
    km.fit(x.numpy())
    return time.perf_counter() - t, km.n_iter_, torch.from_numpy(km.cluster_centers_).double()


def run_fastpt(x, init, iters, device):
    from fast_pytorch_kmeans import KMeans

    km = KMeans(n_clusters=init.shape[0], max_iter=iters, tol=-1.0, mode="euclidean", verbose=0)
    xs = x.to(device)
    t = time.perf_counter()
    km.fit_predict(xs, centroids=init.clone().to(device))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t, iters, km.centroids.double().cpu()


RUNNERS_LLOYD: dict[str, float] = {}
RUNNERS = {"ours": run_ours, "faiss": run_faiss, "sklearn": run_sklearn, "fastpt": run_fastpt}


def assignment_flops(x: torch.Tensor, k: int, device: str, reps: int = 5) -> float:
    """Achieved FLOP/s of the chunked assignment matmul (2·n·k·d per pass)."""
    from sae_fvu_plugin.clustering.kmeans import assign

    xs = x.to(device)
    c = xs[:k].clone()
    sq = c.square().sum(1)
    assign(xs, c, sq)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        assign(xs, c, sq)
    torch.cuda.synchronize()
    return 2 * xs.shape[0] * k * xs.shape[1] * reps / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--ks", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--libs", nargs="+", default=list(RUNNERS))
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    x = make_data(a.n, a.d)
    print(
        f"data {a.n} x {a.d} float32, {a.iters} Lloyd iterations from the same init, "
        f"device={a.device}, torch threads={torch.get_num_threads()}"
    )
    for k in a.ks:
        init = x[torch.randperm(a.n, generator=torch.Generator().manual_seed(k))[:k]].clone()
        results = {}
        for lib in a.libs:
            try:
                dt, iters, cents = RUNNERS[lib](x, init, a.iters, a.device)
            except ImportError as err:
                print(f"  k={k} {lib}: skipped ({err})")
                continue
            results[lib] = (dt / max(iters, 1), inertia(x, cents), iters)
        if not results:
            continue
        best = min(v[1] for v in results.values())
        ref = results.get("faiss", next(iter(results.values())))[0]
        print(f"\nk={k}")
        print(
            f"  {'library':<8} {'s/iter':>8} {'vs faiss':>9} {'inertia':>16} {'vs best':>9} {'iters':>6}"
        )
        for lib, (spi, ine, iters) in results.items():
            print(
                f"  {lib:<8} {spi:8.3f} {spi / ref:9.3f} {ine:16.6e} {ine / best:9.5f} {iters:6d}"
            )
        if "ours" in results:
            lloyd = RUNNERS_LLOYD["ours"]
            print(
                f"  ours, median Lloyd iteration alone (no data-stats / final exact pass): "
                f"{lloyd:.3f} s = {lloyd / ref:.3f} x faiss's time per iteration"
            )
        if a.device.startswith("cuda"):
            flops = assignment_flops(x, k, a.device)
            print(
                f"  assignment matmul: {flops / 1e12:.1f} TFLOP/s achieved (compare with the "
                "card's dense float32/TF32 peak)"
            )


if __name__ == "__main__":
    main()
