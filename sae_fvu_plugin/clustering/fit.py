"""Fit k-means and PCA + k-means on activations and return a :class:`ClusteringSAE`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .kmeans import (
    ActivationSource,
    LloydState,
    data_stats,
    kmeans_plus_plus,
    lloyd,
    load_checkpoint,
    pca_from_stats,
    save_checkpoint,
    sub_rows,
    tolerance,
    uniform_sample,
)
from .sae import ClusteringSAE

__all__ = ["fit_kmeans", "fit_pca_kmeans"]


def fit_kmeans(
    acts: Any,
    n_clusters: int,
    *,
    n_iter: int = 50,
    tol: float = 1e-4,
    init: str | torch.Tensor = "k-means++",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 5,
    init_sample: int | None = None,
    empty: str = "split",
    **metadata: Any,
) -> ClusteringSAE:
    """Lloyd's k-means with ``n_clusters`` centroids, as a ``kmeans`` SAE (L0 = 1).

    Minimises inertia Σ_n min_k ‖x_n − c_k‖². Stops after ``n_iter`` iterations, when the
    labels stop changing, or when the centre shift Σ_k ‖Δc_k‖² ≤ ``tol`` × mean
    per-dimension variance (sklearn's rule). ``init``: ``"k-means++"`` (on a uniform sample
    of ``init_sample`` rows, default min(N, max(16k, 10000))), ``"random"`` (k distinct
    rows of that sample) or a (k, d) tensor of initial centroids. ``device``: where the
    work runs (default CUDA when available). ``checkpoint``: a file saved every
    ``checkpoint_every`` iterations; a re-run with the same settings and data resumes from
    it to the identical result. ``metadata`` (``model_name=``, ``hook_name=``,
    ``context_size=``, ``dataset=``, ...) is recorded in ``sae.cfg.metadata``. ``empty``:
    how empty clusters are refilled — ``"split"`` (split a populous cluster, like faiss)
    or ``"farthest"`` (the rows farthest from their centroids, like scikit-learn).
    """
    return _fit(acts, n_clusters, 0, locals() | metadata)


def fit_pca_kmeans(
    acts: Any,
    n_clusters: int,
    n_pca: int,
    *,
    n_iter: int = 50,
    tol: float = 1e-4,
    init: str | torch.Tensor = "k-means++",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 5,
    init_sample: int | None = None,
    empty: str = "split",
    **metadata: Any,
) -> ClusteringSAE:
    """PCA with ``n_pca`` components on the centred data, then k-means on the PCA
    residual r = (x − μ) − V Vᵀ (x − μ); a ``pca_kmeans`` SAE with d_sae = n_pca +
    n_clusters. Other arguments as :func:`fit_kmeans` (an ``init`` tensor is given in
    activation space and projected like the data)."""
    return _fit(acts, n_clusters, n_pca, locals() | metadata)


_OPTIONS = {
    "acts",
    "n_clusters",
    "n_pca",
    "n_iter",
    "tol",
    "init",
    "seed",
    "device",
    "progress",
    "checkpoint",
    "checkpoint_every",
    "init_sample",
    "metadata",
    "empty",
}


def _fit(acts: Any, n_clusters: int, n_pca: int, opts: dict[str, Any]) -> ClusteringSAE:
    meta = {k: v for k, v in opts.items() if k not in _OPTIONS}
    if not isinstance(n_clusters, int) or n_clusters < 1:
        raise ValueError(f"n_clusters must be a positive int, got {n_clusters!r}.")
    if not isinstance(n_pca, int) or n_pca < 0:
        raise ValueError(f"n_pca must be a non-negative int, got {n_pca!r}.")
    n_iter, seed = int(opts["n_iter"]), int(opts["seed"])
    if opts["empty"] not in ("split", "farthest"):
        raise ValueError(f"empty must be 'split' or 'farthest', got {opts['empty']!r}.")
    dev = torch.device(opts["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
    source = ActivationSource(acts)
    stats = data_stats(source, dev, scatter=n_pca > 0)
    n, d = stats.n, int(source.d or 0)
    if n_clusters > n:
        raise ValueError(
            f"n_clusters={n_clusters} exceeds the number of activation rows N={n}; use "
            "fewer clusters or more tokens."
        )
    if n_pca >= d:
        raise ValueError(f"n_pca={n_pca} must be below the width d={d}.")
    compute_dtype = torch.float64 if source.dtype == torch.float64 else torch.float32

    mean = stats.mean
    pca = pca_from_stats(stats, n_pca) if n_pca else None
    basis = None if pca is None else pca.components.to(dev)

    def transform(b: torch.Tensor) -> torch.Tensor:
        """z = x − μ (minus its PCA part), in float64 chunks, returned in compute dtype."""
        out = torch.empty(b.shape, dtype=compute_dtype, device=dev)
        step = sub_rows(b.shape[1], dev)
        for s in range(0, b.shape[0], step):
            z = b[s : s + step].to(dev, torch.float64) - mean
            if basis is not None:
                z = z - (z @ basis.T) @ basis
            out[s : s + step] = z
        return out

    if source.in_memory:  # transform once; each Lloyd pass then only reads
        held = [transform(b) for b in source.batches() if b.shape[0]]

        def batches() -> Iterator[torch.Tensor]:
            return iter(held)
    else:

        def batches() -> Iterator[torch.Tensor]:
            return (transform(b) for b in source.batches() if b.shape[0])

    init = opts["init"]
    if isinstance(init, torch.Tensor):
        if init.shape != (n_clusters, d):
            raise ValueError(
                f"init has shape {tuple(init.shape)}, expected (n_clusters, d) = ({n_clusters}, {d})."
            )
        init_key = (
            "tensor:"
            + hashlib.sha256(init.detach().to("cpu", torch.float64).numpy().tobytes()).hexdigest()[
                :16
            ]
        )
    elif init in ("k-means++", "random"):
        init_key = str(init)
    else:
        raise ValueError(f"init must be 'k-means++', 'random' or a tensor, got {init!r}.")

    settings = {
        "kind": "pca_kmeans" if n_pca else "kmeans",
        "n_clusters": n_clusters,
        "n_pca": n_pca,
        "tol": float(opts["tol"]),
        "init": init_key,
        "init_sample": opts["init_sample"],
        "seed": seed,
        "empty": opts["empty"],
        "data": stats.fingerprint,
        "compute_dtype": str(compute_dtype),
    }
    ckpt = None if opts["checkpoint"] is None else Path(opts["checkpoint"])
    saved = None if ckpt is None else load_checkpoint(ckpt, settings)
    if saved is not None:
        state = LloydState(
            centroids=saved["centroids"].to(dev),
            iteration=int(saved["iteration"]),
            labels=saved["labels"],
            history=list(saved["history"]),
            converged=bool(saved["converged"]),
        )
    else:
        state = LloydState(
            centroids=_initial_centroids(
                init, transform, batches, n, n_clusters, seed, opts["init_sample"], compute_dtype
            )
        )

    every = max(1, int(opts["checkpoint_every"]))
    bar = tqdm(
        total=n_iter,
        initial=min(state.iteration, n_iter),
        disable=not opts["progress"],
        desc=f"{settings['kind']} k={n_clusters}" + (f" p={n_pca}" if n_pca else ""),
        unit="it",
    )

    def on_iteration(s: LloydState) -> None:
        bar.update(1)
        bar.set_postfix(inertia=f"{s.history[-1]:.6g}")
        if ckpt is not None and (s.iteration % every == 0 or s.converged or s.iteration >= n_iter):
            save_checkpoint(ckpt, _payload(s, settings))

    try:
        state, inertia, labels = lloyd(
            batches,
            state,
            n_iter=n_iter,
            tol=tolerance(float(opts["tol"]), stats),
            compute_dtype=compute_dtype,
            device=dev,
            on_iteration=on_iteration,
            empty=opts["empty"],
            seed=seed,
        )
    finally:
        bar.close()
    if ckpt is not None:
        save_checkpoint(ckpt, _payload(state, settings))

    counts = torch.bincount(labels, minlength=n_clusters)
    meta.setdefault("prepend_bos", True)
    meta.update(
        n_tokens=n,
        seed=seed,
        n_clusters=n_clusters,
        n_pca=n_pca,
        inertia=inertia,
        total_sum_of_squares=stats.total_ss,
        fit_explained_variance_fvu_a=1.0 - inertia / stats.total_ss if stats.total_ss else None,
        n_iter_run=state.iteration,
        converged=state.converged,
        init=init_key,
        empty_strategy=opts["empty"],
        empty_clusters=int((counts == 0).sum()),
        inertia_history=state.history,
        iteration_seconds=[round(t, 4) for t in state.seconds],
    )
    if pca is not None:
        meta["pca_explained_variance_ratio"] = pca.explained_variance_ratio.tolist()
    return ClusteringSAE.from_fit(
        mean, state.centroids, None if pca is None else pca.components, metadata=meta
    )


def _payload(state: LloydState, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "settings": settings,
        "centroids": state.centroids.cpu(),
        "iteration": state.iteration,
        "labels": state.labels,
        "history": state.history,
        "converged": state.converged,
    }


def _initial_centroids(
    init: str | torch.Tensor,
    transform: Any,
    batches: Any,
    n: int,
    k: int,
    seed: int,
    init_sample: int | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    if isinstance(init, torch.Tensor):
        return transform(init).to(torch.float64)
    gen = torch.Generator().manual_seed(seed)
    m = min(n, init_sample or max(16 * k, 10_000))
    m = max(m, k)
    sample = uniform_sample(batches(), m, gen)
    if init == "random":
        pick = torch.randperm(sample.shape[0], generator=gen)[:k]
        return sample[pick.to(sample.device)].to(torch.float64).clone()
    return kmeans_plus_plus(sample, k, gen, dtype)
