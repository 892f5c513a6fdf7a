"""Clustering baselines as SAEs: k-means and PCA + k-means that SAEBench's unmodified core
eval scores like any SAE. Call :func:`register` (or just fit) before
``sae_lens.SAE.load_from_disk`` on a saved one."""

from .activations import collect_activations
from .fit import fit_kmeans, fit_pca_kmeans
from .sae import (
    ClusteringSAE,
    KMeansSAEConfig,
    PCAKMeansSAEConfig,
    load_clustering_sae,
    register,
)

__all__ = [
    "ClusteringSAE",
    "KMeansSAEConfig",
    "PCAKMeansSAEConfig",
    "collect_activations",
    "fit_kmeans",
    "fit_pca_kmeans",
    "load_clustering_sae",
    "register",
]
