"""Fit clustering baselines on activations and get SAELens SAEs back.

Every function takes the activations (a tensor (..., d), a list of batches, or a function
returning a fresh iterator of batches — this rank's shard when a ``torch.distributed``
process group is initialised), the shape of the model, and the options of
:class:`~sae_fvu_plugin.kmeans_options.KMeansOptions` as keywords (or
``options=KMeansOptions(...)``). An unknown keyword is a ``TypeError``. Your own metadata
goes in ``metadata={...}``; where the activations came from goes in
``provenance=Provenance(...)`` (what held-out evaluation checks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..kmeans_options import KMeansOptions
from ..provenance import Provenance
from ..validate import check_int
from .codebook_fit import Codebook, fit_codebook
from .sae import ClusteringSAE

__all__ = ["fit_kmeans", "fit_pca_kmeans", "fit_residual_kmeans"]

# Keys the fit writes into cfg.metadata; user metadata may not use them.
FIT_KEYS = (
    "provenance",
    "fit",
    "n_tokens",
    "inertia",
    "total_sum_of_squares",
    "fit_explained_variance_fvu_a",
    "passes",
    "tokens_seen",
)
_PROVENANCE_FIELDS = {
    "model_name": "model_name",
    "hook_name": "hook_name",
    "context_size": "context_size",
    "prepend_bos": "prepend_bos",
    "hook_head_index": "hook_head_index",
    "dataset": "dataset_path",
}


def fit_kmeans(
    acts: Any,
    n_clusters: int,
    *,
    options: KMeansOptions | None = None,
    metadata: Mapping[str, Any] | None = None,
    provenance: Provenance | None = None,
    **kwargs: Any,
) -> ClusteringSAE:
    """k-means with ``n_clusters`` centroids as a ``kmeans`` SAE (L0 = 1).

    Minimises the inertia Σ_n min_k ‖x_n − c_k‖² by Lloyd's algorithm (options:
    :class:`KMeansOptions`, e.g. ``n_iter=``, ``init=``, ``n_init=``, ``seed=``,
    ``checkpoint=``). ``sae.cfg.metadata`` records the fit (``inertia``,
    ``fit_explained_variance_fvu_a`` = 1 − inertia / Σ_n ‖x_n − μ‖², every run, passes).
    """
    opts = KMeansOptions.build(options, "fit_kmeans", **kwargs)
    k = check_int("n_clusters", n_clusters, 1)
    meta = base_metadata(metadata, provenance)
    return _to_sae(fit_codebook(acts, [k], 0, opts, kind="kmeans"), opts, meta)


def fit_pca_kmeans(
    acts: Any,
    n_clusters: int,
    n_pca: int,
    *,
    options: KMeansOptions | None = None,
    metadata: Mapping[str, Any] | None = None,
    provenance: Provenance | None = None,
    **kwargs: Any,
) -> ClusteringSAE:
    """PCA with ``n_pca`` components on the centred data, then k-means on the PCA
    residual r = (x − μ) − V Vᵀ (x − μ): a ``pca_kmeans`` SAE with d_sae = n_pca +
    n_clusters and L0 = n_pca + 1. Options as :func:`fit_kmeans` (an ``init`` tensor is
    given in activation space and projected like the data)."""
    opts = KMeansOptions.build(options, "fit_pca_kmeans", **kwargs)
    k = check_int("n_clusters", n_clusters, 1)
    p = check_int("n_pca", n_pca, 1)
    meta = base_metadata(metadata, provenance)
    return _to_sae(fit_codebook(acts, [k], p, opts, kind="pca_kmeans"), opts, meta)


def fit_residual_kmeans(
    acts: Any,
    n_clusters: int,
    n_stages: int,
    *,
    options: KMeansOptions | None = None,
    metadata: Mapping[str, Any] | None = None,
    provenance: Provenance | None = None,
    **kwargs: Any,
) -> ClusteringSAE:
    """Residual k-means (multi-stage vector quantisation): stage s fits ``n_clusters``
    centroids to the residual z_s = z_{s−1} − c_{s−1}(z_{s−1}) left by the stages before
    it (z_0 = x − μ). A ``residual_kmeans`` SAE with d_sae = n_stages × n_clusters and
    L0 exactly n_stages; encoding repeats the fit's greedy stage-by-stage assignment.
    Checkpoints resume per stage. Options as :func:`fit_kmeans`."""
    opts = KMeansOptions.build(options, "fit_residual_kmeans", **kwargs)
    k = check_int("n_clusters", n_clusters, 1)
    s = check_int("n_stages", n_stages, 1)
    meta = base_metadata(metadata, provenance)
    return _to_sae(fit_codebook(acts, [k] * s, 0, opts, kind="residual_kmeans"), opts, meta)


def base_metadata(
    metadata: Mapping[str, Any] | None, provenance: Provenance | None
) -> dict[str, Any]:
    """cfg.metadata before the fit (checked before any work): SAELens's standard fields
    (from the provenance, or the user's metadata), the provenance, the user's own keys."""
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}.")
    user = dict(metadata or {})
    clash = sorted(set(user) & set(FIT_KEYS))
    if clash:
        raise ValueError(
            f"metadata keys {clash} are written by the fit itself; rename them (the fit's "
            "record is under metadata['fit'], the data's origin under metadata['provenance'])."
        )
    meta = dict(user)
    if provenance is not None:
        if not isinstance(provenance, Provenance):
            raise TypeError(f"provenance must be a Provenance, got {type(provenance).__name__}.")
        for src, dst in _PROVENANCE_FIELDS.items():
            value = getattr(provenance, src)
            if dst in user and user[dst] != value:
                raise ValueError(
                    f"metadata[{dst!r}]={user[dst]!r} contradicts provenance.{src}={value!r}; "
                    "give it once."
                )
            meta[dst] = value
        meta["provenance"] = provenance.to_dict()
    meta.setdefault("prepend_bos", True)
    return meta


def record_fit(meta: dict[str, Any], book: Codebook, options: KMeansOptions) -> dict[str, Any]:
    """``meta`` plus the fit's record: fvu_a of the fit = 1 − inertia / Σ_n ‖x_n − μ‖²."""
    tss = book.stats.total_ss
    n = book.stats.n
    return meta | dict(
        n_tokens=n,
        inertia=book.inertia,
        total_sum_of_squares=tss,
        fit_explained_variance_fvu_a=1.0 - book.inertia / tss if tss > 0 else None,
        passes=book.passes,
        tokens_seen=book.passes * n,
        fit={
            "kind": book.settings["kind"],
            "settings": dict(book.settings),
            "stages": [r.to_dict() for r in book.records],
            "pca_explained_variance_ratio": None
            if book.pca is None
            else book.pca.explained_variance_ratio.tolist(),
        },
    )


def _to_sae(book: Codebook, options: KMeansOptions, meta: dict[str, Any]) -> ClusteringSAE:
    return ClusteringSAE.from_centroids(
        book.mean, book.stages, book.components, metadata=record_fit(meta, book, options)
    )
