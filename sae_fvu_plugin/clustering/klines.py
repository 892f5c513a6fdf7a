"""k-lines: the codebook of a top-1 SAE with a gain, fitted directly.

On centred data z_n = x_n − μ, find k unit directions u_1..u_k minimising

    Σ_n min_k ‖z_n − (u_k·z_n) u_k‖²  =  Σ_n ‖z_n‖² − Σ_n max_k (u_k·z_n)²,

i.e. each token is reconstructed by its best line through the mean (one latent, value
u_k·z, sign kept: SAELens's ``abstopk`` SAE with k = 1). Lloyd-like: assign each row to
argmax_k |u_k·z|; then replace u_k by one power-iteration step on its rows' scatter,
u_k ← Σ_{n∈k} (u_k·z_n) z_n / ‖·‖, which never lowers Σ_{n∈k} (u_k·z_n)² — so the
objective never increases. Streams and shards like the k-means fits (one all_reduce of
the per-line sums per iteration).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..kmeans_options import KMeansOptions
from ..provenance import Provenance
from ..validate import check_int, resolve_device
from .precision import resolve_score_dtype
from .reduce import current_reducer
from .seeding import _generator, greedy_kmeans_pp, uniform_sample
from .source import ActivationSource, data_stats, sub_rows

_SCORE_ELEMENTS = 1 << 22


def _assign(z: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(label, projection) of each row: argmax_k |u_k·z| and u_k·z there."""
    lab = torch.empty(z.shape[0], dtype=torch.long, device=z.device)
    proj = torch.empty(z.shape[0], dtype=z.dtype, device=z.device)
    step = max(1, _SCORE_ELEMENTS // max(u.shape[0], 1))
    for s in range(0, z.shape[0], step):
        p = z[s : s + step] @ u.T
        i = p.abs().argmax(1)
        lab[s : s + step] = i
        proj[s : s + step] = p.gather(1, i[:, None])[:, 0]
    return lab, proj


def fit_klines(
    acts: Any,
    n_lines: int,
    *,
    init_codebook: torch.Tensor | None = None,
    options: KMeansOptions | None = None,
    metadata: Mapping[str, Any] | None = None,
    provenance: Provenance | None = None,
    **kwargs: Any,
) -> Any:
    """k-lines with ``n_lines`` directions, as a SAELens ``abstopk`` SAE with k = 1 (L0 = 1;
    latent = signed projection on the chosen line; decoder rows unit norm).

    ``init_codebook``: (k, d) initial directions in the centred frame (e.g. k-means
    centroids; normalised here); default greedy k-means++ rows of a uniform sample,
    normalised. Options (``n_iter``, ``tol`` on the relative objective change, ``seed``,
    ``device``, ``init_sample``) as :class:`KMeansOptions`.
    """
    from .fit import base_metadata

    opts = KMeansOptions.build(options, "fit_klines", **kwargs)
    k = check_int("n_lines", n_lines, 1)
    meta = base_metadata(metadata, provenance)
    reducer = current_reducer()
    device = torch.device(resolve_device(opts.device))
    source = ActivationSource(acts)
    stats = data_stats(source, device, reducer)
    if k > stats.n:
        raise ValueError(f"n_lines={k} exceeds the number of activation rows N={stats.n}.")
    dtype = torch.float64 if stats.dtype == torch.float64 else torch.float32
    mean = stats.mean.to(device)

    def centred(b: torch.Tensor) -> torch.Tensor:
        out = torch.empty(b.shape, dtype=dtype, device=device)
        step = sub_rows(b.shape[1], device)
        for s in range(0, b.shape[0], step):
            out[s : s + step] = b[s : s + step].to(device, torch.float64) - mean
        return out

    held = [centred(b) for b in source.batches() if b.shape[0]] if source.in_memory else None
    passes = 1 + (1 if held is not None else 0)

    def batches() -> Any:
        nonlocal passes
        passes += 1
        if held is not None:
            return iter(held)
        return (centred(b) for b in source.batches() if b.shape[0])

    u = _initial_lines(init_codebook, k, stats, batches, opts, reducer, device, dtype)
    u, history = _iterate(batches, u, stats, opts, reducer, dtype)
    residual = torch.zeros(1, dtype=torch.float64, device=device)
    ud = u.to(dtype)
    for z in batches():
        _, proj = _assign(z, ud)
        residual += z.double().square().sum() - proj.double().square().sum()
    residual_ss = float(reducer.sum_(residual))
    total = stats.total_ss
    meta |= {
        "n_tokens": stats.n,
        "inertia": residual_ss,
        "total_sum_of_squares": total,
        "fit_explained_variance_fvu_a": 1.0 - residual_ss / total if total > 0 else None,
        "passes": passes,
        "tokens_seen": passes * stats.n,
        "fit": {
            "kind": "klines",
            "n_lines": k,
            "objective_history": history,
            "n_iter_run": len(history),
        },
    }
    return _as_sae(u, stats.mean, meta)


def _initial_lines(
    init_codebook: torch.Tensor | None,
    k: int,
    stats: Any,
    batches: Any,
    opts: KMeansOptions,
    reducer: Any,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """(k, d) unit directions: ``init_codebook`` normalised, or greedy k-means++ rows of a
    uniform sample (the same on every rank)."""
    if init_codebook is not None:
        if tuple(init_codebook.shape) != (k, stats.d):
            raise ValueError(
                f"init_codebook has shape {tuple(init_codebook.shape)}, expected ({k}, {stats.d})."
            )
        u = init_codebook.to(device, torch.float64)
    else:
        sample = uniform_sample(
            batches, opts.sample_size(stats.n, k), opts.seed, reducer, stats.row_offset
        )
        u = greedy_kmeans_pp(
            sample.to(device),
            k,
            _generator(opts.seed, 1),
            opts.local_trials(k),
            dtype=dtype,
            score_dtype=resolve_score_dtype(opts.compute_dtype, device),
        )
        u = reducer.broadcast(u.cpu()).to(device)
    return u / u.norm(dim=1, keepdim=True).clamp(min=1e-30)


def _iterate(
    batches: Any, u: torch.Tensor, stats: Any, opts: KMeansOptions, reducer: Any, dtype: torch.dtype
) -> tuple[torch.Tensor, list[float]]:
    """Alternate assignment (the line of largest |projection|) and update (each line the
    top eigenvector direction Σ_n a_n z_n of its rows) until no label changes, the relative
    objective change is ≤ tol, or ``n_iter``; returns the lines and the objective history."""
    k, device = u.shape[0], u.device
    history: list[float] = []
    labels_prev: list[torch.Tensor] | None = None
    for _ in range(opts.n_iter):
        ud = u.to(dtype)
        sums = torch.zeros(k, stats.d, dtype=torch.float64, device=device)
        explained = torch.zeros(1, dtype=torch.float64, device=device)
        labels: list[torch.Tensor] = []
        for z in batches():
            lab, proj = _assign(z, ud)
            labels.append(lab)
            sums.index_add_(0, lab, (z * proj[:, None]).to(torch.float64))
            explained += proj.double().square().sum()
        packed = reducer.sum_(torch.cat([sums.flatten(), explained]))
        sums, explained_sum = packed[:-1].view(k, stats.d), float(packed[-1])
        history.append(stats.total_ss - explained_sum)
        norms = sums.norm(dim=1, keepdim=True)
        u = torch.where(norms > 0, sums / norms.clamp(min=1e-300), u)  # unused lines stay
        stable = labels_prev is not None and all(
            torch.equal(a, b) for a, b in zip(labels, labels_prev, strict=True)
        )
        labels_prev = labels
        rel = abs(history[-2] - history[-1]) / max(history[-2], 1e-300) if len(history) > 1 else 1.0
        if stable or rel <= opts.tol:
            break
    return u, history


def _as_sae(u: torch.Tensor, mean: torch.Tensor, meta: dict[str, Any]) -> Any:
    """SAELens's ``abstopk`` SAE with k = 1 on the lines ``u`` (encoder = decoder = u)."""
    from sae_lens import AbsTopKSAE, AbsTopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    k, d = u.shape
    cfg = AbsTopKSAEConfig(
        d_in=d, d_sae=k, k=1, dtype="float32", device="cpu", metadata=SAEMetadata(**meta)
    )
    sae = AbsTopKSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(u.T.float().cpu())
        sae.W_dec.copy_(u.float().cpu())
        sae.b_enc.zero_()
        sae.b_dec.copy_(mean.float().cpu())
    return sae
