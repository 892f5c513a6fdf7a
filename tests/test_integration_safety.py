"""The SAEBench and SAELens integrations under stress: one SAE in several threads, scopes
that must not leak, exceptions mid-run, broken SAEs and degenerate data (every other metric
stays stock), late importers and unsupported upstream versions. Real libraries throughout."""

from __future__ import annotations

import math
import sys
import threading
import types
import warnings

import pytest
import torch
from sae_bench.evals.core import main as core
from sae_lens import evals
from sae_lens.training.activation_scaler import ActivationScaler
from tiny import (
    CTX,
    SPECIAL,
    ConstantSAE,
    _standardize_sae_cfg,
    make_store,
    standard_sae,
    tiny_dataset,
    tiny_model,
)

import sae_fvu_plugin as fp
from sae_fvu_plugin import FVUWarning
from sae_fvu_plugin import saebench as fsb
from sae_fvu_plugin import saelens as fsl


@pytest.fixture(autouse=True)
def _stock_afterwards():
    yield
    fsb.disable()
    fsl.disable()


def cfg(**kw):
    base = dict(
        compute_variance_metrics=True,
        compute_sparsity_metrics=True,
        batch_size_prompts=4,
        n_eval_sparsity_variance_batches=3,
        context_size=CTX,
        explained_variance_bootstrap=0,
    )
    return fsb.FVUCoreEvalConfig(**(base | kw))


def run_sb(model, sae, ds, config):
    return core.run_evals(
        sae, make_store(model, sae, ds), model, config, ignore_tokens=set(SPECIAL)
    )


# ----------------------------------------------------------- 1. one SAE, many runs


def test_one_sae_two_threads_each_run_sees_only_its_batches():
    sae = standard_sae(seed=4)
    setups = [(tiny_model(offset=2.0, seed=s), tiny_dataset(seed=s)) for s in (1, 2)]
    defs = ["fvu_a", "fvu_per_dim"]
    fsb.enable()
    want = [
        run_sb(m, sae, d, cfg(explained_variance_definition=df))[0]
        for (m, d), df in zip(setups, defs, strict=True)
    ]
    got: list = [None, None]
    errors: list = []

    def work(i):
        try:
            for _ in range(3):
                got[i] = run_sb(
                    setups[i][0], sae, setups[i][1], cfg(explained_variance_definition=defs[i])
                )[0]
        except Exception as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in (0, 1):
        rq, wq = got[i]["reconstruction_quality"], want[i]["reconstruction_quality"]
        assert rq["explained_variance_definition"] == defs[i]
        assert rq["explained_variance"] == pytest.approx(wq["explained_variance"], rel=1e-12)
    fsb.disable()
    assert "encode" not in vars(sae) and "decode" not in vars(sae)
    x = torch.randn(3, 64)
    sae.decode(sae.encode(x))  # plain calls still work


class FailsOnSecondBatch(ConstantSAE):
    calls = 0

    def encode(self, x):
        type(self).calls += 1
        if type(self).calls == 2:
            raise RuntimeError("the SAE under test failed")
        return super().encode(x)


def test_nothing_is_left_on_the_sae_after_an_exception():
    model, ds = tiny_model(seed=3), tiny_dataset(seed=3)
    sae = FailsOnSecondBatch(torch.zeros(64))
    _standardize_sae_cfg(sae.cfg)
    before = set(vars(sae))
    with fsb.enabled(), pytest.raises(RuntimeError, match="the SAE under test failed"):
        run_sb(model, sae, ds, cfg())
    assert set(vars(sae)) == before
    sae.decode(sae.encode(torch.randn(2, 64)))


# -------------------------------------------------------- 2. enabled() across threads


