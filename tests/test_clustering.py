"""Clustering baselines: k-means / PCA+k-means / residual k-means against scikit-learn and
hand-built answers; seeding quality; checkpoints bound to data and options; options;
torch.distributed; the SAE object through SAELens's disk format and SAEBench's stock eval."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import META
from sae_bench.evals.core import main as core
from sae_lens import SAE
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.decomposition import PCA
from tiny import CTX, SPECIAL, collect, make_store

from sae_fvu_plugin import saebench as fsb
from sae_fvu_plugin.clustering import (
    ClusteringSAE,
    KMeansOptions,
    fit_kmeans,
    fit_pca_kmeans,
    fit_residual_kmeans,
    load_clustering_sae,
)
from sae_fvu_plugin.clustering.checkpoint import CheckpointError


def blobs(n=3000, d=16, k=30, offset=100.0, seed=0, sep=5.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g, dtype=torch.float64) * sep
    lab = torch.randint(k, (n,), generator=g)
    return offset + centers[lab] + torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.fixture(scope="module")
def x():
    return blobs()


def centroids_of(sae: ClusteringSAE) -> torch.Tensor:
    return sae.W_enc[:, sae.n_pca :].T.double() + sae.b_dec.double()


def stage(sae: ClusteringSAE, i: int = 0) -> dict:
    return sae.cfg.metadata.fit["stages"][i]


# --------------------------------------------------------------------------- fitting


@pytest.mark.parametrize("n_iter", [1, 3, 10])
def test_lloyd_matches_sklearn_from_same_init(x, n_iter):
    init = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:20]]
    sae = fit_kmeans(x, 20, n_iter=n_iter, tol=0.0, init=init, progress=False)
    km = KMeans(20, init=init.numpy(), n_init=1, algorithm="lloyd", max_iter=n_iter, tol=0.0)
    km.fit(x.numpy())
    assert sae.cfg.metadata.inertia == pytest.approx(km.inertia_, rel=1e-9)
    np.testing.assert_allclose(
        np.sort(centroids_of(sae).numpy(), 0), np.sort(km.cluster_centers_, 0), rtol=1e-5
    )


def test_float32_lloyd_matches_sklearn(x):
    """The bounded (Hamerly) assignment in float32 keeps plain Lloyd's labels."""
    x32 = (x - 100).float()
    init = x32[:25].clone()
    sae = fit_kmeans(x32, 25, n_iter=30, tol=0.0, init=init, progress=False)
    km = KMeans(25, init=init.double().numpy(), n_init=1, max_iter=30, tol=0.0)
    km.fit(x32.double().numpy())
    assert sae.cfg.metadata.inertia == pytest.approx(km.inertia_, rel=1e-5)
    rescored = stage(sae)["runs"][0]["rows_rescored"]
    assert rescored[0] == 1.0 and min(rescored[1:]) < 0.2  # the bounds skip most rows


def test_pca_matches_sklearn(x):
    sae = fit_pca_kmeans(x, 10, 5, n_iter=5, progress=False)
    ref = PCA(5).fit(x.numpy())
    np.testing.assert_allclose(
        sae.cfg.metadata.fit["pca_explained_variance_ratio"],
        ref.explained_variance_ratio_,
        rtol=1e-9,
    )
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
    assert stage(sae)["empty_clusters"] == 0
    assert len({tuple(r.tolist()) for r in sae.W_enc.T}) == 8
    five = fit_kmeans(x, 5, n_iter=5, tol=0.0, init=init[:5], progress=False)
    assert sae.cfg.metadata.inertia < five.cfg.metadata.inertia


# --------------------------------------------------------------------------- seeding


