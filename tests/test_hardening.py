"""What a hostile user broke: concurrency, degenerate data, tampered state, upstream
contracts. Real SAEBench / SAELens / torch.distributed throughout."""

from __future__ import annotations

import math
import socket
import sys
import threading
import types
import warnings

import numpy as np
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
from sae_fvu_plugin import FVUAccumulator, FVUDefinition, FVUWarning
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


@pytest.mark.parametrize("value", [0.1, 123.456])
def test_constant_float64_data_is_zero_variance_in_every_dtype(value):
    g = torch.Generator().manual_seed(0)
    const = torch.full((64, 4), value, dtype=torch.float64)
    noisy = const + 0.1 * torch.randn(64, 4, generator=g, dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        with pytest.warns(FVUWarning, match="Zero total variance"):
            assert math.isnan(fp.fvu(const.to(dtype), noisy.to(dtype), "fvu_a"))
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    x[:, 2] = value  # one constant dimension
    xh = x + 0.1 * torch.randn(64, 4, generator=g, dtype=torch.float64)
    with pytest.warns(FVUWarning, match="1 of 4 dimensions have zero variance"):
        per_dim = fp.fvu(x, xh, "fvu_per_dim")
    dims = [
        float(((x[:, i] - xh[:, i]) ** 2).sum() / ((x[:, i] - x[:, i].mean()) ** 2).sum())
        for i in (0, 1, 3)
    ]
    assert per_dim == pytest.approx((sum(dims) + 1.0) / 4, rel=1e-12)  # sklearn's force_finite: 1


# ---------------------------------------------------------- 9. tampered state


def test_tampered_state_dicts_are_refused_and_nothing_changes():
    acc = FVUAccumulator(["fvu_a", "fvu_b"], bootstrap=8)
    acc.update(torch.randn(4, 5, 3), torch.randn(4, 5, 3))
    good = acc.state_dict()
    target = FVUAccumulator(["fvu_a", "fvu_b"], bootstrap=8)
    target.update(torch.randn(2, 5, 3), torch.randn(2, 5, 3))
    before = target.compute()

    def tampered(edit):
        s = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in good.items()}
        edit(s)
        return s

    cases = [
        (lambda s: s.pop("state"), "missing keys"),
        (lambda s: s.update(format=99), "format 99"),
        (lambda s: s["state"].__setitem__(0, -20.0), "token count"),
        (lambda s: s["state"].__setitem__(0, 20.5), "token count"),
        (lambda s: s["state"].__setitem__(5, float("nan")), "NaN/inf"),
        (lambda s: s.update(state=s["state"][:-1]), "float64 of"),
        (lambda s: s["replicates"].__setitem__(0, -3.0), "non-negative integers"),
        (lambda s: s.update(bootstrap=4), "bootstrap=4"),
        (lambda s: s.update(next_unit=-1), "next_unit"),
        (lambda s: s["state"].__setitem__(10, -5.0), "negative sums of squares"),
    ]
    for edit, match in cases:
        with pytest.raises(ValueError, match=match):
            target.load_state_dict(tampered(edit))
        assert target.compute() == before
    with pytest.raises(ValueError, match="expected a dict"):
        target.load_state_dict("nope")  # type: ignore[arg-type]


# ------------------------------------------------------- 10. merge / all_reduce


def test_merge_self_is_refused_and_all_reduce_without_group_is_a_no_op():
    acc = FVUAccumulator("fvu_a")
    acc.update(torch.randn(10, 3), torch.randn(10, 3))
    with pytest.raises(ValueError, match="count every token twice"):
        acc.merge(acc)
    before = acc.compute()
    acc.all_reduce()  # one process is a world of one
    acc.all_reduce()
    assert acc.compute() == before and acc.n_tokens == 10


def test_all_reduce_with_mismatched_ranks_raises_the_same_error_everywhere(tmp_path):
    import torch.multiprocessing as mp
    from _dist_worker import run_mismatch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run_mismatch, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"mm{r}.pt") for r in range(2))
    assert r0["msg"] == r1["msg"] and "ranks' accumulators differ" in r0["msg"]
    assert (
        "rank 0: definitions ['fvu_a']" in r0["msg"]
        and "rank 1: definitions ['fvu_b']" in r0["msg"]
    )
    assert "already called" in r0["twice"] and r0["n"] == 20