def test_enabled_scopes_do_not_leak_across_threads():
    model, ds = tiny_model(offset=2.0, seed=5), tiny_dataset(seed=5)
    sae = standard_sae(seed=5)
    stock_cfg = fsb.FVUCoreEvalConfig.__mro__[1](  # SAEBench's own CoreEvalConfig
        compute_variance_metrics=True, batch_size_prompts=4, n_eval_sparsity_variance_batches=2
    )
    a_inside, a_may_exit, b_done = threading.Event(), threading.Event(), threading.Event()
    out = {}

    def thread_a():
        with fsb.enabled("fvu_b"):
            a_inside.set()
            a_may_exit.wait(30)
        out["a_exited"] = True

    def thread_b():
        a_inside.wait(30)
        with fsb.enabled("fvu_per_dim"):
            a_may_exit.set()
            while "a_exited" not in out:
                pass
            out["b"] = run_sb(model, sae, ds, stock_cfg)[0]["reconstruction_quality"]
        b_done.set()

    ta, tb = threading.Thread(target=thread_a), threading.Thread(target=thread_b)
    ta.start()
    tb.start()
    ta.join(60)
    tb.join(60)
    assert out["b"]["explained_variance_definition"] == "fvu_per_dim"
    assert not fsb.is_enabled()


# ----------------------------------------------- 3. SAELens's own conventions kept


def test_saelens_zero_variance_and_empty_keep_stock_values():
    fsl.enable()
    calc_cls = evals.ExplainedVarianceCalculator
    stock_cls = fsl.FVUExplainedVarianceCalculator.__mro__[1]
    const = torch.full((16, 8), 3.0)
    for x_hat, want in ((const.clone(), 1.0), (const + 1, 0.0)):
        ours, stock = calc_cls(), stock_cls()
        ours.add_batch(x_hat, const)
        stock.add_batch(x_hat, const)
        with pytest.warns(FVUWarning):
            value = ours.compute()
        assert value == stock.compute() == want
        assert math.isnan(ours._run.quality["explained_variance_by_definition"]["fvu_a"])
    empty = calc_cls()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FVUWarning)
        assert empty.compute() == stock_cls().compute() == 0.0


# -------------------------------------------------------- 4. a broken SAE is evaluated


class InfSAE(ConstantSAE):
    def decode(self, f):
        out = super().decode(f)
        out = out.clone()
        out[..., 0] = float("inf")
        return out


def test_broken_sae_keeps_every_other_metric_saebench():
    model, ds = tiny_model(offset=2.0, seed=6), tiny_dataset(seed=6)
    sae = InfSAE(torch.linspace(-1, 1, 64))
    _standardize_sae_cfg(sae.cfg)
    stock, _ = run_sb(model, sae, ds, cfg())
    with (
        fsb.enabled(),
        pytest.warns(FVUWarning, match=r"eval batch 1: 0 NaN/inf entries in x and \d+ in x_hat"),
    ):
        m, _ = run_sb(model, sae, ds, cfg(explained_variance_report=["fvu_b"]))
    for group, values in stock.items():
        for key, value in values.items():
            if key == "explained_variance":
                continue
            assert m[group][key] == value or (math.isnan(value) and math.isnan(m[group][key])), key
    rq = m["reconstruction_quality"]
    assert math.isnan(rq["explained_variance"])
    assert all(math.isnan(v) for v in rq["explained_variance_by_definition"].values())


def test_broken_sae_keeps_every_other_metric_saelens():
    model, ds = tiny_model(offset=2.0, seed=6), tiny_dataset(seed=6)
    sae = standard_sae(seed=3)
    original = sae.decode

    def broken(f):
        out = original(f).clone()
        out[..., 0] = float("inf")
        return out

    sae.decode = broken  # the SAE under test is broken, not the library
    config = evals.EvalConfig(
        batch_size_prompts=4,
        n_eval_sparsity_variance_batches=2,
        compute_variance_metrics=True,
        compute_sparsity_metrics=True,
    )
    stock, _ = evals.run_evals(
        sae,
        make_store(model, sae, ds),
        model,
        ActivationScaler(),
        config,
        exclude_special_tokens=list(SPECIAL),
    )
    with fsl.enabled(), pytest.warns(FVUWarning, match="NaN/inf"):
        m, _ = evals.run_evals(
            sae,
            make_store(model, sae, ds),
            model,
            ActivationScaler(),
            config,
            exclude_special_tokens=list(SPECIAL),
        )
    for group, values in stock.items():
        for key, value in values.items():
            if key != "explained_variance":
                assert m[group][key] == value or (
                    math.isnan(value) and math.isnan(m[group][key])
                ), key
    assert math.isnan(m["reconstruction_quality"]["explained_variance"])


