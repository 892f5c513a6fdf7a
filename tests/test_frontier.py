"""The frontier's methods on a tiny random model: clustering with L0 > 1 and SAELens-trained
SAEs, each scored by stock SAEBench; the summary's arithmetic on hand-built rows."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import META
from sae_bench.evals.core import main as core
from sae_lens import SAE
from tiny import CTX, SPECIAL, make_store

from sae_fvu_plugin import explained_variance
from sae_fvu_plugin import saebench as fsb
from sae_fvu_plugin.clustering import fit_kmeans
from sae_fvu_plugin.clustering.codebook_saes import (
    codebook_of,
    matching_pursuit_from_codebook,
    topk_from_codebook,
)
from sae_fvu_plugin.clustering.klines import fit_klines
from sae_fvu_plugin.experiments.config import FrontierConfig
from sae_fvu_plugin.experiments.frontier_summary import l0_to_match, summarize
from sae_fvu_plugin.experiments.methods.saes import plateaued

LM_SEED = 7


@pytest.fixture(scope="module")
def km(lm):
    """k-means with 32 centroids on the module's activations."""
    return fit_kmeans(lm[2], 32, n_iter=10, progress=False, metadata=META)


def saebench(sae, model, ds, n_batches=3):
    from sae_bench.sae_bench_utils.general_utils import _standardize_sae_cfg

    _standardize_sae_cfg(sae.cfg)
    cfg = fsb.FVUCoreEvalConfig(
        compute_variance_metrics=True,
        compute_sparsity_metrics=True,
        batch_size_prompts=4,
        n_eval_sparsity_variance_batches=n_batches,
        context_size=CTX,
    )
    with fsb.enabled():
        metrics, _ = core.run_evals(
            sae, make_store(model, sae, ds), model, cfg, ignore_tokens=set(SPECIAL)
        )
    return metrics


def test_top1_gain_is_never_worse_than_kmeans_on_its_codebook(lm, km):
    model, ds, acts = lm
    mean, dirs = codebook_of(km)
    top1 = topk_from_codebook(mean, dirs, META)
    x = acts.float()
    with torch.no_grad():
        err_km = (x - km.decode(km.encode(x))).double().square().sum(1)
        f = top1.encode(x)
        err_top1 = (x - top1.decode(f)).double().square().sum(1)
    assert ((f != 0).sum(-1) <= 1).all()
    assert bool((err_top1 <= err_km * (1 + 1e-5) + 1e-4).all())  # per token
    assert float(err_top1.sum()) < float(err_km.sum())
    ev_km = saebench(km, model, ds)["reconstruction_quality"]["explained_variance"]
    ev_top1 = saebench(top1, model, ds)["reconstruction_quality"]["explained_variance"]
    assert ev_top1 >= ev_km


def test_klines_objective_never_increases_and_beats_its_start(lm, km, tmp_path):
    model, ds, acts = lm
    mean, dirs = codebook_of(km)
    kl = fit_klines(acts, 32, init_codebook=dirs, n_iter=15, progress=False, metadata=META)
    hist = kl.cfg.metadata.fit["objective_history"]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(hist, hist[1:], strict=False))
    # its reconstruction error is Σ‖z‖² − Σ max_k (u_k·z)², checked by hand
    z = acts.double() - acts.double().mean(0)
    u = kl.W_dec.double()
    resid = float((z.square().sum(1) - (z @ u.T).abs().max(1).values.square()).sum())
    assert kl.cfg.metadata.inertia == pytest.approx(resid, rel=1e-4)
    with torch.no_grad():
        direct = float((acts - kl.decode(kl.encode(acts))).double().square().sum())
    assert direct == pytest.approx(resid, rel=1e-4)
    # at least as good as the signed top-1 on the codebook it started from
    start = float((z.square().sum(1) - (z @ dirs.T).abs().max(1).values.square()).sum())
    assert resid <= start * (1 + 1e-9)
    kl.save_model(tmp_path / "kl")
    back = SAE.load_from_disk(tmp_path / "kl")
    assert back.cfg.architecture() == "abstopk" and back.cfg.k == 1
    assert saebench(back, model, ds)["sparsity"]["l0"] <= 1.0


