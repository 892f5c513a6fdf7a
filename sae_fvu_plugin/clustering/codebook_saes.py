"""A clustering codebook as SAELens's own SAEs, with no encoder code of ours.

Directions u_k = c_k / ‖c_k‖ of centred centroids (rows of ``W_dec``), b_dec = μ:

* :func:`topk_from_codebook` — SAELens ``topk`` with k = 1 (the original experiment's
  "k-means centroids as the features of a top-1 SAE"): the latent is the projection
  u_k·(x − μ) of the best direction, not a fixed value, so x̂ = μ + (u·z) u. Per token it
  is never worse than k-means with the same centroids: for the k-means choice c_j,
  ‖z − c_j‖² ≥ ‖z − (u_j·z)⁺ u_j‖² ≥ ‖z‖² − max_k ((u_k·z)⁺)².
* :func:`matching_pursuit_from_codebook` — SAELens ``matching_pursuit`` over the same unit
  codebook with ``max_iterations`` = m: greedily subtract the best positive projection m
  times, so L0 ≤ m.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def unit_directions(centroids: torch.Tensor) -> torch.Tensor:
    """Rows normalised to unit length (a zero row becomes the first basis vector)."""
    c = centroids.to(torch.float64)
    norms = c.norm(dim=1, keepdim=True)
    basis = torch.zeros_like(c)
    basis[:, 0] = 1.0
    return torch.where(norms > 0, c / norms.clamp(min=1e-300), basis)


def codebook_of(sae: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean μ, unit directions (k, d)) of a ``kmeans`` ClusteringSAE."""
    if sae.cfg.architecture() != "kmeans":
        raise ValueError(f"need a 'kmeans' SAE, got {sae.cfg.architecture()!r}.")
    return sae.b_dec.detach().double().cpu(), unit_directions(
        sae.stage_centroids(0).T.detach().cpu()
    )


def topk_from_codebook(
    mean: torch.Tensor,
    directions: torch.Tensor,
    metadata: Mapping[str, Any] | None = None,
    *,
    k: int = 1,
) -> Any:
    """SAELens ``TopKSAE`` (k latents, ReLU'd projections) on unit ``directions``."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    u = unit_directions(directions)
    cfg = TopKSAEConfig(
        d_in=u.shape[1],
        d_sae=u.shape[0],
        k=k,
        dtype="float32",
        device="cpu",
        rescale_acts_by_decoder_norm=False,
        metadata=SAEMetadata(**dict(metadata or {})),
    )
    sae = TopKSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(u.T.float())
        sae.W_dec.copy_(u.float())
        sae.b_enc.zero_()
        sae.b_dec.copy_(mean.float())
    return sae


def matching_pursuit_from_codebook(
    mean: torch.Tensor,
    directions: torch.Tensor,
    max_iterations: int,
    metadata: Mapping[str, Any] | None = None,
) -> Any:
    """SAELens ``MatchingPursuitSAE`` over unit ``directions``, at most ``max_iterations``
    latents per token (no residual threshold)."""
    from sae_lens import MatchingPursuitSAE, MatchingPursuitSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    u = unit_directions(directions)
    cfg = MatchingPursuitSAEConfig(
        d_in=u.shape[1],
        d_sae=u.shape[0],
        dtype="float32",
        device="cpu",
        residual_threshold=0.0,
        max_iterations=max_iterations,
        metadata=SAEMetadata(**dict(metadata or {})),
    )
    sae = MatchingPursuitSAE(cfg)
    with torch.no_grad():
        sae.W_dec.copy_(u.float())
        sae.b_dec.copy_(mean.float())
    return sae