# ------------------------------------------------------------ 5. every token excluded


def test_every_token_excluded_gives_nan_and_keeps_the_rest():
    model, ds = tiny_model(offset=2.0, seed=7), tiny_dataset(seed=7)
    sae = standard_sae(seed=7)
    with (
        fsb.enabled(),
        pytest.warns(
            FVUWarning, match="explained_variance_exclude_norm_above=1e-06 left out every"
        ),
    ):
        m, _ = run_sb(model, sae, ds, cfg(explained_variance_exclude_norm_above=1e-6))
    assert math.isnan(m["reconstruction_quality"]["explained_variance"])
    assert m["sparsity"]["l0"] > 0 and "mse" in m["reconstruction_quality"]
    every = set(range(500))
    with fsb.enabled(), pytest.warns(FVUWarning, match="ignore_tokens mask covered every token"):
        m2, _ = core.run_evals(sae, make_store(model, sae, ds), model, cfg(), ignore_tokens=every)
    assert math.isnan(m2["reconstruction_quality"]["explained_variance"])


# ----------------------------------------------------------- 6. every SAELens door


def test_saelens_package_level_run_evals_and_late_importers():
    import sae_lens
    from sae_lens import llm_sae_training_runner

    stock_run, stock_calc = sae_lens.run_evals, evals.ExplainedVarianceCalculator
    fsl.enable("fvu_b")
    assert sae_lens.run_evals is evals.run_evals is llm_sae_training_runner.run_evals
    late = types.ModuleType("late_importer")
    exec("from sae_lens.evals import ExplainedVarianceCalculator", late.__dict__)
    sys.modules["late_importer"] = late
    try:
        assert late.ExplainedVarianceCalculator is fsl.FVUExplainedVarianceCalculator
        model, ds = tiny_model(offset=2.0, seed=8), tiny_dataset(seed=8)
        sae = standard_sae(seed=8)
        config = evals.EvalConfig(
            batch_size_prompts=4, n_eval_sparsity_variance_batches=2, compute_variance_metrics=True
        )
        m, _ = sae_lens.run_evals(
            sae, make_store(model, sae, ds), model, ActivationScaler(), config
        )
        assert m["reconstruction_quality"]["explained_variance_definition"] == "fvu_b"
        fsl.disable()
        assert late.ExplainedVarianceCalculator is stock_calc
        assert sae_lens.run_evals is stock_run and llm_sae_training_runner.run_evals is stock_run
    finally:
        del sys.modules["late_importer"]


# ----------------------------------------------------------- 7. unknown upstream


def test_enable_fails_early_on_an_unsupported_upstream(monkeypatch):
    from sae_fvu_plugin import _integration
    from sae_fvu_plugin.saebench import patch as sb_patch

    monkeypatch.setattr(sb_patch, "version_of", lambda dist: "0.7.2")
    with pytest.raises(
        fp.saebench.UnsupportedVersionError,
        match="supports sae-bench 0.6.x; installed: sae-bench 0.7.2",
    ):
        fsb.enable()
    assert not fsb.is_enabled()

    def changed(sae, model):  # an upstream function that lost parameters
        return None

    with pytest.raises(
        _integration.UnsupportedVersionError, match=r"no parameter\(s\) \['ignore_tokens'\]"
    ):
        _integration.require_parameters("f", changed, ["sae", "ignore_tokens"], "x 1.0")


# ------------------------------------------------------------- 8. zero variance
