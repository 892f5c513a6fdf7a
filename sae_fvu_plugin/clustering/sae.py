"""Clustering baselines as SAELens SAEs: architectures ``kmeans`` and ``pca_kmeans``.

With data mean μ (``b_dec``), p PCA axes v_1..v_p (rows of ``W_dec[:p]``) and k centroids
c̃_1..c̃_k of the PCA residual, centred (columns of ``W_enc[:, p:]``):

* ``encode(x)``: z = x − μ; the first p latents are the PCA coefficients a_j = v_j·z; the
  residual r = z − Σ_j a_j v_j is assigned to its nearest centroid
  k* = argmin_k ‖r − c̃_k‖², whose latent takes the value ‖c̃_{k*}‖ (all other cluster
  latents are 0). So ``kmeans`` (p = 0) has L0 exactly 1.
* ``decode(f)`` = f W_dec + μ = μ + Σ_j a_j v_j + c̃_{k*}, since cluster rows of ``W_dec``
  are the unit vectors c̃_k / ‖c̃_k‖.
* ``b_enc`` makes the pre-activations x W_enc + b_enc equal to the PCA coefficients and the
  assignment scores r·c̃_k − ½‖c̃_k‖² (argmax = nearest centroid): for PCA latents
  b_enc_j = −μ·v_j; for cluster latents b_enc_k = −μ·c̃_k − ½‖c̃_k‖² (exact when c̃_k ⟂ v_j).

A centroid equal to the mean (c̃ = 0) has a zero latent and an arbitrary unit decoder row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE, SAEConfig
from sae_lens.registry import SAE_CLASS_REGISTRY, register_sae_class
from sae_lens.saes.sae import SAEMetadata
from torch import nn


@dataclass
class KMeansSAEConfig(SAEConfig):
    """SAELens config of a k-means SAE: d_sae = number of clusters."""

    n_pca: int = 0

    @classmethod
    def architecture(cls) -> str:
        return "kmeans"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_pca != 0:
            raise ValueError(
                f"architecture 'kmeans' has n_pca=0, got {self.n_pca}; use pca_kmeans."
            )
        if self.d_sae < 1:
            raise ValueError(f"d_sae (clusters) must be ≥ 1, got {self.d_sae}.")


@dataclass
class PCAKMeansSAEConfig(KMeansSAEConfig):
    """SAELens config of PCA + k-means: d_sae = n_pca + n_clusters."""

    @classmethod
    def architecture(cls) -> str:
        return "pca_kmeans"

    def __post_init__(self) -> None:
        SAEConfig.__post_init__(self)
        if not 1 <= self.n_pca <= self.d_in:
            raise ValueError(f"n_pca must be in [1, d_in={self.d_in}], got {self.n_pca}.")
        if self.d_sae - self.n_pca < 1:
            raise ValueError(
                f"d_sae={self.d_sae} leaves no cluster after n_pca={self.n_pca}; "
                "d_sae = n_pca + n_clusters with n_clusters ≥ 1."
            )


class ClusteringSAE(SAE[KMeansSAEConfig]):
    """k-means (or PCA + k-means) as an SAE; see the module docstring for the maps."""

    b_enc: nn.Parameter

    def __init__(self, cfg: KMeansSAEConfig, use_error_term: bool = False) -> None:
        super().__init__(cfg, use_error_term)
        _standardize_for_saebench(self)

    def initialize_weights(self) -> None:
        # Fitted by clustering, not by gradients.
        kw = {"dtype": self.dtype, "device": self.device}
        d_in, d_sae = self.cfg.d_in, self.cfg.d_sae
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, **kw), requires_grad=False)
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw), requires_grad=False)
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, **kw), requires_grad=False)
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw), requires_grad=False)

    @property
    def n_pca(self) -> int:
        return self.cfg.n_pca

    @property
    def n_clusters(self) -> int:
        return self.cfg.d_sae - self.cfg.n_pca

    def assign(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(PCA coefficients or None, nearest-centroid index) for activations x (..., d)."""
        z = self.process_sae_in(x)  # cast, hooks, minus μ (apply_b_dec_to_input)
        p = self.n_pca
        coef = None
        if p:
            basis = self.W_enc[:, :p]
            coef = z @ basis
            z = z - coef @ basis.T
        cents = self.W_enc[:, p:]
        scores = z @ cents - 0.5 * cents.square().sum(0)
        return coef, scores.argmax(-1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        coef, idx = self.assign(x)
        p = self.n_pca
        norms = self.W_enc[:, p:].norm(dim=0)
        feats = torch.zeros(*idx.shape, self.cfg.d_sae, dtype=self.dtype, device=idx.device)
        if coef is not None:
            feats[..., :p] = coef
        feats.scatter_(-1, (idx + p).unsqueeze(-1), norms[idx].unsqueeze(-1))
        return self.hook_sae_acts_post(self.hook_sae_acts_pre(feats))

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        out = self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)
        out = self.run_time_activation_norm_fn_out(out)
        return self.reshape_fn_out(out, self.d_head)

    @classmethod
    def from_fit(
        cls,
        mean: torch.Tensor,
        centroids: torch.Tensor,
        components: torch.Tensor | None = None,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        metadata: dict[str, Any] | None = None,
    ) -> ClusteringSAE:
        """Build from the fitted mean (d,), centred centroids (k, d) of the PCA residual and
        PCA components (p, d) with orthonormal rows (None for plain k-means)."""
        register()
        k, d = centroids.shape
        p = 0 if components is None else components.shape[0]
        meta = SAEMetadata(**(metadata or {}))
        cfg_cls = PCAKMeansSAEConfig if p else KMeansSAEConfig
        cfg = cfg_cls(d_in=d, d_sae=p + k, n_pca=p, dtype=dtype, device=device, metadata=meta)
        sae = cls(cfg)
        c64 = centroids.to("cpu", torch.float64)
        mu = mean.to("cpu", torch.float64)
        norms = c64.norm(dim=1)
        unit = torch.where(
            norms[:, None] > 0,
            c64 / norms.clamp(min=1e-300)[:, None],
            torch.eye(1, d, dtype=c64.dtype),
        )
        w_enc = torch.zeros(d, p + k, dtype=torch.float64)
        w_dec = torch.zeros(p + k, d, dtype=torch.float64)
        b_enc = torch.zeros(p + k, dtype=torch.float64)
        if p:
            v = components.to("cpu", torch.float64)  # type: ignore[union-attr]
            w_enc[:, :p] = v.T
            w_dec[:p] = v
            b_enc[:p] = -(v @ mu)
        w_enc[:, p:] = c64.T
        w_dec[p:] = unit
        b_enc[p:] = -(c64 @ mu) - 0.5 * norms.square()
        with torch.no_grad():
            for name, value in (
                ("W_enc", w_enc),
                ("b_enc", b_enc),
                ("W_dec", w_dec),
                ("b_dec", mu),
            ):
                getattr(sae, name).copy_(value.to(sae.dtype))
        return sae


