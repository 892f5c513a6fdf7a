"""Clustering methods: k-means (L0 = 1), PCA + k-means (L0 = n_pca + 1), residual k-means
(L0 = stages), and the k-means codebook as SAELens's own top-1 (gain) and matching-pursuit
SAEs, plus the k-lines codebook fitted for the top-1-with-gain decoder."""

from __future__ import annotations

from typing import Any

from ...kmeans_options import SEED_ROWS_PER_CLUSTER, SEED_SAMPLE_FLOOR, KMeansOptions
from ..points import FitInput
from ..registry import Method, register


def _fitted(fn_name: str, *param_names: str) -> Any:
    """A fit function calling ``sae_fvu_plugin.clustering.<fn_name>`` with the point's
    parameters (in order), the shared options and the provenance (or, for the Gaussian
    control, which has none, the base metadata)."""

    def fit(inp: FitInput) -> Any:
        from ... import clustering

        return getattr(clustering, fn_name)(
            inp.acts,
            *(inp.params[p] for p in param_names),
            options=inp.options,
            provenance=inp.provenance,
            metadata=None if inp.provenance is not None else inp.metadata,
        )

    return fit


# the default seeding sample's rules in order, (floor, rows per cluster): each samples
# max(floor, per_cluster · k) rows by ``KMeansOptions.sample_size`` (at most N, at least k)
_SEEDING_RULES = ((32_768, 32), (65_536, 32), (SEED_SAMPLE_FLOOR, SEED_ROWS_PER_CLUSTER))


def _seeding_version(p: dict[str, Any], cfg: Any) -> int:
    """The version of a k-means fit (a stage of one): the number of the last change of the
    default seeding sample's rule that changed its size (1 when none did, so a fit keeps
    its key). Version 2: the floor of 65,536 rows (32,768 before 2026-12-06), i.e. fewer
    than 2,048 clusters on more than 32,768 rows; version 3: 64 sampled rows per cluster
    (32 before the evening of 2026-12-06), i.e. more than 1,024 clusters on more than
    65,536 rows. The demo's 16,384 rows sample every row under every rule: version 1."""
    n, k = int(cfg.fit_tokens), int(p["n_clusters"])
    sizes = [
        KMeansOptions(init_sample=max(floor, per * k)).sample_size(n, k)
        for floor, per in _SEEDING_RULES
    ]
    assert sizes[-1] == KMeansOptions().sample_size(n, k), "_SEEDING_RULES ends with the rule"
    return max([i + 1 for i in range(1, len(sizes)) if sizes[i] != sizes[i - 1]], default=1)


_kmeans = _fitted("fit_kmeans", "n_clusters")
_pca_kmeans = _fitted("fit_pca_kmeans", "n_clusters", "n_pca")
_residual = _fitted("fit_residual_kmeans", "n_clusters", "n_stages")


def _codebook_fit(p: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "kmeans", {"n_clusters": p["n_clusters"]}


def _codebook(inp: FitInput) -> tuple[Any, Any, dict[str, Any]]:
    """The k-means point with the same d_sae (fitted once, shared), its codebook and
    the fit cost it carries (tokens seen, passes)."""
    from ...clustering.codebook_saes import codebook_of

    base = inp.point.base
    assert base is not None  # (registered with reuses=)
    km = inp.fitted(base)
    mean, dirs = codebook_of(km)
    meta = dict(inp.metadata)
    for key in ("tokens_seen", "passes", "n_tokens", "provenance"):
        if km.cfg.metadata.get(key) is not None:
            meta[key] = km.cfg.metadata.get(key)
    return mean, dirs, meta


def _top1(inp: FitInput) -> Any:
    from ...clustering.codebook_saes import topk_from_codebook

    mean, dirs, meta = _codebook(inp)
    return topk_from_codebook(mean, dirs, meta, k=1)


def _mp(inp: FitInput) -> Any:
    from ...clustering.codebook_saes import matching_pursuit_from_codebook

    mean, dirs, meta = _codebook(inp)
    return matching_pursuit_from_codebook(mean, dirs, inp.params["steps"], meta)


def _klines(inp: FitInput) -> Any:
    from ...clustering.klines import fit_klines

    mean, dirs, meta = _codebook(inp)
    sae = fit_klines(
        inp.acts,
        inp.params["n_clusters"],
        init_codebook=dirs,
        options=inp.options.__class__(
            n_iter=inp.options.n_iter,
            seed=inp.options.seed,
            device=inp.options.device,
            progress=False,
        ),
        provenance=inp.provenance,
        metadata=None if inp.provenance is not None else inp.metadata,
    )
    # the lines start from the k-means codebook: count its passes too
    sae.cfg.metadata["passes"] = sae.cfg.metadata.get("passes", 0) + (meta.get("passes") or 0)
    sae.cfg.metadata["tokens_seen"] = sae.cfg.metadata["passes"] * sae.cfg.metadata["n_tokens"]
    return sae


def _k(p: dict[str, Any]) -> int:
    return int(p["n_clusters"])


register(
    Method(
        "kmeans",
        "clustering",
        _kmeans,
        l0=lambda p: 1,
        d_sae=_k,
        label=lambda p: f"k{p['n_clusters']}",
        description="k-means (L0 = 1)",
        version_of=_seeding_version,
    )
)
register(
    Method(
        "pca_kmeans",
        "clustering",
        _pca_kmeans,
        l0=lambda p: p["n_pca"] + 1,
        d_sae=lambda p: p["n_clusters"] + p["n_pca"],
        label=lambda p: f"k{p['n_clusters']}-p{p['n_pca']}",
        description="PCA + k-means on the PCA residual (L0 = n_pca + 1)",
        version_of=_seeding_version,
    )
)
register(
    Method(
        "residual_kmeans",
        "clustering",
        _residual,
        l0=lambda p: p["n_stages"],
        d_sae=lambda p: p["n_clusters"] * p["n_stages"],
        label=lambda p: f"k{p['n_clusters']}-s{p['n_stages']}",
        description="residual k-means, one centroid per stage (L0 = stages)",
        version_of=_seeding_version,
    )
)
register(
    Method(
        "kmeans_top1",
        "clustering",
        _top1,
        l0=lambda p: 1,
        d_sae=_k,
        label=lambda p: f"k{p['n_clusters']}",
        description="k-means centroids as the features of SAELens's top-1 SAE (latent = projection)",
        reuses=_codebook_fit,
    )
)
register(
    Method(
        "klines",
        "clustering",
        _klines,
        l0=lambda p: 1,
        d_sae=_k,
        label=lambda p: f"k{p['n_clusters']}",
        description="k-lines: the top-1-with-gain codebook fitted directly (SAELens abstopk, k = 1)",
        reuses=_codebook_fit,
    )
)
register(
    Method(
        "kmeans_mp",
        "clustering",
        _mp,
        l0=lambda p: p["steps"],
        d_sae=_k,
        label=lambda p: f"k{p['n_clusters']}-m{p['steps']}",
        description="matching pursuit over the k-means codebook (SAELens, L0 ≤ steps)",
        reuses=_codebook_fit,
    )
)
