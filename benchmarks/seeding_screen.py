"""Greedy k-means++ seeding with screened candidate distances, against the plain float32
step, on the rows a fit seeds from (side by side, one run).

Each greedy step scores the m sampled rows against 2 + ⌊ln k⌋ candidates; the product is
a tall, skinny GEMM that dominates a large fit (~46 of 60 min at 16,384 clusters on
786,432 rows). Two screens rule rows out with a rigorous bound and rescore in float32
only the rows a candidate may be nearer to, so the centres are the plain ones:
``seeding._Projected`` (a rank-128 projection plus the residual norm, in float32: any
CPU) and, where this CPU's score calibration chose bfloat16, ``seeding._Screen`` after it
(the rows the projected screen leaves, screened again by their whole product in
bfloat16): "both". Printed per layer and k: seconds of each path, the ratios,
the share of rows scored exactly, and whether the centres are identical (they must be).

Rows: the fit's own seeding sample — ``importance_sample`` of ``options.sample_size(n, k)``
rows of the centred activations — from ``--acts`` (a ``sae-fvu reproduce`` activation
cache: ``out/reproduce/cache/acts-*.pt``, 786,432 rows a layer) or, without it,
``--tokens`` rows collected by ``benchmarks/kmeans.py``'s cache. ``--steps`` caps the
number of centres (the first steps, where more rows are near a candidate, are the
screens' worst case).

    python benchmarks/seeding_screen.py [--acts out/reproduce/cache] [--ks 4096 16384]
        [--steps 2048] [--layers 3 15] [--tokens 50000]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch


def layer_rows(layer: int, acts: Path | None, tokens: int) -> torch.Tensor:
    """Centred float32 activations of ``blocks.{layer}.hook_resid_post``."""
    x = None
    if acts is not None:
        for f in sorted(acts.glob("acts-*.pt")):
            saved = torch.load(f, weights_only=True, mmap=True)["fit"]
            hook = f"blocks.{layer}.hook_resid_post"
            if hook in saved:
                x = saved[hook]
    if x is None:
        from kmeans import real_activations

        x = real_activations(tokens, layer)
    mean = x.double().mean(0)
    return torch.cat([(x[s : s + 65536].double() - mean).float() for s in range(0, len(x), 65536)])


def main() -> None:
    from sae_fvu_plugin.clustering import KMeansOptions
    from sae_fvu_plugin.clustering.precision import calibration
    from sae_fvu_plugin.clustering.reduce import LocalReducer
    from sae_fvu_plugin.clustering.seeding import _generator, greedy_kmeans_pp, importance_sample

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--acts", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=50000)
    ap.add_argument("--ks", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--layers", type=int, nargs="+", default=[3, 15])
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    fast = calibration("cpu")["choice"] == "bfloat16"
    paths = [("float32", False, None), ("projected", True, None)]
    if fast:  # where this CPU scores in bfloat16: the bfloat16 screen on the projected one's rows
        paths.append(("both", True, torch.bfloat16))
    head = "".join(f" {name:>9s} s" for name, _, _ in paths)
    print(f"layer      k  rows m  steps{head}  ratios (float32 / each)  rows scored  same centres")
    for layer in args.layers:
        z = layer_rows(layer, args.acts, args.tokens)

        def batches(z: torch.Tensor = z):
            return iter(z.split(65536))

        for k in args.ks:
            m = KMeansOptions().sample_size(len(z), k)
            rows, w = importance_sample(batches, m, 0, LocalReducer())
            steps = min(k, args.steps or k, len(rows))
            times, out, shares = [], [], []
            for _, prune, score in paths:
                counts: dict[str, int] = {}
                t = time.perf_counter()
                c = greedy_kmeans_pp(
                    rows, steps, _generator(0, 1), 2 + int(math.log(k)), w,
                    torch.float32, score, counts, prune,
                )  # fmt: skip
                times.append(time.perf_counter() - t)
                out.append(c)
                last = "screen" if score is not None else "projected"
                scored = counts.get(f"{last}_rescored")
                shares.append(scored / max(steps * len(rows), 1) if scored is not None else 1.0)
            secs = "".join(f" {t:11.1f}" for t in times)
            ratios = " ".join(f"{times[0] / t:5.2f}" for t in times[1:])
            share = " ".join(f"{s:6.2%}" for s in shares[1:])
            same = all(torch.equal(out[0], c) for c in out[1:])
            print(
                f"{layer:5d} {k:6d} {len(rows):7d} {steps:6d}{secs}  {ratios:>22s}  {share:>11s}  {same}"
            )


if __name__ == "__main__":
    main()