def _standardize_for_saebench(sae: ClusteringSAE) -> None:
    """Set the cfg attributes SAEBench reads (hook_name, hook_layer, architecture_str, ...)
    when the metadata names a model and hook, so a fitted SAE goes straight into
    SAEBench's run_evals."""
    meta = sae.cfg.metadata
    if meta.hook_name is None or meta.model_name is None:
        return
    from sae_bench.sae_bench_utils.general_utils import _standardize_sae_cfg

    _standardize_sae_cfg(sae.cfg)


def register() -> None:
    """Register ``kmeans`` and ``pca_kmeans`` with SAELens (idempotent), so
    ``sae_lens.SAE.load_from_disk`` returns a :class:`ClusteringSAE`."""
    for arch, cfg_cls in (("kmeans", KMeansSAEConfig), ("pca_kmeans", PCAKMeansSAEConfig)):
        have = SAE_CLASS_REGISTRY.get(arch)
        if have is None:
            register_sae_class(arch, ClusteringSAE, cfg_cls)
        elif have[0].__name__ != "ClusteringSAE":
            raise RuntimeError(f"SAELens architecture {arch!r} is taken by {have[0].__name__}.")


def load_clustering_sae(
    path: str | Path, *, device: str = "cpu", expected_d_in: int | None = None
) -> ClusteringSAE:
    """``SAE.load_from_disk`` with clear errors for missing, corrupt or mismatched files."""
    register()
    path = Path(path)
    cfg_path, weights = path / "cfg.json", path / "sae_weights.safetensors"
    for f in (cfg_path, weights):
        if not f.is_file():
            raise FileNotFoundError(
                f"{f} is missing: {path} is not a saved SAE (expected cfg.json and "
                "sae_weights.safetensors, as written by sae.save_model(path))."
            )
    try:
        sae = SAE.load_from_disk(path, device=device)
    except Exception as err:
        raise ValueError(
            f"Could not load the SAE at {path}: {type(err).__name__}: {err}. The files look "
            "corrupt or truncated; re-fit or restore them."
        ) from err
    if not isinstance(sae, ClusteringSAE):
        raise TypeError(f"{path} holds a {type(sae).__name__}, not a clustering SAE.")
    if expected_d_in is not None and sae.cfg.d_in != expected_d_in:
        raise ValueError(
            f"The SAE at {path} has d_in={sae.cfg.d_in} but the hook "
            f"{sae.cfg.metadata.hook_name!r} has width {expected_d_in}; it was fitted on "
            "another model or hook. Evaluate it on the hook it was fitted on."
        )
    return sae