def test_matching_pursuit_over_the_codebook(lm, km):
    model, ds, acts = lm
    mean, dirs = codebook_of(km)
    evs = []
    for m in (1, 2, 4):
        mp = matching_pursuit_from_codebook(mean, dirs, m, META)
        metrics = saebench(mp, model, ds)
        assert metrics["sparsity"]["l0"] <= m + 1e-9
        evs.append(metrics["reconstruction_quality"]["explained_variance"])
    assert evs[0] < evs[1] < evs[2]


@pytest.mark.parametrize(
    "kind, params",
    [
        ("topk", {"k": 4}),
        ("batchtopk", {"k": 2}),
        ("standard", {"l1": 0.05}),
        ("jumprelu", {"l0": 4.0}),
        ("matryoshka", {"k": 2}),
    ],
)
def test_saelens_trained_saes_through_saebench(lm, kind, params):
    from sae_fvu_plugin.experiments.methods.saes import gathered_step, train
    from sae_fvu_plugin.experiments.points import FitInput, Point

    model, ds, acts = lm
    cfg = FrontierConfig(
        sae_batch_tokens=256,
        sae_eval_every=256 * 20,
        sae_max_tokens=256 * 20 * 8,
        sae_max_passes=1000.0,
        sae_lrs=[1e-4, 3e-3],
        sae_sweep_tokens=256 * 20,
        sae_precision="float32",
        val_tokens=256,
        out="unused",
    )
    params = {"d_sae": 64} | params
    k = params.get("k")
    inp = FitInput(
        point=Point.of(kind, 0, **params),
        params=params,
        acts=acts[:1200],
        val=acts[1200:],
        cfg=cfg,
        options=None,  # type: ignore[arg-type]
        provenance=None,
        metadata=META,
        device="cpu",
        fitted=lambda p: None,
        progress=False,
    )
    sae = train(kind, inp)
    meta = sae.cfg.metadata
    curve = meta.learning_curve
    assert 2 <= len(curve) <= 12 and curve[-1][0] == meta.tokens_seen
    assert curve[-1][1] > curve[0][1] - 0.05  # it learned
    # the sweep tried both rates from the same start and kept the better one on validation
    sweep = meta.lr_sweep
    assert (
        sweep["lrs"] == [1e-4, 3e-3]
        and meta.lr == sweep["lrs"][sweep["ev"].index(max(sweep["ev"]))]
    )
    assert meta.precision == "float32" and 0 <= meta.dead_fraction <= 1
    # the gathered step where k / d_sae ≤ 1/32 (here BatchTopK and Matryoshka, k 2 of 64)
    gathered = kind in ("batchtopk", "matryoshka")
    assert gathered_step(kind, params) == gathered
    assert meta.training_step == ("gathered" if gathered else "SAELens")
    # the kept checkpoint is the best validation point of the curve
    kept = dict(map(tuple, curve))[meta.kept_checkpoint_tokens]
    assert kept == max(v for _, v in curve)
    metrics = saebench(sae, model, ds)
    ev = metrics["reconstruction_quality"]["explained_variance"]
    if kind == "jumprelu":
        # it holds its target L0 (SAELens's defaults ended far above it: module docstring),
        # and learns more slowly there than TopK at the same L0 (0.10 against 0.64 here)
        assert 0.5 * params["l0"] <= metrics["sparsity"]["l0"] <= 2 * params["l0"]
        assert meta.initial_threshold > 0
    assert (0.05 if kind == "jumprelu" else 0.2) < ev < 1
    if kind == "topk":
        assert metrics["sparsity"]["l0"] == pytest.approx(k)  # exactly k per token
    # the saved inference SAE takes raw activations (the training scale is folded in)
    with torch.no_grad():
        direct = explained_variance(acts[1200:], sae.decode(sae.encode(acts[1200:])))
    exact = kind in ("topk", "standard")  # (BatchTopK-style SAEs infer with a threshold)
    assert direct == pytest.approx(kept, abs=0.02 if exact else 0.15)


