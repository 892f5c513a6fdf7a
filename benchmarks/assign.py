"""One certified assignment pass (``Assigner.full``: label of every row against k
centroids) in each score precision, against faiss-cpu's exhaustive search (``IndexFlatL2``,
nearest 1, float32, not certified) on the same rows and centroids, side by side in one run.

Printed per data set and k: seconds per pass and the ratio to faiss; the share of rows
whose candidates had to be rescored exactly (several centroids within the rounding bound)
and escalated a precision level (more than 8); and the labels' mismatches against a
float64 argmin on a 2,000-row subset (always 0). Data: N(0, 1), the Gaussian mixture of
``benchmarks/kmeans.py`` and real SmolLM2 layer-15 activations; centroids: k rows drawn
from the data plus a little noise (the situation of a Lloyd iteration).

    python benchmarks/assign.py [--n 100000] [--ks 1024 4096] [--data normal mixture real]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--ks", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--data", nargs="+", default=["normal", "mixture", "real"])
    p.add_argument("--real-tokens", type=int, default=32768)
    p.add_argument("--reps", type=int, default=2)
    a = p.parse_args()
    from kmeans import make_data

    from sae_fvu_plugin.clustering.lloyd import Assigner
    from sae_fvu_plugin.clustering.precision import calibration

    print(f"calibration: {calibration('cpu')}")
    try:
        import faiss
    except ImportError:
        faiss = None
    print(
        f"{'data':>8} {'k':>5} | {'faiss s':>8} | "
        + " | ".join(f"{n:>8} s  ×faiss  rescored  escalated" for n in ("bf16", "fp32", "fp64"))
    )
    for kind in a.data:
        x = make_data(kind, a.n, a.d, a.real_tokens)
        x = (x - x.mean(0)).contiguous()  # the fit centres the data
        for k in a.ks:
            g = torch.Generator().manual_seed(k)
            c = x[torch.randperm(len(x), generator=g)[:k]].double()
            c += 0.01 * c.std() * torch.randn(c.shape, generator=g, dtype=torch.float64)
            ft = float("nan")
            if faiss is not None:
                index = faiss.IndexFlatL2(x.shape[1])
                index.add(c.float().numpy())
                t = time.perf_counter()
                for _ in range(a.reps):
                    index.search(x.numpy(), 1)
                ft = (time.perf_counter() - t) / a.reps
            sub = x[:2000]
            want = torch.cat(
                [(r.double()[:, None] - c[None]).square().sum(2).argmin(1) for r in sub.split(50)]
            )
            cells = []
            for dt in (torch.bfloat16, torch.float32, torch.float64):
                asg = Assigner(c, torch.float32, dt)
                asg.full(x[:4096])  # warm-up
                asg.counts = dict.fromkeys(asg.counts, 0)
                t = time.perf_counter()
                for _ in range(a.reps):
                    asg.full(x)
                sec = (time.perf_counter() - t) / a.reps
                bad = int((asg.full(sub).labels != want).sum())
                n = asg.counts["rows"] or 1
                cells.append(
                    f"{sec:>10.3f} {sec / ft:>6.2f} {asg.counts['rescored'] / n:>9.1%} "
                    f"{asg.counts['escalated'] / n:>10.2%}" + (f" MISMATCH {bad}" if bad else "")
                )
            print(f"{kind:>8} {k:>5} | {ft:>8.3f} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