def mixture(seed, n=6000, d=32, k=24, sep=6.0, offset=0.0):
    """Well separated Gaussian mixture and its true partition's inertia."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g, dtype=torch.float64) * sep
    lab = torch.randint(k, (n,), generator=g)
    x = offset + centers[lab] + torch.randn(n, d, generator=g, dtype=torch.float64)
    true = sum(float(((x[lab == j] - x[lab == j].mean(0)) ** 2).sum()) for j in range(k))
    return x, true


def test_greedy_kmeans_pp_is_sklearn_grade():
    """Default seeding against scikit-learn's KMeans(n_init=1) on the same data and seeds;
    plain k-means++ (one candidate per step) is clearly worse."""
    ours, plain, theirs, found = [], [], [], 0
    for seed in range(8):
        x, true = mixture(seed)
        a = fit_kmeans(x, 24, seed=seed, progress=False).cfg.metadata.inertia
        p = fit_kmeans(x, 24, seed=seed, n_local_trials=1, progress=False).cfg.metadata.inertia
        s = KMeans(24, n_init=1, random_state=seed).fit(x.numpy()).inertia_
        ours.append(a / s)
        plain.append(p / s)
        theirs.append(s)
        found += a <= true * (1 + 1e-9)
    assert np.median(ours) <= 1.005
    assert found >= 7  # the true partition in (almost) every run
    assert np.mean(plain) > np.mean(ours) * 1.1


def test_importance_sampling_sees_the_rare_far_rows():
    """3 far-out rows among 100,000 (a massive-activation token's share): a uniform seeding
    sample of 1,000 misses them (97 %), so no centroid goes there; the importance sample
    keeps every one of them (weight 1) and its weights still sum to about N."""
    from sae_fvu_plugin.clustering.reduce import LocalReducer
    from sae_fvu_plugin.clustering.seeding import importance_sample

    g = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, 8, generator=g, dtype=torch.float64)
    x[:3] += 300.0
    z = x - x.mean(0)
    rows, w = importance_sample(lambda: iter(z.split(30_000)), 1000, 0, LocalReducer())
    far = rows.norm(dim=1) > 100
    assert int(far.sum()) == 3 and torch.equal(w[far], torch.ones(3, dtype=torch.float64))
    assert float(w.sum()) == pytest.approx(100_000, rel=0.1)
    assert len(rows) <= 1200
    common = dict(n_clusters=4, seed=0, init_sample=1000, progress=False)
    seen = fit_kmeans(x, init_sampling="importance", **common).cfg.metadata.inertia
    missed = fit_kmeans(x, init_sampling="uniform", **common).cfg.metadata.inertia
    sk = KMeans(4, n_init=1, random_state=0).fit(x.numpy()).inertia_
    assert seen <= sk * 1.01 and missed > 2 * seen


def test_n_init_keeps_the_best_run_and_records_all():
    x, true = mixture(3)
    sae = fit_kmeans(x, 24, n_init=5, seed=10, progress=False)
    runs = stage(sae)["runs"]
    assert [r["seed"] for r in runs] == [10, 11, 12, 13, 14]
    assert sae.cfg.metadata.inertia == min(r["inertia"] for r in runs)
    # run r is exactly an n_init=1 fit with seed + r
    single = fit_kmeans(x, 24, seed=12, progress=False).cfg.metadata.inertia
    assert runs[2]["inertia"] == single
    best5 = KMeans(24, n_init=5, random_state=0).fit(x.numpy()).inertia_
    assert sae.cfg.metadata.inertia <= best5 * 1.005
    assert sae.cfg.metadata.inertia == pytest.approx(true, rel=1e-9)


def test_kmeans_parallel_seeding_streams():
    x, true = mixture(1)
    batches = list(x.split(1000))
    sae = fit_kmeans(batches, 24, init="k-means||", seed=0, progress=False)
    sk = KMeans(24, n_init=1, random_state=0).fit(x.numpy()).inertia_
    assert sae.cfg.metadata.inertia <= sk * 1.05
    assert sae.cfg.metadata.inertia <= true * 1.05


def test_seeding_matches_sklearn_kmeans_pp_distribution():
    """Greedy k-means++ alone (no Lloyd): the potential of our seeds is that of
    scikit-learn's kmeans_plusplus, averaged over seeds."""
    from sae_fvu_plugin.clustering.seeding import _generator, greedy_kmeans_pp

    x, _ = mixture(4, n=2000, k=16)
    xs = (x - x.mean(0)).numpy()

    def potential(c):
        return float(
            torch.cdist(torch.from_numpy(xs), torch.as_tensor(c)).square().min(1).values.sum()
        )

    ours = [
        potential(greedy_kmeans_pp(torch.from_numpy(xs), 16, _generator(s), dtype=torch.float64))
        for s in range(20)
    ]
    theirs = [potential(kmeans_plusplus(xs, 16, random_state=s)[0]) for s in range(20)]
    assert np.mean(ours) == pytest.approx(np.mean(theirs), rel=0.1)


def test_screened_seeding_distances_equal_the_float32_ones():
    """The bfloat16 screen keeps every row a candidate is nearer to (including rows whose
    current distance sits a hair above or below the candidate's, where a wrong bound would
    drop them) and gives those rows the plain float32 step's distances, bit for bit."""
    from sae_fvu_plugin.clustering.seeding import _Screen

    for offset in (0.0, 1000.0):
        s = blobs(n=4000, d=48, k=100, offset=offset, seed=3).float()
        sq = s.square().sum(1)
        screen = _Screen(s, sq, torch.bfloat16)
        g = torch.Generator().manual_seed(0)
        for trial in range(6):
            idx = torch.randint(0, len(s), (9,), generator=g)
            plain = (s @ s[idx].T).mul_(-2).add_(sq[:, None]).add_(sq[idx]).clamp_(min=0)
            if trial < 3:  # near ties with candidate 0: one ulp-scale step either side
                rel = torch.where(torch.arange(len(s)) % 2 == 0, 1 + 1e-6, 1 - 1e-6)
                closest = plain[:, 0] * rel
            else:  # a mid-seeding state: the distance to 400 random rows
                far = torch.randint(0, len(s), (400,), generator=g)
                dfar = (s @ s[far].T).mul_(-2).add_(sq[:, None]).add_(sq[far]).clamp_(min=0)
                closest = dfar.min(1).values
            want = torch.minimum(plain, closest[:, None])
            rows, near = screen.near(idx, closest)
            assert torch.equal(near, want[rows])
            dropped = torch.ones(len(s), dtype=torch.bool)
            dropped[rows] = False
            assert torch.equal(want[dropped], closest[dropped, None].expand(-1, 9))
            share = len(rows) / len(s)
            if trial < 3:
                assert share == 1.0  # every row is a near tie: none may be dropped
            elif offset == 0:
                assert 0 < share < 0.4  # centred, most rows are screened out (gathered)
            # far from the origin the bound (∝ ‖p‖ ‖c‖) keeps more rows: still the answer
            # on the rows another screen left (a few: gathered; most: the whole product),
            # the same answer restricted to them
            for keep in (0.05, 0.3, 0.9):
                given = (torch.rand(len(s), generator=g) < keep).nonzero().flatten()
                again = screen.unsure(idx, closest, given)
                assert torch.equal(again, rows[torch.isin(rows, given)]), keep


def test_screened_seeding_chooses_the_same_centres():
    from sae_fvu_plugin.clustering.seeding import _generator, greedy_kmeans_pp

    x = blobs(n=6000, d=32, k=60, offset=0.0, seed=5)
    x[:5] *= 40  # a few massive rows, as at layer 15
    w = torch.rand(len(x), generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    plain = greedy_kmeans_pp(x, 200, _generator(7), weights=w, dtype=torch.float32)
    screened = greedy_kmeans_pp(
        x, 200, _generator(7), weights=w, dtype=torch.float32, score_dtype=torch.bfloat16
    )
    assert torch.equal(plain, screened)


def low_rank_blobs(n=5000, d=128, k=80, seed=0):
    """Blobs whose centres span 12 of d directions, with unit noise in all d (activations'
    energy sits in a few directions: the case the projected screen prunes)."""
    g = torch.Generator().manual_seed(seed)
    span = torch.linalg.qr(torch.randn(d, 12, generator=g, dtype=torch.float64)).Q
    centers = torch.randn(k, 12, generator=g, dtype=torch.float64) * 8 @ span.T
    lab = torch.randint(k, (n,), generator=g)
    return centers[lab] + torch.randn(n, d, generator=g, dtype=torch.float64)


def test_projected_screen_keeps_every_row_a_candidate_is_nearer_to():
    """The rank-r bound drops only rows whose d32 to every candidate is ≥ their closest —
    tested at near ties either side (one ulp-scale step), on centred data and far from the
    origin, with massive rows."""
    from sae_fvu_plugin.clustering.seeding import _Projected

    for offset in (0.0, 300.0):
        s = (low_rank_blobs(seed=4) + offset).float()
        s[:4] *= 30
        sq = s.square().sum(1)
        proj = _Projected(s, sq, 32)
        g = torch.Generator().manual_seed(0)
        for trial in range(6):
            # 9, 16 and 17 candidates: padded to 16, 16 and 32 columns in the screen
            idx = torch.randint(0, len(s), ((9, 16, 17)[trial % 3],), generator=g)
            plain = (s @ s[idx].T).mul_(-2).add_(sq[:, None]).add_(sq[idx]).clamp_(min=0)
            if trial < 3:
                rel = torch.where(torch.arange(len(s)) % 2 == 0, 1 + 1e-6, 1 - 1e-6)
                closest = plain[:, trial] * rel
            else:
                far = torch.randint(0, len(s), (300,), generator=g)
                dfar = (s @ s[far].T).mul_(-2).add_(sq[:, None]).add_(sq[far]).clamp_(min=0)
                closest = dfar.min(1).values
            rows = proj.unsure(idx, closest)
            dropped = torch.ones(len(s), dtype=torch.bool)
            dropped[rows] = False
            assert bool((plain[dropped] >= closest[dropped, None]).all())
            if trial < 3:  # half the rows sit a hair above their closest: all kept
                assert len(rows) >= (torch.arange(len(s)) % 2 == 1).sum() * 0.99
            elif offset == 0:
                assert len(rows) < 0.5 * len(s)  # and most rows are ruled out
        if offset == 0:  # rows farther from their centre than from the origin (early steps),
            # candidates the massive rows (farther still): only those rows are kept
            assert proj.unsure(torch.arange(4), 2 * sq + 1).tolist() == [0, 1, 2, 3]


def test_projected_seeding_chooses_the_plain_centres_and_prunes():
    from sae_fvu_plugin.clustering.seeding import _generator, greedy_kmeans_pp

    x = low_rank_blobs(n=6000, seed=2)
    x[:5] *= 40  # a few massive rows, as at layer 15
    w = torch.rand(len(x), generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    plain = greedy_kmeans_pp(x, 300, _generator(7), weights=w, dtype=torch.float32, prune=False)
    counts: dict[str, int] = {}
    pruned = greedy_kmeans_pp(x, 300, _generator(7), weights=w, dtype=torch.float32, counts=counts)
    assert torch.equal(plain, pruned)
    assert counts["projected_rescored"] < 0.3 * counts["projected_scored"]
    both: dict[str, int] = {}
    cascade = greedy_kmeans_pp(
        x, 300, _generator(7), weights=w, dtype=torch.float32, score_dtype=torch.bfloat16,
        counts=both,
    )  # fmt: skip
    assert torch.equal(plain, cascade)
    # the projected screen as alone; the bfloat16 one scored only rows it left (here the
    # hard ones: its share stays high and it mostly waits), and left fewer of them
    assert both["projected_rescored"] == counts["projected_rescored"]
    assert 0 < both["screen_scored"] < both["projected_rescored"]
    assert both["screen_rescored"] < both["screen_scored"]


def test_an_interrupted_seeding_resumes_to_the_same_centres():
    """Greedy k-means++ killed mid-way continues from its last saved state to the centres
    of the uninterrupted call, bit for bit: plain, projected screen, bfloat16 screen."""
    from sae_fvu_plugin.clustering.seeding import _generator, greedy_kmeans_pp

    x = low_rank_blobs(n=3000, seed=3)
    x[:4] *= 40
    w = torch.rand(len(x), generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.5
    for extra in ({"prune": False}, {}, {"score_dtype": torch.bfloat16}):
        opts = {"weights": w, "dtype": torch.float32} | extra
        full = greedy_kmeans_pp(x, 120, _generator(5), **opts)
        saved: list[dict] = []

        def save(state, saved=saved):
            saved.append(state)
            if len(saved) == 40:
                raise KeyboardInterrupt  # killed right after its 40th save

        with pytest.raises(KeyboardInterrupt):
            greedy_kmeans_pp(x, 120, _generator(5), save=save, save_every=0.0, **opts)
        assert [len(s["chosen"]) for s in saved[:3]] == [2, 3, 4]
        again = greedy_kmeans_pp(x, 120, _generator(99), resume=saved[-1], **opts)
        assert torch.equal(again, full), extra
    # both screens ran (projected, then bfloat16 on its rows): both records kept
    assert saved[-1]["screen"].shape == (8,) and bool((saved[-1]["screen"] != 0).all())
    assert saved[-1]["screen"][[1, 5]].tolist() == [40.0, 40.0]  # 40 steps, 41 centres
    # a state saved when the bfloat16 screen ran alone (one record) still resumes
    old = dict(saved[-1], screen=saved[-1]["screen"][4:].clone())
    assert torch.equal(greedy_kmeans_pp(x, 120, _generator(99), resume=old, **opts), full)
    for edit, match in (
        (lambda st: st.update(closest=st["closest"][:-1]), r"shape \(2999,\), the sample"),
        (lambda st: st.update(closest=st["closest"].double()), "torch.float64, the fit's"),
        (lambda st: st.update(chosen=torch.arange(120)), "120 chosen rows for k = 120"),
        (lambda st: st.update(chosen=torch.tensor([3, 3])), "not distinct rows"),
        (lambda st: st.update(rng=torch.zeros(3, dtype=torch.uint8)), "generator state"),
        (lambda st: st.update(screen=torch.zeros(6, dtype=torch.float64)), "not 4 or 8 float64"),
    ):
        bad = dict(saved[-1])
        edit(bad)
        with pytest.raises(ValueError, match=match):
            greedy_kmeans_pp(x, 120, _generator(5), resume=bad, **opts)


def test_a_fit_killed_while_seeding_resumes_from_its_seeding_checkpoint(tmp_path, monkeypatch):
    """A fit killed during its greedy seeding (an hour at 16,384 clusters on 786k rows)
    resumes from the seeding's last checkpoint — not from its first step — to the
    uninterrupted result; a seeding state that does not fit is refused, file untouched."""
    from sae_fvu_plugin.clustering import codebook_fit
    from sae_fvu_plugin.clustering.checkpoint import (
        Checkpoint,
        FitProgress,
        content_digest,
        read_progress,
    )

    x = low_rank_blobs(n=3000, d=32, seed=6)
    opts = {"n_iter": 4, "tol": 0.0, "seed": 3, "progress": False}
    full = fit_kmeans(x, 60, **opts)
    ck = tmp_path / "km.pt"
    monkeypatch.setattr(codebook_fit, "_SEED_SAVE_SECONDS", 0.0)
    real_save = Checkpoint.save
    seen = {"n": 0}

    def save_then_die(self, payload):
        real_save(self, payload)
        current = payload.get("current") or {}
        if current.get("seeding") is not None:
            seen["n"] += 1
            if seen["n"] == 25:
                raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Checkpoint, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            fit_kmeans(x, 60, checkpoint=ck, **opts)
    held = torch.load(ck, weights_only=True)
    assert held["current"]["lloyd"] is None
    assert len(held["current"]["seeding"]["chosen"]) == 26
    assert read_progress(ck) == FitProgress(1, 0, 1, 0, 26 / 60, 0.0)  # the estimate's view
    real_greedy = codebook_fit.greedy_kmeans_pp
    resumed_at = []

    def spy(*args, **kwargs):
        resumed_at.append(len(kwargs["resume"]["chosen"]) if kwargs.get("resume") else 0)
        return real_greedy(*args, **kwargs)

    bad = torch.load(ck, weights_only=True)
    bad.pop("content_sha256")
    bad["current"]["seeding"]["closest"] = bad["current"]["seeding"]["closest"][:10]
    path = tmp_path / "bad.pt"
    torch.save(bad | {"content_sha256": content_digest(bad)}, path)
    raw = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"distances have shape \(10,\)"):
        fit_kmeans(x, 60, checkpoint=path, **opts)
    assert path.read_bytes() == raw
    with monkeypatch.context() as m:
        m.setattr(codebook_fit, "greedy_kmeans_pp", spy)
        resumed = fit_kmeans(x, 60, checkpoint=ck, **opts)
    assert resumed_at == [26]
    assert torch.equal(resumed.W_enc, full.W_enc)
    # its passes: the killed process's (saved with the state) plus the resuming one's
    alone = {k: v for k, v in held.items() if k != "content_sha256"} | {"passes": 0}
    torch.save(alone | {"content_sha256": content_digest(alone)}, path)
    own = fit_kmeans(x, 60, checkpoint=path, **opts).cfg.metadata.passes
    assert held["passes"] >= 1
    assert resumed.cfg.metadata.passes == held["passes"] + own
    assert stage(resumed)["runs"][0]["inertia_history"] == stage(full)["runs"][0]["inertia_history"]


def test_a_slow_lloyd_run_is_saved_by_time_as_well(tmp_path, monkeypatch):
    """Lloyd iterations that take minutes (16,384 clusters on 786k rows) are saved after
    any iteration that ends ``_SEED_SAVE_SECONDS`` after the last save, not only every
    ``checkpoint_every``-th: a kill loses about that much, and the rerun resumes from it
    to the uninterrupted result."""
    from sae_fvu_plugin.clustering import codebook_fit
    from sae_fvu_plugin.clustering.checkpoint import Checkpoint

    x = low_rank_blobs(n=2000, d=32, seed=8)
    opts = {"n_iter": 6, "tol": 0.0, "seed": 1, "progress": False, "checkpoint_every": 5}
    full = fit_kmeans(x, 20, **opts)
    real_save = Checkpoint.save

    def iterations(monkeypatch_seconds: float) -> list[int]:
        at: list[int] = []

        def spy(self, payload):
            real_save(self, payload)
            lloyd = (payload.get("current") or {}).get("lloyd")
            if lloyd is not None:
                at.append(lloyd["iteration"])
                if lloyd["iteration"] == 3:
                    raise KeyboardInterrupt

        with monkeypatch.context() as m:
            m.setattr(codebook_fit, "_SEED_SAVE_SECONDS", monkeypatch_seconds)
            m.setattr(Checkpoint, "save", spy)
            try:
                fit_kmeans(x, 20, checkpoint=tmp_path / f"{monkeypatch_seconds}.pt", **opts)
            except KeyboardInterrupt:
                pass
        return at

    assert iterations(3600.0) == [0, 5, 6, 6]  # fast iterations: every 5th, the end, done
    assert iterations(0.0) == [0, 1, 2, 3]  # slow ones: after each, killed after the 3rd
    resumed = fit_kmeans(x, 20, checkpoint=tmp_path / "0.0.pt", **opts)
    assert torch.equal(resumed.W_enc, full.W_enc)


# ---------------------------------------------------------------------- options


def test_options_are_validated_before_work(x):
    with pytest.raises(TypeError, match="'n_inti'. Did you mean 'n_init'"):
        fit_kmeans(x, 8, n_inti=3)
    with pytest.raises(TypeError, match="n_clusters must be an integer, got the bool True"):
        fit_kmeans(x, True)
    with pytest.raises(ValueError, match="empty must be one of split, farthest; got 'spilt'"):
        fit_kmeans(x, 8, empty="spilt")
    with pytest.raises(ValueError, match="written by the fit itself"):
        fit_kmeans(x, 8, metadata={"inertia": 3})
    sae = fit_kmeans(x, np.int64(3), n_iter=np.int32(2), metadata={"note": "mine"}, progress=False)
    assert sae.cfg.d_sae == 3 and sae.cfg.metadata.note == "mine"
    assert KMeansOptions().n_iter == fit_kmeans.__globals__["KMeansOptions"]().n_iter


# ------------------------------------------------------------------ checkpoints


def test_checkpoint_resume_is_identical(tmp_path):
    from sae_fvu_plugin.clustering.checkpoint import read_progress

    x = torch.randn(
        3000, 8, generator=torch.Generator().manual_seed(0)
    )  # float32, slow to converge
    batches = list(x.split(1000))
    full = fit_kmeans(batches, 16, n_iter=9, tol=0.0, seed=2, progress=False)
    ck = tmp_path / "km.pt"
    calls = {"n": 0}

    def flaky():  # a pass over the data dies half-way (mid Lloyd iteration)
        calls["n"] += 1
        for i, b in enumerate(batches):
            if calls["n"] == 7 and i == 1:
                raise KeyboardInterrupt
            yield b

    with pytest.raises(KeyboardInterrupt):
        fit_kmeans(
            flaky, 16, n_iter=9, tol=0.0, seed=2, progress=False, checkpoint=ck, checkpoint_every=1
        )
    saved = torch.load(ck, weights_only=True)
    assert 0 < saved["current"]["lloyd"]["iteration"] < 9
    got = read_progress(ck)
    assert got is not None and (got.seeded, got.iterated) == (
        1.0, saved["current"]["lloyd"]["iteration"] / 9
    )  # fmt: skip
    assert got.done(0.5) == pytest.approx(0.5 + 0.5 * got.iterated)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(ck.read_bytes()[:1000])
    assert read_progress(broken) is None and read_progress(tmp_path / "none.pt") is None
    assert stage(full)["runs"][0]["n_iter_run"] == 9
    resumed = fit_kmeans(batches, 16, n_iter=9, tol=0.0, seed=2, progress=False, checkpoint=ck)
    assert torch.equal(resumed.W_enc, full.W_enc)
    assert resumed.cfg.metadata.inertia == full.cfg.metadata.inertia
    # the passes of both processes (the killed one's up to its last save): as if uninterrupted
    assert 0 < saved["passes"] < full.cfg.metadata.passes == resumed.cfg.metadata.passes
    assert stage(resumed)["runs"][0]["inertia_history"] == stage(full)["runs"][0]["inertia_history"]


def test_an_interrupt_after_seeding_keeps_the_seeds(tmp_path, monkeypatch):
    """The seeding (46 min at 16,384 clusters on 786k rows) is checkpointed before Lloyd
    starts: a fit killed in its first iteration resumes without seeding again, to the
    uninterrupted result."""
    from sae_fvu_plugin.clustering import codebook_fit

    x = torch.randn(2000, 8, generator=torch.Generator().manual_seed(1))
    opts = {"n_iter": 6, "tol": 0.0, "seed": 4, "progress": False}
    full = fit_kmeans(x, 12, **opts)
    ck = tmp_path / "km.pt"

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(codebook_fit, "lloyd", dies)
        with pytest.raises(KeyboardInterrupt):
            fit_kmeans(x, 12, checkpoint=ck, **opts)
    saved = torch.load(ck, weights_only=True)["current"]["lloyd"]
    assert saved["iteration"] == 0 and saved["rows"] == [None]
    seeds = saved["centroids"]

    def no_seeding(*args, **kwargs):
        raise AssertionError("seeded again although the checkpoint holds the seeds")

    with monkeypatch.context() as m:
        m.setattr(codebook_fit, "_seed", no_seeding)
        resumed = fit_kmeans(x, 12, checkpoint=ck, **opts)
    assert torch.equal(resumed.W_enc, full.W_enc)
    assert stage(resumed)["runs"][0]["inertia_history"] == stage(full)["runs"][0]["inertia_history"]
    assert not torch.equal(seeds, torch.load(ck, weights_only=True)["stages"][0]["centroids"])


def test_checkpoint_is_bound_to_data_content(x, tmp_path):
    ck = tmp_path / "km.pt"
    fit_kmeans(x, 4, n_iter=2, progress=False, checkpoint=ck)
    before = ck.read_bytes()
    permuted = x[:, torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(0))]
    one_col_reversed = x.clone()
    one_col_reversed[:, 3] = x[:, 3].flip(0)  # same column sums, same chunk means
    for other in (permuted, one_col_reversed, list(x.split(1000))):
        with pytest.raises(CheckpointError, match="data: saved 'sha256:"):
            fit_kmeans(other, 4, n_iter=2, progress=False, checkpoint=ck)
    assert ck.read_bytes() == before


def test_checkpoint_records_every_option(x, tmp_path):
    ck = tmp_path / "km.pt"
    fit_kmeans(x, 4, n_iter=10, tol=0.0, progress=False, checkpoint=ck)
    before = ck.read_bytes()
    for change, name in (
        (dict(seed=1), "seed"),
        (dict(empty="farthest"), "empty"),
        (dict(init="random"), "init"),
        (dict(n_init=2), "n_init"),
        (dict(n_local_trials=7), "n_local_trials"),
        (dict(tol=1e-3), "tol"),
        (dict(init_sampling="uniform"), "init_sampling"),
    ):
        with pytest.raises(CheckpointError, match=f"{name}: saved"):
            fit_kmeans(x, 4, n_iter=10, progress=False, checkpoint=ck, **(dict(tol=0.0) | change))
    with pytest.raises(CheckpointError, match="n_iter: saved 10, requested 5"):
        fit_kmeans(x, 4, n_iter=5, tol=0.0, progress=False, checkpoint=ck)
    with pytest.raises(CheckpointError, match="compute_dtype"):
        fit_kmeans(x.float(), 4, n_iter=10, tol=0.0, progress=False, checkpoint=ck)
    assert ck.read_bytes() == before
    # the score precision is not a setting: the labels do not depend on it
    again = fit_kmeans(
        x, 4, n_iter=10, tol=0.0, progress=False, checkpoint=ck, compute_dtype="bfloat16"
    )
    assert again.cfg.metadata.fit["settings"]["score_dtype"] == "torch.bfloat16"


def test_larger_n_iter_continues_a_finished_run(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 8, generator=g, dtype=torch.float64)  # slow to converge
    init = x[:40].clone()
    direct = fit_kmeans(x, 40, n_iter=12, tol=0.0, init=init, progress=False)
    assert not stage(direct)["runs"][0]["converged"]
    ck = tmp_path / "km.pt"
    fit_kmeans(x, 40, n_iter=5, tol=0.0, init=init, progress=False, checkpoint=ck)
    more = fit_kmeans(x, 40, n_iter=12, tol=0.0, init=init, progress=False, checkpoint=ck)
    assert torch.equal(more.W_enc, direct.W_enc)
    assert stage(more)["runs"][0]["n_iter_run"] == 12


def test_tampered_checkpoints_are_refused_without_overwriting(x, tmp_path):
    ck = tmp_path / "km.pt"
    calls = {"n": 0}

    def stop_late():
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        yield from x.split(1000)

    with pytest.raises(KeyboardInterrupt):
        fit_kmeans(
            stop_late, 5, n_iter=10, tol=0.0, progress=False, checkpoint=ck, checkpoint_every=1
        )
    good = torch.load(ck, weights_only=True)

    def tamper(edit, match):
        bad = torch.load(ck, weights_only=True)
        edit(bad)
        path = tmp_path / "bad.pt"
        torch.save(bad, path)
        raw = path.read_bytes()
        with pytest.raises(CheckpointError, match=match):
            fit_kmeans(list(x.split(1000)), 5, n_iter=10, tol=0.0, progress=False, checkpoint=path)
        assert path.read_bytes() == raw

    def nan_centroids(p):
        p["current"]["lloyd"]["centroids"][0, 0] = float("nan")

    def wrong_shape(p):
        p["current"]["lloyd"]["centroids"] = p["current"]["lloyd"]["centroids"][:3]

    def no_rows(p):
        del p["current"]["lloyd"]["rows"]

    def bad_labels(p):
        p["current"]["lloyd"]["rows"][0][0][0][0] = 99

    def bad_iteration(p):
        p["current"]["lloyd"]["iteration"] = 50

    tamper(nan_centroids, "NaN/inf")
    tamper(wrong_shape, r"shape \(3, 16\), expected float64 \(5, 16\)")
    tamper(no_rows, "rows for")
    tamper(bad_labels, "labels outside")
    tamper(bad_iteration, "outside")
    tamper(lambda p: p.update(passes=-3), "invalid pass count -3")

    def other_finite_centroids(p):  # well-formed, but not the numbers the fit wrote
        p["current"]["lloyd"]["centroids"] += 1.0

    tamper(other_finite_centroids, "does not match its recorded content hash")
    assert good["current"]["lloyd"]["iteration"] >= 1
    ck.write_bytes(ck.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="is corrupt or truncated"):
        fit_kmeans(list(x.split(1000)), 5, n_iter=10, tol=0.0, progress=False, checkpoint=ck)


def test_bad_inputs(x):
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
    with pytest.raises(ValueError, match=r"shape \(16,\)"):
        fit_kmeans(x[0], 1, progress=False)


def test_data_with_fewer_distinct_rows_than_clusters_fits_exactly():
    """Constant rows (zero variance: the importance sample's ‖z‖² total is 0, which made
    its keep-probabilities a float and the fit a TypeError) and two distinct rows at 4
    clusters: every fit reconstructs every row exactly, inertia 0, in float32 and bfloat16
    scores, PCA + k-means and residual k-means alike, and warns that clusters were left
    empty."""
    const = torch.full((300, 8), 1.5)
    two = torch.cat([torch.full((150, 8), -1.0), torch.full((150, 8), 3.0)])
    for x, distinct in ((const, 1), (two, 2)):
        # (as scikit-learn's: the duplicates' latents are dead)
        with pytest.warns(UserWarning, match=f"{4 - distinct} of 4 clusters are empty after"):
            fits = [fit_kmeans(x, 4, progress=False)]
        with pytest.warns(UserWarning, match="fewer distinct rows than clusters"):
            fits += [
                fit_kmeans(x, 4, progress=False, compute_dtype="bfloat16"),
                fit_pca_kmeans(x, 3, 1, progress=False),
                fit_residual_kmeans(x, 2, 2, progress=False),
            ]
        for sae in fits:
            recon = sae.decode(sae.encode(x))
            assert torch.allclose(recon, x, atol=1e-5), (sae.cfg.architecture(), recon)
            assert torch.isfinite(sae.W_dec).all()
        assert fits[0].cfg.metadata.inertia == pytest.approx(0.0, abs=1e-6)


# -------------------------------------------------------------- residual k-means


def additive(seed=0, noise=0.3):
    """x = a_i + b_j + noise with 8 a's and 8 b's: 64 combinations."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(8, 12, generator=g, dtype=torch.float64) * 4
    b = torch.randn(8, 12, generator=g, dtype=torch.float64) * 1.5
    i = torch.randint(8, (4000,), generator=g)
    j = torch.randint(8, (4000,), generator=g)
    return a[i] + b[j] + noise * torch.randn(4000, 12, generator=g, dtype=torch.float64), noise


def test_residual_kmeans_reaches_the_noise_floor():
    x, noise = additive()
    floor = noise**2 * x.numel()  # Σ‖noise‖² (expected)
    two = fit_residual_kmeans(x, 8, 2, n_init=3, progress=False)
    one = fit_kmeans(x, 16, n_init=3, progress=False)
    assert two.cfg.d_sae == 16 == one.cfg.d_sae
    assert two.cfg.metadata.inertia < 1.2 * floor
    assert one.cfg.metadata.inertia > 5 * floor
    xf = x.float()
    f = two.encode(xf)
    assert ((f != 0).sum(-1) == 2).all()  # L0 exactly n_stages
    recon = two.decode(f).double()
    assert float(((x - recon) ** 2).sum()) == pytest.approx(two.cfg.metadata.inertia, rel=1e-4)


def test_residual_kmeans_checkpoints_per_stage(tmp_path):
    x, _ = additive(1)
    full = fit_residual_kmeans(x, 8, 3, n_iter=6, tol=0.0, progress=False)
    ck = tmp_path / "rk.pt"
    calls = {"n": 0}

    def dies_in_stage_two():
        calls["n"] += 1
        if calls["n"] == 16:
            raise KeyboardInterrupt
        yield from x.split(1000)

    with pytest.raises(KeyboardInterrupt):
        fit_residual_kmeans(
            dies_in_stage_two, 8, 3, n_iter=6, tol=0.0, progress=False, checkpoint=ck
        )
    assert len(torch.load(ck, weights_only=True)["stages"]) >= 1
    resumed = fit_residual_kmeans(
        list(x.split(1000)), 8, 3, n_iter=6, tol=0.0, progress=False, checkpoint=ck
    )
    torch.testing.assert_close(resumed.W_enc, full.W_enc, rtol=0, atol=0)


# ------------------------------------------------------------------ distributed


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    import torch.multiprocessing as mp
    from _dist_clustering import run

    out = {}
    for case in ("uneven", "empty_rank"):
        folder = tmp_path_factory.mktemp(case)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(run, args=(2, port, str(folder), case), nprocs=2, join=True)
        out[case] = [torch.load(folder / f"{r}.pt") for r in range(2)]
    return out


@pytest.mark.parametrize("case", ["uneven", "empty_rank"])
def test_distributed_fit_equals_single_process(two_ranks, case):
    from _dist_clustering import blobs, init_centroids

    ranks = two_ranks[case]
    for r in ranks:
        why = r.pop("rank0_checkpoint")
        assert "disagree on the fit options" in why and "'checkpoint': True" in why, why
    for name in ranks[0]:  # every rank returns the same model
        assert torch.equal(ranks[0][name][0], ranks[1][name][0]), name
    x = blobs()
    single = fit_kmeans(x, 10, init=init_centroids(), n_iter=8, tol=0.0, progress=False)
    want = centroids_of(single)
    got = ranks[0]["kmeans"][0]
    assert float((got - want).abs().max() / want.abs().max()) < 1e-9
    assert ranks[0]["kmeans"][1] == pytest.approx(single.cfg.metadata.inertia, rel=1e-9)
    # a finished 4-iteration checkpoint continued to 8 = the direct 8-iteration fit
    torch.testing.assert_close(
        ranks[0]["extended"][0], got - single.b_dec.double(), rtol=1e-9, atol=1e-9
    )
    pca = fit_pca_kmeans(x, 10, 3, n_iter=6, tol=0.0, seed=1, progress=False)
    torch.testing.assert_close(
        ranks[0]["pca_kmeans"][0][:3], pca.W_dec[:3].double(), rtol=0, atol=1e-6
    )
    sk = KMeans(10, n_init=1, random_state=0).fit(x.numpy()).inertia_
    assert ranks[0]["kmeans||"][1] <= sk * 1.15  # a sensible seeding, across ranks
    for init in ("k-means++", "random"):  # the default seedings equal a one-process fit
        one = fit_kmeans(x, 10, init=init, n_iter=6, seed=4, progress=False)
        torch.testing.assert_close(
            ranks[0][f"seeded {init}"][0], one.W_enc.T.double(), rtol=1e-9, atol=1e-9
        )
        assert ranks[0][f"seeded {init}"][1] == pytest.approx(one.cfg.metadata.inertia, rel=1e-9)


# ------------------------------------------------------------------------- the SAE


def test_sae_maps_and_disk_format(x, tmp_path):
    for sae in (
        fit_kmeans(x, 10, n_iter=5, progress=False),
        fit_pca_kmeans(x, 10, 3, n_iter=5, progress=False),
        fit_residual_kmeans(x, 5, 2, n_iter=5, progress=False),
    ):
        xf = x.float()
        f = sae.encode(xf)
        p = sae.n_pca
        assert ((f[:, p:] != 0).sum(-1) == sae.n_stages).all()
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.cfg.d_sae))
        pre = xf @ sae.W_enc + sae.b_enc  # documented pre-activations (first stage)
        _, idx = sae.assign(xf)
        first = slice(p, p + sae.n_clusters)
        assert (pre[:, first].argmax(-1) == idx[:, 0]).float().mean() > 0.999
        if p:
            torch.testing.assert_close(pre[:, :p], f[:, :p], rtol=1e-4, atol=1e-3)
        sse = float(((x - sae.decode(f).double()) ** 2).sum())
        assert sse == pytest.approx(sae.cfg.metadata.inertia, rel=1e-5)
        arch = sae.cfg.architecture()
        sae.save_model(tmp_path / arch)
        with pytest.raises(FileExistsError, match="overwrite=True"):
            sae.save_model(tmp_path / arch)
        sae.save_model(tmp_path / arch, overwrite=True)
        cfg = json.loads((tmp_path / arch / "cfg.json").read_text())
        assert cfg["architecture"] == arch
        back = SAE.load_from_disk(tmp_path / arch)
        assert type(back) is ClusteringSAE and type(back.cfg) is type(sae.cfg)
        assert torch.equal(back.encode(xf), f)


def test_import_registers_the_architectures(x, tmp_path):
    fit_residual_kmeans(x, 5, 2, n_iter=2, progress=False).save_model(tmp_path / "rk")
    code = (
        "import sys; from sae_lens import SAE\n"
        "try:\n    SAE.load_from_disk(sys.argv[1]); print('loaded-before')\n"
        "except Exception as e:\n    print('refused-before')\n"
        "import sae_fvu_plugin.clustering\n"
        "print(type(SAE.load_from_disk(sys.argv[1])).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "rk")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["refused-before", "ClusteringSAE"]


def test_load_errors(x, tmp_path):
    sae = fit_kmeans(
        x,
        4,
        n_iter=2,
        progress=False,
        metadata=dict(model_name="m", hook_name="blocks.0.hook_resid_post"),
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
    with pytest.raises(ValueError, match="look corrupt, truncated"):
        load_clustering_sae(tmp_path / "ok")


# ---------------------------------------------------------------- SAEBench core eval


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


@pytest.mark.parametrize("kind", ["kmeans", "pca_kmeans", "residual_kmeans"])
def test_stock_saebench_evaluates_clustering_sae(lm, kind):
    model, ds, acts = lm
    assert acts.shape == (1500, 64)
    n_pca = 4 if kind == "pca_kmeans" else 0
    if kind == "pca_kmeans":
        sae = fit_pca_kmeans(acts, 24, n_pca, n_iter=8, progress=False, metadata=META)
    elif kind == "residual_kmeans":
        sae = fit_residual_kmeans(acts, 12, 3, n_iter=8, progress=False, metadata=META)
    else:
        sae = fit_kmeans(acts, 24, n_iter=8, progress=False, metadata=META)
    metrics, feats = core.run_evals(
        sae, make_store(model, sae, ds), model, everything(), ignore_tokens=set(SPECIAL)
    )  # stock SAEBench
    for group in metrics.values():
        for value in group.values():
            assert np.isfinite(value)
    for key in ("encoder_norm", "encoder_decoder_cosine_sim", "max_decoder_cosine_sim"):
        assert np.isfinite(feats[key]).all()
    assert (
        metrics["sparsity"]["l0"]
        == {"kmeans": 1.0, "pca_kmeans": 5.0, "residual_kmeans": 3.0}[kind]
    )
    # with the plugin: fvu_a through the loop = 1 − Σ‖x − x̂‖² / TSS, x̂ built by hand
    with fsb.enabled():
        m, _ = core.run_evals(
            sae, make_store(model, sae, ds), model, everything(), ignore_tokens=set(SPECIAL)
        )
    xb, keep, _ = collect(model, sae, ds, 3, skip=2)
    xk = xb[keep].double()
    z = xk - sae.b_dec.double()
    recon = torch.zeros_like(z)
    if n_pca:
        v = sae.W_dec[:n_pca].double()
        recon += (z @ v.T) @ v
        z = z - (z @ v.T) @ v
    for s in range(sae.n_stages):
        cents = sae.stage_centroids(s).T.double()
        pick = cents[torch.cdist(z, cents).argmin(1)]
        recon += pick
        z = z - pick
    sse = float(((xk - sae.b_dec.double() - recon) ** 2).sum())
    tss = float(((xk - xk.mean(0)) ** 2).sum())
    assert m["reconstruction_quality"]["explained_variance"] == pytest.approx(
        1 - sse / tss, rel=1e-5
    )


def test_a_batch_factory_whose_passes_differ_is_refused(x):
    """A shuffled DataLoader (the same rows in another order each pass) or a generator that
    yields fewer rows later would fit a wrong clustering: every later pass is checked."""
    calls = {"n": 0}

    def shuffled():
        calls["n"] += 1
        g = torch.Generator().manual_seed(calls["n"])
        return iter(x[torch.randperm(len(x), generator=g)].split(500))

    with pytest.raises(ValueError, match=r"pass 2 over the activations: batch 0 .* differs"):
        fit_kmeans(shuffled, 5, n_iter=3, progress=False)

    def shrinking():
        calls["n"] += 1
        return iter(x[: 3000 if calls["n"] <= 1 else 2000].split(500))

    calls["n"] = 0
    with pytest.raises(ValueError, match="yielded 4 batches, the first pass 6"):
        fit_kmeans(shrinking, 5, n_iter=3, progress=False)

    def widening():
        calls["n"] += 1
        return iter((x if calls["n"] <= 1 else torch.cat([x, x[:, :1]], 1)).split(500))

    calls["n"] = 0
    with pytest.raises(ValueError, match="width 17\\) differs from the first pass"):
        fit_kmeans(widening, 5, n_iter=3, progress=False)


def test_bad_values_name_the_fix(x):
    with pytest.raises(
        TypeError, match=r"numpy array of shape \(3000, 16\); pass torch.from_numpy"
    ):
        fit_kmeans(x.numpy(), 5, n_iter=2, progress=False)
    with pytest.raises(ValueError, match="tol must be a finite number"):
        fit_kmeans(x, 5, tol=float("inf"), progress=False)
    init = x[:4].clone()
    init[1, 3] = float("nan")
    with pytest.raises(ValueError, match="init holds 1 NaN/inf value"):
        fit_kmeans(x, 4, init=init, progress=False)


def test_an_unwritable_checkpoint_is_refused_before_any_work(x, tmp_path):
    (tmp_path / "file.txt").write_text("x")
    calls = {"n": 0}

    def counted():
        calls["n"] += 1
        return iter(x.split(1000))

    for bad, why in (
        (tmp_path / "file.txt" / "ck.pt", "is a file, not a folder"),
        (tmp_path, "is a folder"),
    ):
        with pytest.raises(CheckpointError, match=why):
            fit_kmeans(counted, 5, n_iter=3, progress=False, checkpoint=bad)
    assert calls["n"] == 2  # the statistics pass only: no seeding, no Lloyd iteration