def test_kmeans_initialised_topk_starts_at_its_floor_and_keeps_it(lm):
    """TopK k = 1 from the k-means codebook starts exactly at the top-1 SAE on the
    centroids (its first learning-curve point equals that SAE's explained variance), and
    the kept checkpoint is never below it on validation."""
    from sae_fvu_plugin.clustering.codebook_saes import codebook_of, topk_from_codebook
    from sae_fvu_plugin.experiments.methods.saes import train
    from sae_fvu_plugin.experiments.points import FitInput, Point

    _, _, acts = lm
    km = fit_kmeans(acts[:1200], 32, n_iter=10, progress=False, metadata=META)
    mean, dirs = codebook_of(km)
    top1 = topk_from_codebook(mean, dirs, META, k=1)
    val = acts[1200:]
    with torch.no_grad():
        floor = explained_variance(val, top1.decode(top1.encode(val)))
    cfg = FrontierConfig(
        sae_batch_tokens=128,
        sae_eval_every=128 * 5,
        sae_max_tokens=128 * 5 * 6,
        sae_max_passes=1000.0,
        sae_lrs=[1e-2],  # large on purpose: training may move away from the start
        sae_sweep_tokens=128 * 5,
        sae_precision="float32",
        out="unused",
    )
    params = {"d_sae": 32, "k": 1}
    inp = FitInput(
        point=Point.of("topk_kmeans_init", 0, **params),
        params=params,
        acts=acts[:1200],
        val=val,
        cfg=cfg,
        options=None,  # type: ignore[arg-type]
        provenance=None,
        metadata=META,
        device="cpu",
        fitted=lambda p: km if p.method == "kmeans" and p.param_dict["n_clusters"] == 32 else None,
        progress=False,
    )
    sae = train("topk_kmeans_init", inp)
    curve = sae.cfg.metadata.learning_curve
    assert curve[0][0] == 0 and curve[0][1] == pytest.approx(floor, abs=1e-5)
    with torch.no_grad():
        kept = explained_variance(val, sae.decode(sae.encode(val)))
    assert kept >= floor - 1e-5 and kept == pytest.approx(max(v for _, v in curve), abs=1e-4)
    meta = sae.cfg.metadata  # the chosen rate, and where it was halved (at most 4 times)
    assert meta.lr == 1e-2 and len(meta.lr_halvings) <= 4
    assert meta.lr_final == pytest.approx(1e-2 / 2 ** len(meta.lr_halvings))


def test_plateau_rule():
    flat = [(i * 100, 0.8 + 0.001 * i) for i in range(1, 6)]
    rising = [(i * 100, 0.5 + 0.05 * i) for i in range(1, 6)]
    assert plateaued(flat, 0.005)
    assert not plateaued(rising, 0.005)
    assert not plateaued(flat[:4], 0.005)  # too few points to tell
    # a curve from t = 0 with 5 points: the last fifth is [3.2, 4] segments, so the window
    # starts at the point at 3 (it once started at the last point itself: always "flat")
    from_zero = [(i * 100, 0.3 + 0.1 * i) for i in range(5)]
    assert not plateaued(from_zero, 0.005)
    assert plateaued([*from_zero[:3], (300, 0.7), (400, 0.7005)], 0.005)
    assert not plateaued(
        [(0, 0.1), (100, 0.2), (200, 0.3), (300, 0.5), (330, 0.6), (400, 0.6)], 0.005
    )


def test_l0_to_match_interpolates_in_log_l0():
    curve = [(1.0, 0.5), (4.0, 0.7), (16.0, 0.9)]
    assert l0_to_match(curve, 0.4) == 1.0
    assert l0_to_match(curve, 0.6) == pytest.approx(2.0)  # halfway in log2 between 1 and 4
    assert l0_to_match(curve, 0.8) == pytest.approx(8.0)
    assert l0_to_match(curve, 0.95) is None


