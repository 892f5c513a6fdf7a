"""Clustering baselines as SAEs: k-means, PCA + k-means and residual k-means that
SAEBench's unmodified core eval scores like any SAE.

Importing this package registers the SAELens architectures ``kmeans``, ``pca_kmeans`` and
``residual_kmeans``, so ``sae_lens.SAE.load_from_disk`` loads a saved one.

Modules: ``source`` (activations and their exact statistics), ``seeding`` (greedy
k-means++, k-means||), ``lloyd`` (the iterations), ``empty`` (refilling empty clusters),
``reduce`` (one process or torch.distributed), ``checkpoint``, ``codebook_fit`` (stages →
codebook), ``sae`` (codebook → SAE), ``fit`` (the public fit functions), ``klines``,
``codebook_saes`` (top-1 and matching pursuit over a codebook), ``activations``
(collecting them from a model). What a fit can be told is
:class:`~sae_fvu_plugin.kmeans_options.KMeansOptions` (re-exported here; it lives outside
this package so the command line can build its flags without importing SAELens); where the
tokens came from is :class:`~sae_fvu_plugin.provenance.Provenance`.
"""

from ..kmeans_options import KMeansOptions
from ..provenance import OverlapError, Provenance
from .activations import collect_activations
from .fit import fit_kmeans, fit_pca_kmeans, fit_residual_kmeans
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
