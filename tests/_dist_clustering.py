"""Workers for the two-process gloo tests of the clustering fits (spawned)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def blobs(n=1500, d=12, k=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g, dtype=torch.float64) * 4
    lab = torch.randint(k, (n,), generator=g)
    return 50 + centers[lab] + torch.randn(n, d, generator=g, dtype=torch.float64)


# (rank 0 rows, rank 1 rows) of the blobs: uneven, and one rank empty
SHARDS = {"uneven": (500, 1000), "empty_rank": (1500, 0)}


def shard(case: str, rank: int) -> list[torch.Tensor]:
    x = blobs()
    a, _ = SHARDS[case]
    part = x[:a] if rank == 0 else x[a:]
    return list(part.split(300)) if len(part) else [part]


def init_centroids(k: int = 10) -> torch.Tensor:
    x = blobs()
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(5))[:k]].clone()


def run(rank: int, world: int, port: int, out: str, case: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from sae_fvu_plugin.clustering import fit_kmeans, fit_pca_kmeans, fit_residual_kmeans

        acts = shard(case, rank)
        res = {}
        km = fit_kmeans(acts, 10, init=init_centroids(), n_iter=8, tol=0.0, progress=False)
        res["kmeans"] = (km.W_enc.T.double() + km.b_dec.double(), km.cfg.metadata.inertia)
        pk = fit_pca_kmeans(acts, 10, 3, n_iter=6, tol=0.0, seed=1, progress=False)
        res["pca_kmeans"] = (pk.W_dec.double(), pk.cfg.metadata.inertia)
        kp = fit_kmeans(acts, 10, init="k-means||", n_iter=5, seed=2, progress=False)
        res["kmeans||"] = (kp.W_enc.T.double(), kp.cfg.metadata.inertia)
        rk = fit_residual_kmeans(acts, 4, 2, n_iter=5, seed=3, progress=False)
        res["residual"] = (rk.W_enc.T.double(), rk.cfg.metadata.inertia)
        ck = f"{out}/ck.pt"
        a = fit_kmeans(
            acts, 10, init=init_centroids(), n_iter=4, tol=0.0, progress=False, checkpoint=ck
        )
        b = fit_kmeans(
            acts, 10, init=init_centroids(), n_iter=8, tol=0.0, progress=False, checkpoint=ck
        )
        res["extended"] = (b.W_enc.T.double(), a.cfg.metadata.inertia)
        for init in ("k-means++", "random"):  # default seedings: independent of the ranks
            sd = fit_kmeans(acts, 10, init=init, n_iter=6, seed=4, progress=False)
            res[f"seeded {init}"] = (sd.W_enc.T.double(), sd.cfg.metadata.inertia)
        try:  # a checkpoint on rank 0 only: the same clear error on both ranks, no hang
            fit_kmeans(
                acts, 10, n_iter=2, progress=False, checkpoint=f"{out}/r0.pt" if rank == 0 else None
            )
            res["rank0_checkpoint"] = "no error"
        except ValueError as err:
            res["rank0_checkpoint"] = str(err)
        torch.save(res, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()
