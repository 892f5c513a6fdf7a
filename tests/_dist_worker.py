"""Worker for the two-process gloo test of FVUAccumulator.all_reduce (spawned)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from sae_fvu_plugin import FVUAccumulator


def run(rank: int, world: int, port: int, out: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        x = 100 + torch.randn(300, 6, generator=g, dtype=torch.float64)
        xh = x + torch.randn(300, 6, generator=g, dtype=torch.float64)
        acc = FVUAccumulator("all")
        # rank 0 gets batches 0 and 2 (sizes 50, 100), rank 1 gets batch 1 (size 150)
        bounds = [(0, 50), (50, 200), (200, 300)]
        for i, (a, b) in enumerate(bounds):
            if i % world == rank:
                acc.update(x[a:b], xh[a:b])
        acc.all_reduce()
        torch.save({"rank": rank, "result": acc.compute(), "n": acc.n_tokens}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()
