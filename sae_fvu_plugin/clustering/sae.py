"""Codebook → SAELens SAE: architectures ``kmeans``, ``pca_kmeans`` and ``residual_kmeans``.

With data mean μ (``b_dec``), p PCA axes v_1..v_p (rows of ``W_dec[:p]``) and, per stage s,
centroids c̃_{s,1..k} in the centred frame (columns of ``W_enc``):

* ``encode(x)``: z = x − μ; the first p latents are the PCA coefficients a_j = v_j·z and
  r = z − Σ_j a_j v_j. For each stage in turn, r is assigned to its nearest centroid
  k*_s = argmin_k ‖r − c̃_{s,k}‖², whose latent takes the value ‖c̃_{s,k*}‖ (the stage's
  other latents are 0), and r ← r − c̃_{s,k*}. So ``kmeans`` has L0 exactly 1,
  ``pca_kmeans`` n_pca + 1 and ``residual_kmeans`` exactly n_stages — the same greedy
  assignment the fit used.
* ``decode(f)`` = f W_dec + μ = μ + Σ_j a_j v_j + Σ_s c̃_{s,k*_s}, since centroid rows of
  ``W_dec`` are the unit vectors c̃ / ‖c̃‖.
* ``b_enc`` makes the pre-activations x W_enc + b_enc equal to the PCA coefficients and
  the assignment scores z·c̃ − ½‖c̃‖² (argmax = nearest centroid): b_enc_j = −μ·v_j for PCA
  latents, −μ·c̃ − ½‖c̃‖² for centroid latents. This is exact for the first k-means stage
  when c̃ ⟂ v_j; later residual stages score the residual, which a linear map cannot.

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

from ..sae_io import load_saved_sae, save_sae


@dataclass
class ClusteringSAEConfig(SAEConfig):
    """Shared fields: d_sae = n_pca + n_stages × n_clusters."""

    n_pca: int = 0
    n_stages: int = 1

    @property
    def n_clusters(self) -> int:
        return (self.d_sae - self.n_pca) // self.n_stages

    def _check(self) -> None:
        if self.n_stages < 1:
            raise ValueError(f"n_stages must be ≥ 1, got {self.n_stages}.")
        rest = self.d_sae - self.n_pca
        if rest < self.n_stages or rest % self.n_stages:
            raise ValueError(
                f"d_sae={self.d_sae} must equal n_pca ({self.n_pca}) + n_stages "
                f"({self.n_stages}) × n_clusters with n_clusters ≥ 1."
            )


@dataclass
class KMeansSAEConfig(ClusteringSAEConfig):
    """k-means: d_sae = number of clusters, L0 = 1."""

    @classmethod
    def architecture(cls) -> str:
        return "kmeans"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_pca != 0 or self.n_stages != 1:
            raise ValueError(
                f"architecture 'kmeans' has n_pca=0 and n_stages=1, got {self.n_pca} and "
                f"{self.n_stages}; use pca_kmeans or residual_kmeans."
            )
        self._check()


@dataclass
class PCAKMeansSAEConfig(ClusteringSAEConfig):
    """PCA + k-means: d_sae = n_pca + n_clusters, L0 = n_pca + 1."""

    @classmethod
    def architecture(cls) -> str:
        return "pca_kmeans"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.n_pca < self.d_in:
            raise ValueError(f"n_pca must be in [1, d_in={self.d_in}), got {self.n_pca}.")
        if self.n_stages != 1:
            raise ValueError(f"architecture 'pca_kmeans' has one stage, got {self.n_stages}.")
        self._check()


@dataclass
class ResidualKMeansSAEConfig(ClusteringSAEConfig):
    """Residual k-means: d_sae = n_stages × n_clusters, L0 = n_stages."""

    @classmethod
    def architecture(cls) -> str:
        return "residual_kmeans"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_pca != 0:
            raise ValueError(f"architecture 'residual_kmeans' has n_pca=0, got {self.n_pca}.")
        self._check()


CONFIGS: dict[str, type[ClusteringSAEConfig]] = {
    "kmeans": KMeansSAEConfig,
    "pca_kmeans": PCAKMeansSAEConfig,
    "residual_kmeans": ResidualKMeansSAEConfig,
}


class ClusteringSAE(SAE[ClusteringSAEConfig]):
    """k-means, PCA + k-means or residual k-means as an SAE (maps in the module doc)."""

    b_enc: nn.Parameter

    def __init__(self, cfg: ClusteringSAEConfig, use_error_term: bool = False) -> None:
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
    def n_stages(self) -> int:
        return self.cfg.n_stages

    @property
    def n_clusters(self) -> int:
        return self.cfg.n_clusters

    def stage_centroids(self, stage: int) -> torch.Tensor:
        """(d_in, k) centred centroids of one stage (columns)."""
        start = self.n_pca + stage * self.n_clusters
        return self.W_enc[:, start : start + self.n_clusters]

    def assign(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(PCA coefficients or None, nearest-centroid index per stage (..., n_stages))
        for activations x (..., d)."""
        z = self.process_sae_in(x)  # cast, hooks, minus μ (apply_b_dec_to_input)
        p = self.n_pca
        coef = None
        if p:
            basis = self.W_enc[:, :p]
            coef = z @ basis
            z = z - coef @ basis.T
        picks = []
        for s in range(self.n_stages):
            cents = self.stage_centroids(s)
            idx = (z @ cents - 0.5 * cents.square().sum(0)).argmax(-1)
            picks.append(idx)
            if s + 1 < self.n_stages:
                z = z - cents.T[idx]
        return coef, torch.stack(picks, -1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        coef, idx = self.assign(x)
        p, k = self.n_pca, self.n_clusters
        feats = torch.zeros(*idx.shape[:-1], self.cfg.d_sae, dtype=self.dtype, device=idx.device)
        if coef is not None:
            feats[..., :p] = coef
        for s in range(self.n_stages):
            norms = self.stage_centroids(s).norm(dim=0)
            i = idx[..., s]
            feats.scatter_(-1, (i + p + s * k).unsqueeze(-1), norms[i].unsqueeze(-1))
        return self.hook_sae_acts_post(self.hook_sae_acts_pre(feats))

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        out = self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)
        out = self.run_time_activation_norm_fn_out(out)
        return self.reshape_fn_out(out, self.d_head)

    def save_model(self, path: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
        """SAELens's format (``cfg.json`` + ``sae_weights.safetensors``) through
        :func:`sae_fvu_plugin.sae_io.save_sae`: a non-empty folder that holds no saved SAE
        is refused, and ``overwrite=True`` replaces only the SAE's own files."""
        folder = save_sae(self, path, overwrite=overwrite)
        return folder / "sae_weights.safetensors", folder / "cfg.json"

    @classmethod
    def from_centroids(
        cls,
        mean: torch.Tensor,
        stages: list[torch.Tensor],
        components: torch.Tensor | None = None,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        metadata: dict[str, Any] | None = None,
    ) -> ClusteringSAE:
        """Build from the fitted mean (d,), each stage's centred centroids (k, d) and PCA
        components (p, d) with orthonormal rows (None for no PCA)."""
        register()
        d = mean.shape[0]
        ks = {c.shape[0] for c in stages}
        if len(ks) != 1 or any(c.shape[1] != d for c in stages):
            raise ValueError(
                f"every stage needs (k, {d}) centroids with the same k, got "
                f"{[tuple(c.shape) for c in stages]}."
            )
        k = ks.pop()
        p = 0 if components is None else components.shape[0]
        n_stages = len(stages)
        arch = "residual_kmeans" if n_stages > 1 else ("pca_kmeans" if p else "kmeans")
        cfg = CONFIGS[arch](
            d_in=d,
            d_sae=p + n_stages * k,
            n_pca=p,
            n_stages=n_stages,
            dtype=dtype,
            device=device,
            metadata=SAEMetadata(**(metadata or {})),
        )
        sae = cls(cfg)
        mu = mean.to("cpu", torch.float64)
        w_enc = torch.zeros(d, cfg.d_sae, dtype=torch.float64)
        w_dec = torch.zeros(cfg.d_sae, d, dtype=torch.float64)
        b_enc = torch.zeros(cfg.d_sae, dtype=torch.float64)
        if components is not None:
            v = components.to("cpu", torch.float64)
            w_enc[:, :p] = v.T
            w_dec[:p] = v
            b_enc[:p] = -(v @ mu)
        for s, c in enumerate(stages):
            c64 = c.to("cpu", torch.float64)
            norms = c64.norm(dim=1)
            unit = torch.where(
                norms[:, None] > 0,
                c64 / norms.clamp(min=1e-300)[:, None],
                torch.eye(1, d, dtype=c64.dtype),
            )
            cols = slice(p + s * k, p + (s + 1) * k)
            w_enc[:, cols] = c64.T
            w_dec[cols] = unit
            b_enc[cols] = -(c64 @ mu) - 0.5 * norms.square()
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
    """Register ``kmeans``, ``pca_kmeans`` and ``residual_kmeans`` with SAELens
    (idempotent; adds names, changes nothing else), so ``SAE.load_from_disk`` returns a
    :class:`ClusteringSAE`. Importing ``sae_fvu_plugin.clustering`` calls it."""
    for arch, cfg_cls in CONFIGS.items():
        have = SAE_CLASS_REGISTRY.get(arch)
        if have is None:
            register_sae_class(arch, ClusteringSAE, cfg_cls)
        elif have[0] is not ClusteringSAE:
            raise RuntimeError(
                f"SAELens architecture {arch!r} is already registered to {have[0].__name__}; "
                "sae_fvu_plugin cannot register its clustering SAE under that name."
            )


def load_clustering_sae(
    path: str | Path, *, device: str = "cpu", expected_d_in: int | None = None
) -> ClusteringSAE:
    """A saved clustering SAE (:func:`sae_fvu_plugin.sae_io.load_saved_sae` with the
    clustering architectures registered); another architecture is a ``TypeError``."""
    register()
    sae = load_saved_sae(path, device=device, expected_d_in=expected_d_in, standardize=False)
    if not isinstance(sae, ClusteringSAE):
        raise TypeError(f"{path} holds a {type(sae).__name__}, not a clustering SAE.")
    return sae
