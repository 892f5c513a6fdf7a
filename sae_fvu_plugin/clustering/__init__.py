"""Clustering baselines as SAEs: k-means, PCA + k-means and residual k-means that
SAEBench's unmodified core eval scores like any SAE.

Importing this package registers the SAELens architectures ``kmeans``, ``pca_kmeans`` and
``residual_kmeans``, so ``sae_lens.SAE.load_from_disk`` loads a saved one.

Modules: ``options`` (what a fit can be told), ``source`` (activations and their exact
statistics), ``seeding`` (greedy k-means++, k-means||), ``lloyd`` (the iterations),
``reduce`` (one process or torch.distributed), ``checkpoint``, ``provenance`` (held-out
evaluation), ``pipeline`` (stages → codebook), ``sae`` (codebook → SAE), ``api`` (the fit
functions), ``activations`` (collecting them from a model).
"""

from ..options import KMeansOptions
from .activations import collect_activations
from .api import fit_kmeans, fit_pca_kmeans, fit_residual_kmeans
from .provenance import OverlapError, Provenance
from .sae import (
    ClusteringSAE,
    ClusteringSAEConfig,
    KMeansSAEConfig,
    PCAKMeansSAEConfig,
    ResidualKMeansSAEConfig,
    load_clustering_sae,
    register,
)

register()

__all__ = [
    "ClusteringSAE",
    "ClusteringSAEConfig",
    "KMeansOptions",
    "KMeansSAEConfig",
    "OverlapError",
    "PCAKMeansSAEConfig",
    "Provenance",
    "ResidualKMeansSAEConfig",
    "collect_activations",
    "fit_kmeans",
    "fit_pca_kmeans",
    "fit_residual_kmeans",
    "load_clustering_sae",
    "register",
]
