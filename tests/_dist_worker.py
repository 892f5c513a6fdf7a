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


NAMES = ["fvu_a", "fvu_per_dim", "fvu_b", "sparsify", "openai_nmse", "saebench_0_6"]


def run_bootstrap(rank: int, world: int, port: int, out: str) -> None:
    """Rows 0..29 split unevenly over 2 ranks with their global unit ids; all_reduce."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from test_bootstrap import rows_data

        x, x_hat, _ = rows_data(n_rows=30)
        lo, hi = (0, 11) if rank == 0 else (11, 30)
        acc = FVUAccumulator(NAMES, bootstrap=40, seed=2)
        acc.update(x[lo:hi], x_hat[lo:hi], units=torch.arange(lo, hi))
        acc.all_reduce()
        torch.save(acc.bootstrap_replicates(), f"{out}/boot{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_mismatch(rank: int, world: int, port: int, out: str) -> None:
    """Ranks holding different definitions: the same clear error on every rank."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        acc = FVUAccumulator("fvu_a" if rank == 0 else "fvu_b")
        acc.update(torch.randn(10, 4), torch.randn(10, 4))
        try:
            acc.all_reduce()
            msg = "no error"
        except ValueError as err:
            msg = str(err)
        twice = "not tried"
        ok = FVUAccumulator("fvu_a")
        ok.update(torch.randn(10, 4), torch.randn(10, 4))
        ok.all_reduce()
        try:
            ok.all_reduce()
        except RuntimeError as err:
            twice = str(err)
        torch.save({"msg": msg, "twice": twice, "n": ok.n_tokens}, f"{out}/mm{rank}.pt")
    finally:
        dist.destroy_process_group()
