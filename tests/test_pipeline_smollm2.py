"""The main job end to end at toy size, on the real SmolLM2 weights and real Austen text."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_fvu_plugin.cli import run as clustering_cli
from sae_fvu_plugin.clustering import load_clustering_sae
from sae_fvu_plugin.data import AUSTEN_NOVELS, load_austen, load_model, split_contexts
from sae_fvu_plugin.experiments.config import FrontierConfig, SweepConfig
from sae_fvu_plugin.experiments.runner import run_experiment
from sae_fvu_plugin.experiments.sweep import SWEEP

TOY = dict(
    layers=[1, 3],
    fit_tokens=1500,
    eval_batches=2,
    batch_prompts=4,
    recon_batches=1,
    ks=[8],
    d_sae=32,
    n_pca=[1, 4, 16],
    n_iter=4,
    bootstrap=20,
)


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, model):
    cfg = SweepConfig(out=str(tmp_path_factory.mktemp("sweep")), **TOY)
    return cfg, run_experiment(SWEEP, cfg, progress=False)


def test_austen_and_model_are_real(model):
    books = load_austen()
    assert len(books) == len(AUSTEN_NOVELS) == 6
    assert books[4].startswith("PRIDE AND PREJUDICE")
    assert model.cfg.d_model == 576 and model.cfg.n_layers == 30
    text = books[4][books[4].index("It is a truth") :][:400]
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"][:64]
    with torch.no_grad():
        loss = model(torch.tensor([[model.tokenizer.bos_token_id, *ids]]), return_type="loss")
    # a real language model on Austen: far below the uniform ln(49152) ≈ 10.8 nats
    assert float(loss) < 4.0


def test_table_invariants(sweep):
    cfg, summary = sweep
    rows = summary["rows"]
    real = [r for r in rows if r["source"] == "real"]
    assert len(real) == 2 * len(cfg.layers) * len(cfg.fits())
    for r in rows:
        for d in ("fvu_a", "fvu_b", "fvu_per_dim", "saebench_0_6"):
            v = r[f"ev_{d}"]
            assert math.isfinite(v) and v <= 1 + 1e-9, (r["layer"], d, v)
    for layer in cfg.layers:
        for src in ("real", "gaussian"):
            pts = sorted(
                (
                    r
                    for r in rows
                    if r["layer"] == layer
                    and r["source"] == src
                    and not r["massive_excluded"]
                    and r["n_pca"] > 0
                ),
                key=lambda r: r["n_pca"],
            )
            ev = [r["ev_fvu_a"] for r in pts]
            assert all(b >= a - 0.02 for a, b in zip(ev, ev[1:], strict=False)), (layer, src, ev)
    kmeans = [r for r in real if r["n_pca"] == 0]
    assert all(r["l0"] == 1.0 for r in kmeans)
    for m in summary["massive_tokens"].values():
        assert 0 < m["top_variance_share"] < 1 and m["norm_max"] > m["norm_median"]
    out = cfg.out
    for f in (
        "results.csv",
        "results.json",
        "ev_vs_npca.png",
        "fvu_a_vs_fvu_b.png",
        "real_vs_gaussian.png",
    ):
        assert (Path(out) / f).is_file(), f
    # one labelled result JSON per evaluated row, Gaussian-control rows included
    saved = sorted(p.name for p in (Path(out) / "results").glob("*_eval_results.json"))
    assert len(saved) == len(rows), (len(saved), len(rows))
    gauss = [p for p in saved if "-gaussian-" in p]
    assert len(gauss) == len(rows) - len(real)
    note = json.loads((Path(out) / "results" / gauss[0]).read_text())["eval_config"]["note"]
    assert "Gaussian control" in note


def test_held_out_tokens_disjoint(sweep, model):
    cfg, _ = sweep
    n_fit = -(-cfg.fit_tokens // (cfg.context_size - 1))
    n_eval = (cfg.eval_batches + cfg.recon_batches) * cfg.batch_prompts
    split = split_contexts(
        cfg.dataset,
        model.tokenizer,
        context_size=cfg.context_size,
        n_fit=n_fit,
        n_eval=n_eval,
        seed=cfg.seed,
    )
    fit_rows = {tuple(r.tolist()) for r in split.fit}
    assert not fit_rows & {tuple(r.tolist()) for r in split.eval}
    assert not set(split.fit_index.tolist()) & set(split.eval_index.tolist())


def test_loop_fvu_a_equals_direct_computation(sweep, model):
    """The SAEBench-loop value of one saved model against float64 numpy on the same
    held-out activations (BOS masked, as SAEBench's ignore_tokens does)."""
    cfg, summary = sweep
    row = next(
        r
        for r in summary["rows"]
        if r["source"] == "real"
        and r["layer"] == 3
        and r["n_pca"] == 4
        and not r["massive_excluded"]
    )
    name = f"L3-real-pca_kmeans-k{row['n_clusters']}-p4"
    (folder,) = (Path(cfg.out) / "saes").glob(f"{name}-*")
    sae = load_clustering_sae(folder)
    n_fit = -(-cfg.fit_tokens // (cfg.context_size - 1))
    n_var = cfg.eval_batches * cfg.batch_prompts
    n_eval = n_var + cfg.recon_batches * cfg.batch_prompts
    split = split_contexts(
        cfg.dataset,
        model.tokenizer,
        context_size=cfg.context_size,
        n_fit=n_fit,
        n_eval=n_eval,
        seed=cfg.seed,
    )
    tokens = split.eval[-n_var:]
    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens, names_filter=[sae.cfg.hook_name], stop_at_layer=4, prepend_bos=False
        )
        x = cache[sae.cfg.hook_name]
        x_hat = sae.decode(sae.encode(x))
    special = {
        model.tokenizer.bos_token_id,
        model.tokenizer.eos_token_id,
        model.tokenizer.pad_token_id,
    }
    keep = ~torch.isin(tokens, torch.tensor(sorted(t for t in special if t is not None)))
    xs = x[keep].double().numpy()
    rs = xs - x_hat[keep].double().numpy()
    direct = 1 - (rs**2).sum() / ((xs - xs.mean(0)) ** 2).sum()
    assert row["ev_fvu_a"] == pytest.approx(direct, rel=1e-7)
    saved = json.loads((Path(cfg.out) / "results" / f"{name}_eval_results.json").read_text())
    rq = saved["eval_result_metrics"]["reconstruction_quality"]
    assert saved["eval_config"]["explained_variance_definition"] == "fvu_a"
    assert rq["explained_variance"] == pytest.approx(direct, rel=1e-7)
    assert set(rq["explained_variance_by_definition"]) >= {"fvu_a", "fvu_b", "fvu_per_dim"}
    assert np.isfinite(saved["eval_result_metrics"]["model_behavior_preservation"]["kl_div_score"])


def test_rerun_reuses_everything(sweep):
    import time

    cfg, summary = sweep
    t = time.time()
    again = run_experiment(SWEEP, cfg, progress=False)
    assert time.time() - t < 30
    assert again["rows"] == summary["rows"]


def test_clustering_cli_fit_and_eval(tmp_path, model, capsys):
    out = tmp_path / "km"
    args = ["fit", "--hook", "blocks.1.hook_resid_post", "--tokens", "600", "--n-clusters", "8"]
    args += ["--out", str(out), "--n-iter", "3", "--device", "cpu", "--no-progress"]
    clustering_cli(args)
    with pytest.raises(SystemExit) as err:
        clustering_cli(args)
    assert err.value.code == 2 and "--overwrite" in capsys.readouterr().err
    capsys.readouterr()
    (tmp_path / "evals").mkdir()
    res = clustering_cli(
        ["eval", str(out), "--eval-batches", "1", "--recon-batches", "1", "--batch-prompts", "2"]
        + ["--bootstrap", "7", "--ci-level", "0.9", "--seed", "3"]
        + ["--output-json", str(tmp_path / "evals")]  # a folder: eval_results.json in it
    )
    assert res["metrics"]["sparsity"]["l0"] == 1.0
    printed = capsys.readouterr().out.splitlines()
    head = next(i for i, ln in enumerate(printed) if ln.startswith("explained variance (fvu_a) = "))
    assert "90% CI" in printed[head] and len(printed) - head < 20  # a summary, not replicates
    saved = json.loads((tmp_path / "evals" / "eval_results.json").read_text())
    rq = saved["eval_result_metrics"]["reconstruction_quality"]
    assert rq["explained_variance_definition"] == "fvu_a"
    # the interval flags reach the result
    assert rq["explained_variance_ci_level"] == 0.9
    assert len(rq["explained_variance_replicates"]["fvu_a"]) == 7
    assert rq["explained_variance_provenance"]["fvu_a"]["seed"] == 3
    # held out by construction: the fit contexts are recorded, the eval ones avoid them
    held = saved["held_out"]
    fit_ids = {i for a, b in held["fit_contexts"] for i in range(a, b)}
    eval_ids = {i for a, b in held["eval_contexts"] for i in range(a, b)}
    assert len(fit_ids) == 5 and len(eval_ids) == 4 and held["overlap"] == 0 and held["checked"]
    assert not fit_ids & eval_ids
    # an SAE fitted on another hook's width is refused with a one-line error
    cfg = json.loads((out / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = "blocks.1.mlp.hook_post"
    (out / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit) as err:
        clustering_cli(["eval", str(out), "--eval-batches", "1"])
    assert err.value.code == 2
    assert (
        "d_in=576 but the hook 'blocks.1.mlp.hook_post' has width 1536" in capsys.readouterr().err
    )


def test_eval_refuses_overlap_unless_allowed(tmp_path, model, capsys):
    """An SAE whose recorded fit contexts include the eval contexts is refused."""
    out = tmp_path / "km"
    clustering_cli(
        [
            "fit",
            "--hook",
            "blocks.1.hook_resid_post",
            "--tokens",
            "300",
            "--n-clusters",
            "4",
            "--out",
            str(out),
            "--n-iter",
            "2",
            "--no-progress",
        ]
    )
    cfg = json.loads((out / "cfg.json").read_text())
    from sae_fvu_plugin.data import split_contexts

    split = split_contexts(
        "austen",
        model.tokenizer,
        context_size=128,
        n_fit=0,
        n_eval=2,
        seed=0,
        fit_ids=[i for a, b in cfg["metadata"]["provenance"]["fit_contexts"] for i in range(a, b)],
    )
    # pretend the first eval contexts were fitted on too (same text at the same ids)
    prov = cfg["metadata"]["provenance"]
    ids = sorted(
        {i for a, b in prov["fit_contexts"] for i in range(a, b)} | set(split.eval_index.tolist())
    )
    from sae_fvu_plugin.provenance import to_ranges

    prov["fit_contexts"] = to_ranges(ids)
    prov["fit_contexts_sha256"] = split.contexts_hash(ids)
    (out / "cfg.json").write_text(json.dumps(cfg))
    common = ["--eval-batches", "1", "--recon-batches", "1", "--batch-prompts", "2"]
    res = clustering_cli(["eval", str(out), *common, "--allow-overlap"])
    assert res["held_out"]["checked"]
    # with those ids taken, the plugin now picks other eval contexts: still disjoint
    assert res["held_out"]["overlap"] == 0
    prov["fit_contexts_sha256"] = "sha256:someotherthing"
    (out / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit) as err:
        clustering_cli(["eval", str(out), *common])
    assert err.value.code == 2 and "overlap cannot be checked" in capsys.readouterr().err


def test_toy_frontier_on_the_real_model(tmp_path):
    from sae_fvu_plugin.experiments.frontier import FRONTIER

    cfg = FrontierConfig(
        layers=[1],
        fit_tokens=1200,
        eval_batches=2,
        batch_prompts=2,
        recon_batches=1,
        d_sae=16,
        sae_ks=[1, 4],
        batchtopk_ks=[2],
        l1_coefficients=[0.05],
        pca_ns=[2],
        residual_stages=[2],
        mp_iterations=[2],
        val_tokens=254,
        sae_batch_tokens=128,
        sae_eval_every=128 * 10,
        sae_max_tokens=128 * 10 * 6,
        train_tokens=2400,
        sae_lrs=[3e-3],
        sae_sweep_tokens=128 * 10,
        sae_precision="float32",
        jumprelu_l0s=[2.0],
        matryoshka_ks=[2],
        kmeans_init_ks=[1],
        n_iter=4,
        bootstrap=20,
        out=str(tmp_path / "frontier"),
    )
    result = run_experiment(FRONTIER, cfg, progress=False)
    rows = result["rows"]
    real = [r for r in rows if r["source"] == "real"]
    methods = {r["method"] for r in real}
    assert methods == {
        "kmeans",
        "kmeans_top1",
        "klines",
        "kmeans_mp",
        "pca_kmeans",
        "residual_kmeans",
        "topk",
        "batchtopk",
        "standard",
        "jumprelu",
        "matryoshka",
        "topk_kmeans_init",
    }
    by = {(r["method"], json.dumps(r["params"], sort_keys=True)): r for r in real}
    assert by[("kmeans", '{"n_clusters": 16}')]["l0"] == 1.0
    assert by[("residual_kmeans", '{"n_clusters": 8, "n_stages": 2}')]["l0"] == 2.0
    assert 3 < by[("topk", '{"d_sae": 16, "k": 4}')]["l0"] <= 4.0  # k, less any ReLU'd negatives
    for r in real:
        assert r["held_out"]["overlap"] == 0 and r["d_sae"] == 16
        assert r["tokens_seen"] >= r["n_tokens"] and r["passes"] >= 1
        for d in ("fvu_a", "fvu_b", "fvu_per_dim", "saebench_0_6"):
            lo, hi = r["ev_ci"][d]
            assert lo <= r[f"ev_{d}"] <= hi or hi - lo < 1e-12
        if r["family"] == "sae":  # SAEs train on the fresh rows, each seen ≤ 2 times
            assert len(r["learning_curve"]) >= 2
            assert r["n_tokens"] == 2400 and r["passes"] <= 2.0 + 1e-9
        else:
            assert r["n_tokens"] == 1200
    assert any(r["source"] == "gaussian" for r in rows)
    top1 = by[("kmeans_top1", '{"n_clusters": 16}')]["ev_fvu_a"]
    assert top1 >= by[("kmeans", '{"n_clusters": 16}')]["ev_fvu_a"] - 1e-9
    # every TopK k = 1 is paired with the top-1 SAE on the centroids it can represent
    floor = result["summary"]["floor"]
    assert {(f["sae"].split("-")[2], f["definition"]) for f in floor} == {
        (m, d)
        for m in ("topk", "topk_kmeans_init")
        for d in ("fvu_a", "fvu_b", "fvu_per_dim", "saebench_0_6")
    }
    for f in floor:
        assert f["representable"] == "L1-real-kmeans_top1-k16" and f["layer"] == 1
        assert f["ci_low"] <= f["difference"] <= f["ci_high"]
    summary = result["summary"]["1"]
    assert set(summary["by_definition"]) == {"fvu_a", "fvu_b", "fvu_per_dim", "saebench_0_6"}
    for f in ("results.csv", "results.json", "frontier.png", "learning_curves.png"):
        assert (tmp_path / "frontier" / f).is_file(), f
    # KL / CE off (the CPU default): saved as null with a note, not as SAEBench's -1; the
    # variance contexts are those of a run with the KL / CE passes, so every EV is the same
    from sae_fvu_plugin.experiments.points import Point
    from sae_fvu_plugin.experiments.runner import Experiment

    pt = Point.of("kmeans", 1, "real", n_clusters=16)
    saved = json.loads(
        (tmp_path / "frontier" / "results" / f"{pt.name}_eval_results.json").read_text()
    )
    assert saved["eval_result_metrics"]["model_behavior_preservation"] is None
    assert set(saved["not_computed"]) == {
        "model_behavior_preservation",
        "model_performance_preservation",
    }
    assert by[("kmeans", '{"n_clusters": 16}')]["kl_div_score"] is None
    exp = Experiment(cfg, progress=False)
    with_kl = exp.evaluator.real(exp.fitted(pt), pt, model_metrics=True)["metrics"]
    assert math.isfinite(with_kl["model_behavior_preservation"]["kl_div_score"])
    ev = with_kl["reconstruction_quality"]["explained_variance_by_definition"]
    for d in ("fvu_a", "fvu_b", "fvu_per_dim"):
        assert ev[d] == pytest.approx(by[("kmeans", '{"n_clusters": 16}')][f"ev_{d}"], abs=1e-12)
