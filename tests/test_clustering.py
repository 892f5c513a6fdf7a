"""Clustering baselines: k-means / PCA+k-means against sklearn, the SAE object through
SAELens's disk format and SAEBench's stock core eval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sae_bench.evals.core import main as core
from sae_lens import SAE
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from tiny import CTX, HOOK, SPECIAL, collect, make_store, tiny_dataset, tiny_model

from sae_fvu_plugin import saebench as fsb
from sae_fvu_plugin.clustering import (
    ClusteringSAE,
    collect_activations,
    fit_kmeans,
    fit_pca_kmeans,
    load_clustering_sae,
    register,
)


def blobs(n=3000, d=16, k=30, offset=100.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g, dtype=torch.float64) * 5
    lab = torch.randint(k, (n,), generator=g)
    return offset + centers[lab] + torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.fixture(scope="module")
def x():
    return blobs()


# --------------------------------------------------------------------------- fitting


@pytest.mark.parametrize("n_iter", [1, 3, 10])
def test_lloyd_matches_sklearn_from_same_init(x, n_iter):
    init = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:20]]
    sae = fit_kmeans(x, 20, n_iter=n_iter, tol=0.0, init=init, progress=False)
    km = KMeans(20, init=init.numpy(), n_init=1, algorithm="lloyd", max_iter=n_iter, tol=0.0)
    km.fit(x.numpy())
    assert sae.cfg.metadata.inertia == pytest.approx(km.inertia_, rel=1e-6)
    centroids = (sae.W_enc[:, :].T.double() + sae.b_dec.double()).numpy()
    np.testing.assert_allclose(np.sort(centroids, 0), np.sort(km.cluster_centers_, 0), rtol=1e-5)


def test_pca_matches_sklearn(x):
    sae = fit_pca_kmeans(x, 10, 5, n_iter=5, progress=False)
    ref = PCA(5).fit(x.numpy())
    np.testing.assert_allclose(
        sae.cfg.metadata.pca_explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-9
    )
    # components span the same axes (up to sign)
    comps = sae.W_dec[:5].double().numpy()
    np.testing.assert_allclose(np.abs(comps @ ref.components_.T), np.eye(5), atol=1e-4)
    assert sae.cfg.d_sae == 15 and sae.n_pca == 5 and sae.n_clusters == 10


def test_streaming_equals_tensor_and_is_deterministic(x):
    a = fit_kmeans(x, 12, n_iter=6, seed=3, progress=False)
    batches = list(x.split(700))
    b = fit_kmeans(batches, 12, n_iter=6, seed=3, progress=False)
    c = fit_kmeans(lambda: iter(batches), 12, n_iter=6, seed=3, progress=False)
    assert a.cfg.metadata.inertia == pytest.approx(b.cfg.metadata.inertia, rel=1e-12)
    assert torch.equal(b.W_enc, c.W_enc)
    assert not torch.equal(a.W_enc, fit_kmeans(x, 12, n_iter=6, seed=4, progress=False).W_enc)
    with pytest.raises(TypeError, match="one-shot iterator"):
        fit_kmeans((t for t in batches), 12, progress=False)


@pytest.mark.parametrize("empty", ["split", "farthest"])
def test_empty_clusters_are_reseeded(x, empty):
    init = torch.cat([x[:5], x[:1].repeat(3, 1)])  # three duplicates: two will be empty
    sae = fit_kmeans(x, 8, n_iter=5, tol=0.0, init=init, progress=False, empty=empty)
    assert sae.cfg.metadata.empty_clusters == 0
    assert len({tuple(r.tolist()) for r in sae.W_enc.T}) == 8
    # the refilled clusters are used: better than the 5 distinct starting centroids alone
    five = fit_kmeans(x, 5, n_iter=5, tol=0.0, init=init[:5], progress=False)
    assert sae.cfg.metadata.inertia < five.cfg.metadata.inertia


def test_kmeans_plus_plus_beats_random_init(x):
    pp = fit_kmeans(x, 30, n_iter=1, init="k-means++", progress=False, tol=0.0)
    rnd = fit_kmeans(x, 30, n_iter=1, init="random", progress=False, tol=0.0)
    assert pp.cfg.metadata.inertia < rnd.cfg.metadata.inertia


def test_checkpoint_resume_is_identical(x, tmp_path):
    batches = list(x.split(1000))
    full = fit_kmeans(batches, 16, n_iter=9, tol=0.0, seed=2, progress=False)
    ck = tmp_path / "km.pt"
    calls = {"n": 0}

    def flaky():  # the 8th pass over the data dies half-way (mid Lloyd iteration)
        calls["n"] += 1
        for i, b in enumerate(batches):
            if calls["n"] == 8 and i == 1:
                raise KeyboardInterrupt
            yield b

    with pytest.raises(KeyboardInterrupt):
        fit_kmeans(
            flaky, 16, n_iter=9, tol=0.0, seed=2, progress=False, checkpoint=ck, checkpoint_every=1
        )
    assert 0 < torch.load(ck, weights_only=True)["iteration"] < 9
    resumed = fit_kmeans(batches, 16, n_iter=9, tol=0.0, seed=2, progress=False, checkpoint=ck)
    assert torch.equal(resumed.W_enc, full.W_enc)
    assert resumed.cfg.metadata.inertia == full.cfg.metadata.inertia
    assert resumed.cfg.metadata.inertia_history == full.cfg.metadata.inertia_history


def test_bad_checkpoints_and_inputs_are_refused_without_overwriting(x, tmp_path):
    ck = tmp_path / "km.pt"
    fit_kmeans(x, 4, n_iter=2, progress=False, checkpoint=ck)
    before = ck.read_bytes()
    with pytest.raises(ValueError, match="other settings"):
        fit_kmeans(x, 5, n_iter=2, progress=False, checkpoint=ck)
    with pytest.raises(ValueError, match="other settings"):
        fit_kmeans(x[:, :8], 4, n_iter=2, progress=False, checkpoint=ck)
    assert ck.read_bytes() == before
    ck.write_bytes(before[: len(before) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        fit_kmeans(x, 4, n_iter=2, progress=False, checkpoint=ck)
    assert len(ck.read_bytes()) == len(before) // 2
    with pytest.raises(
        ValueError, match="n_clusters=20 exceeds the number of activation rows N=10"
    ):
        fit_kmeans(x[:10], 20, progress=False)
    bad = x.clone()
    bad[7, 3] = float("nan")
    with pytest.raises(ValueError, match="1 NaN/inf"):
        fit_kmeans(bad, 4, progress=False)
    with pytest.raises(ValueError, match="n_pca=16 must be below"):
        fit_pca_kmeans(x, 4, 16, progress=False)


# ------------------------------------------------------------------------- the SAE


def test_sae_maps_and_disk_format(x, tmp_path):
    for sae in (
        fit_kmeans(x, 10, n_iter=5, progress=False),
        fit_pca_kmeans(x, 10, 3, n_iter=5, progress=False),
    ):
        xf = x.float()
        f = sae.encode(xf)
        p = sae.n_pca
        assert ((f[:, p:] != 0).sum(-1) == 1).all()
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.cfg.d_sae))
        pre = xf @ sae.W_enc + sae.b_enc  # documented pre-activations
        _, idx = sae.assign(xf)
        assert (pre[:, p:].argmax(-1) == idx).float().mean() > 0.999
        if p:
            torch.testing.assert_close(pre[:, :p], f[:, :p], rtol=1e-4, atol=1e-3)
        recon = sae.decode(f).double()
        sse = float(((x - recon) ** 2).sum())
        assert sse == pytest.approx(sae.cfg.metadata.inertia, rel=1e-5)
        sae.save_model(tmp_path / sae.cfg.architecture())
        cfg = json.loads((tmp_path / sae.cfg.architecture() / "cfg.json").read_text())
        assert cfg["architecture"] == ("pca_kmeans" if p else "kmeans")
        back = SAE.load_from_disk(tmp_path / sae.cfg.architecture())
        assert isinstance(back, ClusteringSAE)
        assert torch.equal(back.encode(xf), f)
    register()
    register()  # idempotent


def test_load_errors(x, tmp_path):
    sae = fit_kmeans(
        x, 4, n_iter=2, progress=False, model_name="m", hook_name="blocks.0.hook_resid_post"
    )
    sae.save_model(tmp_path / "ok")
    with pytest.raises(
        ValueError, match="d_in=16 but the hook 'blocks.0.hook_resid_post' has width 32"
    ):
        load_clustering_sae(tmp_path / "ok", expected_d_in=32)
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_clustering_sae(tmp_path / "missing")
    w = tmp_path / "ok" / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_clustering_sae(tmp_path / "ok")


# ---------------------------------------------------------------- SAEBench core eval


@pytest.fixture(scope="module")
def lm():
    model, ds = tiny_model(offset=2.0, seed=4), tiny_dataset(n=64, seed=4)
    acts = collect_activations(
        model,
        ds,
        HOOK,
        1500,
        context_size=CTX,
        batch_prompts=4,
        drop_first_position=True,
        progress=False,
    )
    return model, ds, acts


def everything(n_batches=3):
    return fsb.FVUCoreEvalConfig(
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
        compute_featurewise_weight_based_metrics=True,
        batch_size_prompts=4,
        n_eval_reconstruction_batches=2,
        n_eval_sparsity_variance_batches=n_batches,
        context_size=CTX,
        explained_variance_report=["fvu_b", "fvu_per_dim"],
    )


@pytest.mark.parametrize("n_pca", [0, 4])
def test_stock_saebench_evaluates_clustering_sae(lm, n_pca):
    model, ds, acts = lm
    assert acts.shape == (1500, 64)
    meta = dict(
        model_name="tiny-random",
        hook_name=HOOK,
        context_size=CTX,
        dataset="in-memory",
        prepend_bos=False,
    )
    if n_pca:
        sae = fit_pca_kmeans(acts, 24, n_pca, n_iter=8, progress=False, **meta)
    else:
        sae = fit_kmeans(acts, 24, n_iter=8, progress=False, **meta)
    metrics, feats = core.run_evals(
        sae, make_store(model, sae, ds), model, everything(), ignore_tokens=set(SPECIAL)
    )  # stock SAEBench
    for group in metrics.values():
        for value in group.values():
            assert np.isfinite(value)
    for key in ("encoder_norm", "encoder_decoder_cosine_sim", "max_decoder_cosine_sim"):
        assert np.isfinite(feats[key]).all()
    if n_pca == 0:
        assert metrics["sparsity"]["l0"] == 1.0
    # with the plugin: fvu_a through the loop = 1 − inertia / TSS, computed directly
    with fsb.enabled():
        m, _ = core.run_evals(
            sae, make_store(model, sae, ds), model, everything(), ignore_tokens=set(SPECIAL)
        )
    x, keep, _ = collect(model, sae, ds, 3, skip=2)
    xk = x[keep].double()
    mu = sae.b_dec.double()
    z = xk - mu
    if n_pca:
        v = sae.W_dec[:n_pca].double()
        z = z - (z @ v.T) @ v
    cents = sae.W_enc[:, n_pca:].T.double()
    inertia = float(torch.cdist(z, cents).square().min(1).values.sum())
    tss = float(((xk - xk.mean(0)) ** 2).sum())
    assert m["reconstruction_quality"]["explained_variance"] == pytest.approx(
        1 - inertia / tss, rel=1e-6
    )