def test_summary_on_hand_built_rows():
    def row(method, family, l0, a, b, **params):
        return {
            "name": f"{method}{l0}",
            "method": method,
            "family": family,
            "layer": 3,
            "source": "real",
            "l0": l0,
            "d_sae": 8,
            "params": params,
            "ev_fvu_a": a,
            "ev_fvu_b": b,
            "ev_fvu_per_dim": a,
            "ev_saebench_0_6": a,
        }

    rows = [
        row("kmeans", "clustering", 1.0, 0.70, 0.40, n_clusters=8),
        row("pca_kmeans", "clustering", 3.0, 0.75, 0.60, n_clusters=6, n_pca=2),
        row("topk", "sae", 1.0, 0.60, 0.50, d_sae=8, k=1),
        row("topk", "sae", 4.0, 0.80, 0.70, d_sae=8, k=4),
    ]
    s = summarize(rows)["3"]
    a = s["by_definition"]["fvu_a"]
    # fvu_a: k-means 0.70 is reached halfway (in log2) between L0 1 and 4 → L0 = 2
    assert a["match"]["topk"]["l0_to_match_kmeans"] == pytest.approx(2.0)
    # fvu_b: k-means 0.40 is beaten already at L0 = 1
    assert s["by_definition"]["fvu_b"]["match"]["topk"]["l0_to_match_kmeans"] == 1.0
    # at L0 = 1, fvu_a ranks k-means first, fvu_b ranks TopK first: the ranking changes
    assert s["ranking_changes_fvu_a_vs_fvu_b"]["1"] == {
        "fvu_a": ["kmeans", "topk"],
        "fvu_b": ["topk", "kmeans"],
    }
    line = a["line"]
    xs = [0.0, math.log2(3), 0.0, 2.0]
    ys = [0.70, 0.75, 0.60, 0.80]
    mx, my = sum(xs) / 4, sum(ys) / 4
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    assert line["slope"] == pytest.approx(slope)
    vs = {(b["method"], b["l0"]): b for b in s["vs_kmeans_at_equal_d_sae"]}
    assert vs[("pca_kmeans", 3.0)]["beats_kmeans"] is True  # no replicates here: by the estimate
    assert vs[("topk", 1.0)]["ev_fvu_a_minus_kmeans"] == pytest.approx(-0.10)
    assert vs[("topk", 4.0)]["beats_kmeans"] is True


def test_the_learning_rate_is_halved_on_a_regression_and_saelens_trains_at_it(lm):
    """``regressed``: the last validation EV more than tol (relative) below the best; and
    ``set_lr`` changes the rate SAELens's trainer uses at its next steps (its constant
    schedule resets the rate to its base rate at every step, so only the base counts)."""
    from types import SimpleNamespace

    from sae_fvu_plugin.experiments.methods.saes import _Run, _training_sae, regressed

    _, _, acts = lm
    run = SimpleNamespace(best=(0.80, 0, None), curve=[(0, 0.5), (100, 0.80), (200, 0.797)])
    assert not regressed(run, 0.005)  # 0.4 % below the best
    run.curve.append((300, 0.79))
    assert regressed(run, 0.005)  # 1.25 % below
    cfg = FrontierConfig(sae_batch_tokens=128, out="unused")
    torch.manual_seed(0)
    sae = _training_sae("topk", {"d_sae": 32, "k": 2}, acts.shape[1], "cpu")
    r = _Run(sae, acts[:1200].float(), acts[1200:].float(), 4e-3, cfg, "cpu", False)
    r.advance(256)
    assert r.trainer.optimizer.param_groups[0]["lr"] == pytest.approx(4e-3)
    r.set_lr(1e-3)
    r.advance(512)  # two more SAELens steps, each stepping its schedule
    assert r.lr == 1e-3
    assert r.trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_jumprelu_threshold_starts_at_the_target_l0():
    """SAELens's default threshold (0.01) starts a JumpReLU SAE near L0 = d_sae / 2; ours
    starts it at the target: exactly ⌈n·L0⌉ of the first n rows' pre-activations pass."""
    import sae_lens
    from sae_lens.saes.sae import SAEMetadata

    from sae_fvu_plugin.experiments.methods.saes import _threshold_at_target

    torch.manual_seed(0)
    sae = sae_lens.JumpReLUTrainingSAE(
        sae_lens.JumpReLUTrainingSAEConfig(
            d_in=32, d_sae=256, jumprelu_sparsity_loss_mode="quadratic", target_l0=6.0,
            metadata=SAEMetadata(),
        )
    )  # fmt: skip
    xs = torch.randn(500, 32) * 3 + 1
    with torch.no_grad():
        before = float((sae.encode_with_hidden_pre(xs)[0] != 0).sum(1).float().mean())
    assert before > 60  # SAELens's default threshold: about half the latents fire
    t = _threshold_at_target(sae, xs, 6.0)
    th = sae.threshold.detach()
    assert t > 0.01 and float(th.min()) == float(th.max()) == pytest.approx(t)
    with torch.no_grad():
        acts = sae.encode_with_hidden_pre(xs)[0]
    assert int((acts != 0).sum()) == 3000  # ⌈500 · 6⌉ pre-activations above t
