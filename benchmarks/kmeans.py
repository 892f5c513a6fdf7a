"""k-means speed and quality: this project vs faiss-cpu and scikit-learn, side by side in
one run, on the same data.

Data (float32): 200,000 × 512 N(0, 1); 200,000 × 512 from a 2,000-component Gaussian
mixture with a mean offset (activation-like); real SmolLM2-135M layer-15 residual-stream
activations on Austen text (``--real-tokens`` of them, collected once and cached).
For each data set and k ∈ {1024, 4096}:

1. **Lloyd iteration, same initial centroids** (random rows), ``--iters`` iterations, no
   early stop for anyone: seconds per iteration. Ours is reported as the median Lloyd
   iteration (from the fit's own timings) and the whole fit / iterations; faiss's and
   scikit-learn's train time / iterations.
2. **Whole fit, each library's own seeding**, equal iteration budget: ours (greedy
   k-means++ on a sample, Lloyd, exact final pass — everything), faiss ``Kmeans.train``
   (random rows), scikit-learn ``KMeans(n_init=1)`` (greedy k-means++ on all rows;
   ``--sklearn-whole`` to include it, it is slow at k = 4096).
Every result's inertia Σ_n min_k ‖x_n − c_k‖² is recomputed the same way (float64) and
compared with the best. Targets on CPU: Lloyd iteration ≤ 1.0× faiss; whole fit ≤ 1.2×
faiss's train at equal iterations; inertia within 0.5 % of the best.

On a GPU (``--device cuda``) it also prints the assignment's achieved FLOP/s.

    python benchmarks/kmeans.py [--n 200000] [--d 512] [--ks 1024 4096] [--iters 10]
        [--data normal mixture real] [--libs ours faiss sklearn] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")


def make_data(kind: str, n: int, d: int, real_tokens: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        return torch.randn(n, d, generator=g)
    if kind == "mixture":
        centers = torch.randn(2000, d, generator=g) * 3
        scales = torch.rand(2000, 1, generator=g) + 0.5
        lab = torch.randint(2000, (n,), generator=g)
        return 5.0 + centers[lab] + scales[lab] * torch.randn(n, d, generator=g)
    return real_activations(real_tokens)


def real_activations(n: int, layer: int = 15) -> torch.Tensor:
    """SmolLM2-135M ``blocks.{layer}.hook_resid_post`` on Austen (BOS dropped), cached."""
    from sae_fvu_plugin.data import cache_dir

    path = cache_dir() / "bench" / f"smollm2-L{layer}-{n}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    from sae_fvu_plugin.clustering import collect_activations
    from sae_fvu_plugin.data import load_model, split_contexts

    model = load_model()
    split = split_contexts(
        "austen", model.tokenizer, context_size=128, n_fit=-(-n // 127), n_eval=0, seed=123
    )
    acts = collect_activations(
        model, split.dataset("fit"), f"blocks.{layer}.hook_resid_post", n, drop_first_position=True
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(acts, path)
    return acts


def inertia(x: torch.Tensor, c: torch.Tensor) -> float:
    """Σ_n min_k ‖x_n − c_k‖², nearest by a float32 matmul, distance exact in float64."""
    c32 = c.float()
    sq = c32.square().sum(1)
    total = 0.0
    for s in range(0, len(x), 8192):
        xs = x[s : s + 8192]
        lab = torch.addmm(sq, xs, c32.T, alpha=-2).argmin(1)
        total += float((xs.double() - c[lab].double()).square().sum())
    return total


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ours(x, k, iters, device, init=None):
    from sae_fvu_plugin.clustering import fit_kmeans

    sync(device)
    t = time.perf_counter()
    kw = dict(init=init) if init is not None else {}
    sae = fit_kmeans(x, k, n_iter=iters, tol=0.0, progress=False, device=device, **kw)
    sync(device)
    dt = time.perf_counter() - t
    run = sae.cfg.metadata.fit["stages"][0]["runs"][0]
    cents = (sae.W_enc.T.double() + sae.b_dec.double()).cpu()
    extra = {
        "lloyd": float(np.median(run["iteration_seconds"])),
        "rescored": run["rows_rescored"],
    }
    return dt, run["n_iter_run"], cents, extra


def faiss_fit(x, k, iters, device, init=None):
    import faiss

    km = faiss.Kmeans(
        x.shape[1], k, niter=iters, verbose=False, seed=0, max_points_per_centroid=10**9
    )
    xn = np.ascontiguousarray(x.numpy())
    kw = {} if init is None else {"init_centroids": np.ascontiguousarray(init.numpy())}
    t = time.perf_counter()
    km.train(xn, **kw)
    return time.perf_counter() - t, iters, torch.from_numpy(km.centroids).double(), {}


def sklearn_fit(x, k, iters, device, init=None):
    from sklearn.cluster import KMeans

    km = KMeans(
        k,
        init="k-means++" if init is None else init.numpy(),
        n_init=1,
        max_iter=iters,
        tol=0.0,
        random_state=0,
    )
    t = time.perf_counter()
    km.fit(x.numpy())
    return time.perf_counter() - t, km.n_iter_, torch.from_numpy(km.cluster_centers_).double(), {}


RUNNERS = {"ours": ours, "faiss": faiss_fit, "sklearn": sklearn_fit}


def assignment_flops(x: torch.Tensor, k: int, device: str, reps: int = 5) -> float:
    """Achieved FLOP/s of the chunked assignment matmul (2·n·k·d per pass)."""
    from sae_fvu_plugin.clustering.lloyd import Assigner

    xs = x.to(device)
    a = Assigner(xs[:k].double().clone(), torch.float32)
    a.full(xs)
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a.full(xs)
    sync(device)
    return 2 * xs.shape[0] * k * xs.shape[1] * reps / (time.perf_counter() - t)


def table(title: str, results: dict, ref: str = "faiss") -> None:
    best = min(v["inertia"] for v in results.values())
    base = results.get(ref, next(iter(results.values())))["per_iter"]
    print(f"  {title}")
    print(
        f"    {'library':<8} {'s/iter':>8} {'vs faiss':>9} {'whole s':>8} {'iters':>6} {'inertia':>16} {'vs best':>9}"
    )
    for lib, v in results.items():
        print(
            f"    {lib:<8} {v['per_iter']:8.3f} {v['per_iter'] / base:9.3f} {v['seconds']:8.2f} "
            f"{v['iters']:6d} {v['inertia']:16.6e} {v['inertia'] / best:9.5f}"
        )
        if "lloyd" in v:
            print(
                f"    {'':<8} median Lloyd iteration alone: {v['lloyd']:.3f} s = "
                f"{v['lloyd'] / base:.3f} × faiss; rows rescored per iteration: "
                + " ".join(f"{r:.0%}" for r in v["rescored"])
            )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--ks", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--data", nargs="+", default=["normal", "mixture", "real"])
    p.add_argument("--real-tokens", type=int, default=50_000)
    p.add_argument("--libs", nargs="+", default=["ours", "faiss", "sklearn"])
    p.add_argument(
        "--sklearn-whole", action="store_true", help="also time scikit-learn's own seeding"
    )
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    print(f"torch threads={torch.get_num_threads()}, device={a.device}, {a.iters} iterations")
    for kind in a.data:
        x = make_data(kind, a.n, a.d, a.real_tokens)
        print(f"\n== {kind}: {x.shape[0]} × {x.shape[1]} float32")
        for k in a.ks:
            if k > len(x) // 4:
                continue
            init = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(k))[:k]].clone()
            same: dict = {}
            own: dict = {}
            for lib in a.libs:
                try:
                    dt, iters, cents, extra = RUNNERS[lib](x, k, a.iters, a.device, init)
                except ImportError as err:
                    print(f"  {lib}: skipped ({err})")
                    continue
                same[lib] = {
                    "per_iter": dt / max(iters, 1),
                    "seconds": dt,
                    "iters": iters,
                    "inertia": inertia(x, cents),
                } | extra
                if lib == "sklearn" and not a.sklearn_whole:
                    continue
                dt, iters, cents, extra = RUNNERS[lib](x, k, a.iters, a.device, None)
                own[lib] = {
                    "per_iter": dt / max(iters, 1),
                    "seconds": dt,
                    "iters": iters,
                    "inertia": inertia(x, cents),
                } | extra
            print(f"\n k = {k}")
            table("same initial centroids (Lloyd iterations):", same)
            table("each library's own seeding, whole fit:", own)
            if "ours" in own and "faiss" in own:
                r = own["ours"]["seconds"] / own["faiss"]["seconds"]
                print(
                    f"    whole fit, ours / faiss train: {r:.3f} (ours {own['ours']['iters']} iterations, faiss {own['faiss']['iters']})"
                )
            if a.device.startswith("cuda"):
                flops = assignment_flops(x, k, a.device)
                print(f"    assignment matmul: {flops / 1e12:.1f} TFLOP/s achieved")


if __name__ == "__main__":
    main()