# ------------------------------------------------------ 11. definitions re-validated


def test_bypassed_validation_and_bad_names_are_caught():
    bogus = FVUDefinition.model_construct(
        reduce="pooled", center="bogus", center_residual=False, formula="standard", description=""
    )
    copied = fp.DEFINITIONS["fvu_a"].model_copy(update={"center": "bogus"})
    x = torch.randn(20, 3)
    for bad in (bogus, copied):
        with pytest.raises(ValueError, match="Invalid FVUDefinition"):
            fp.fvu(x, x, bad)
        with pytest.raises(ValueError, match="Invalid FVUDefinition"):
            fp.register_definition("bogus_def", bad)
        with pytest.raises(ValueError, match="Invalid FVUDefinition"):
            FVUAccumulator(bad)
    ok = FVUDefinition(reduce="pooled", center="batch")
    for name in ("a\n", "x" * 65, "9abc", "all"):
        with pytest.raises(ValueError, match="not valid"):
            fp.register_definition(name, ok)
    fp.register_definition("x" * 64, ok)
    fp.DEFINITIONS.unregister("x" * 64)


# ---------------------------------------------------- 12. one accumulator, threads


def test_one_accumulator_updated_from_eight_threads_loses_nothing():
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)) for _ in range(200)
    ]
    shared = FVUAccumulator(["fvu_a", "fvu_b"])

    def work(part):
        for xb, hb in part:
            shared.update(xb, hb)

    threads = [threading.Thread(target=work, args=(batches[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shared.n_batches == 200 and shared.n_tokens == 6400
    x = torch.cat([b[0] for b in batches]).double().numpy()
    xh = torch.cat([b[1] for b in batches]).double().numpy()
    from refs import ref_fvu

    assert shared.compute()["fvu_a"] == pytest.approx(ref_fvu(x, xh, "fvu_a"), rel=1e-12)


# ------------------------------------------------------------- 13. clearer errors


def test_clear_errors_and_accepted_inputs():
    with pytest.raises(ValueError, match="x is a scalar"):
        fp.fvu(torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"1-D.*reshape\(1, -1\)"):
        fp.fvu(torch.randn(5), torch.randn(5))
    big = torch.full((4, 3), 1e200, dtype=torch.float64)
    big[0, 0] = -1e200
    with pytest.raises(ValueError, match=r"Values up to 1e\+200.*overflow float64"):
        fp.fvu(big, big * 0.5)
    x = torch.randn(50, 4)
    # mixed float dtypes are accepted: both are promoted to float64 exactly
    assert fp.fvu(x.half(), x.float(), "fvu_a") == pytest.approx(
        float(
            ((x.half().double() - x.double()) ** 2).sum()
            / ((x.half().double() - x.half().double().mean(0)) ** 2).sum()
        ),
        rel=1e-9,
    )
    acc = FVUAccumulator([fp.DEFINITIONS["fvu_b"], "fvu_a"])
    assert acc.names == ["fvu_b", "fvu_a"]
    streaming = [n for n in fp.DEFINITIONS if fp.DEFINITIONS[n].streamable]
    assert list(FVUAccumulator("all").names) == streaming == fp.DEFINITIONS.resolve("all")


# --------------------------------------------------------------- 14. new preset


def test_pooled_residual_centred_preset_matches_sklearn_and_torchmetrics_formula():
    from sklearn.metrics import explained_variance_score

    g = torch.Generator().manual_seed(1)
    x = 5 + torch.randn(300, 6, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, 6)
    xh = x + 0.3 + 0.4 * torch.randn(300, 6, generator=g, dtype=torch.float64)  # biased
    want = explained_variance_score(x.numpy(), xh.numpy(), multioutput="variance_weighted")
    assert fp.explained_variance(x, xh, "fvu_a_evs") == pytest.approx(want, rel=1e-12)
    assert fp.explained_variance(x, xh, "fvu_a") < want  # fvu_a charges the bias
    assert np.isfinite(want)
