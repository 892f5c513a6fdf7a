"""SAEBench's own run_evals with the plugin: real SAEBench, tiny random model, offline."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pydantic import ValidationError
from refs import ref_fvu
from sae_bench.evals.core import main as core
from sae_bench.evals.core.eval_config import CoreEvalConfig
from tiny import (
    CTX,
    SPECIAL,
    ConstantSAE,
    _standardize_sae_cfg,
    collect,
    identity_sae,
    make_store,
    standard_sae,
    tiny_dataset,
    tiny_model,
)

import sae_fvu_plugin as fp
from sae_fvu_plugin import saebench as fsb


def reference(x, x_hat, keep, ids, names=None):
    """{name: FVU} from the independent float64 numpy references on the kept tokens."""
    xs = x[keep].double().numpy()
    hs = x_hat[keep].double().numpy()
    bs = ids[keep].numpy()
    names = names or [n for n in fp.DEFINITIONS.presets]
    return {n: ref_fvu(xs, hs, n, bs) for n in names}


N_BATCHES = 3


@pytest.fixture(autouse=True)
def _stock_afterwards():
    yield
    fsb.disable()


@pytest.fixture(scope="module")
def offset_model():
    return tiny_model(offset=3.0)


@pytest.fixture(scope="module")
def ds():
    return tiny_dataset()


def cfg(**kw) -> fsb.FVUCoreEvalConfig:
    base = dict(
        compute_variance_metrics=True,
        compute_sparsity_metrics=True,
        batch_size_prompts=4,
        n_eval_sparsity_variance_batches=N_BATCHES,
        context_size=CTX,
    )
    return fsb.FVUCoreEvalConfig(**(base | kw))


def run(model, sae, ds, config, ignore=SPECIAL):
    store = make_store(model, sae, ds)
    return core.run_evals(sae, store, model, config, ignore_tokens=set(ignore))


# ---------------------------------------------------------------------------- config


def test_config_defaults_validation_and_schema():
    c = fsb.FVUCoreEvalConfig()
    assert c.explained_variance_definition == "fvu_a" and c.explained_variance_report == []
    assert isinstance(c, CoreEvalConfig)
    with pytest.raises(
        ValidationError, match="Unknown explained-variance definition 'fvu_z'.*fvu_a, fvu_b"
    ):
        fsb.FVUCoreEvalConfig(explained_variance_definition="fvu_z")
    with pytest.raises(ValidationError, match="nope"):
        fsb.FVUCoreEvalConfig(explained_variance_report=["fvu_b", "nope"])
    assert fsb.FVUCoreEvalConfig(explained_variance_report=["all"]).explained_variance_report == [
        "all"
    ]
    from pydantic import TypeAdapter

    props = TypeAdapter(fsb.FVUCoreEvalConfig).json_schema()["properties"]
    assert props["explained_variance_definition"]["examples"] == list(fp.DEFINITIONS.presets)
    assert "Explained Variance Definition" == props["explained_variance_definition"]["title"]


def test_shipped_output_schema_is_current():
    shipped = json.loads(fsb.SCHEMA_PATH.read_text())
    assert shipped == json.loads(json.dumps(fsb.output_json_schema()))
    rq = shipped["$defs"]["FVUReconstructionQualityMetrics"]["properties"]
    assert {"explained_variance_definition", "explained_variance_by_definition"} <= set(rq)


def test_enable_is_explicit_idempotent_and_reversible():
    stock = (core.run_evals, core.get_sparsity_and_variance_metrics, core.CoreEvalOutput)
    assert not fsb.is_enabled()  # importing did nothing
    fsb.enable()
    fsb.enable()
    assert core.run_evals is not stock[0]
    fsb.disable()
    fsb.disable()
    assert (core.run_evals, core.get_sparsity_and_variance_metrics, core.CoreEvalOutput) == stock
    with fsb.enabled():
        assert fsb.is_enabled()
    assert core.run_evals is stock[0]
    with pytest.raises(fp.UnknownDefinitionError):
        fsb.enable("no_such_definition")
    assert not fsb.is_enabled()


# ------------------------------------------------------------------- known answers


def test_mean_sae_scores_zero_and_stock_does_not(offset_model, ds):
    """An SAE whose decode returns the exact mean of the evaluated activations explains
    nothing: fvu_a explained variance 0. Stock SAEBench 0.6.0 credits it with ~1."""
    x, keep, _ = collect(offset_model, standard_sae(), ds, N_BATCHES)
    sae = ConstantSAE(x[keep].double().mean(0).float())
    _standardize_sae_cfg(sae.cfg)
    stock, _ = run(offset_model, sae, ds, cfg())
    with fsb.enabled():
        fixed, _ = run(offset_model, sae, ds, cfg())
    stock_ev = stock["reconstruction_quality"]["explained_variance"]
    ev = fixed["reconstruction_quality"]["explained_variance"]
    assert abs(ev) < 1e-6
    assert stock_ev > 0.5  # the bug: far from the truth (0)
    assert fixed["reconstruction_quality"]["explained_variance_definition"] == "fvu_a"


def test_identity_sae_scores_one(offset_model, ds):
    with fsb.enabled():
        m, _ = run(offset_model, identity_sae(), ds, cfg(explained_variance_report=["all"]))
    assert m["reconstruction_quality"]["explained_variance"] == 1.0
    assert set(m["reconstruction_quality"]["explained_variance_by_definition"].values()) == {1.0}


# ------------------------------------------------------------ equality with fvu()


@pytest.mark.parametrize("kind", ["saelens_standard", "saebench_constant"])
def test_loop_equals_functional_for_every_definition(offset_model, ds, kind):
    if kind == "saelens_standard":
        sae = standard_sae(seed=3)
    else:
        sae = ConstantSAE(torch.linspace(-1, 1, 64))
        _standardize_sae_cfg(sae.cfg)
    x, keep, ids = collect(offset_model, sae, ds, N_BATCHES)
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    want = reference(x, x_hat, keep, ids)
    with fsb.enabled():
        m, _ = run(offset_model, sae, ds, cfg(explained_variance_report=["all"]))
    got = m["reconstruction_quality"]["explained_variance_by_definition"]
    assert list(got)[0] == "fvu_a"
    for name, value in got.items():
        if name == "saebench_0_6":
            # SAEBench's own float32 number; our float64 reproduction agrees closely
            assert value == pytest.approx(1 - want[name], rel=1e-4)
        else:
            assert value == pytest.approx(1 - want[name], rel=1e-9, abs=1e-12), name
    assert set(got) == set(want)


def test_selected_definition_and_saebench_0_6_reproduces_stock(offset_model, ds):
    sae = standard_sae(seed=5)
    stock, _ = run(offset_model, sae, ds, cfg())
    with fsb.enabled():
        b, _ = run(offset_model, sae, ds, cfg(explained_variance_definition="fvu_b"))
        old, _ = run(offset_model, sae, ds, cfg(explained_variance_definition="saebench_0_6"))
    rq = b["reconstruction_quality"]
    assert rq["explained_variance_definition"] == "fvu_b"
    assert list(rq["explained_variance_by_definition"]) == ["fvu_b"]
    # fvu_b is SAEBench's legacy value (float64 here, float32 there)
    assert rq["explained_variance"] == pytest.approx(rq["explained_variance_legacy"], rel=1e-5)
    assert (
        old["reconstruction_quality"]["explained_variance"]
        == stock["reconstruction_quality"]["explained_variance"]
    )


def test_float64_reproduction_of_stock_formula(offset_model, ds):
    """Our saebench_0_6 formula against the real SAEBench function on the same batches."""
    sae = standard_sae(seed=7)
    stock, _ = run(offset_model, sae, ds, cfg())
    x, keep, ids = collect(offset_model, sae, ds, N_BATCHES)
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    ours = 1 - reference(x, x_hat, keep, ids, ["saebench_0_6"])["saebench_0_6"]
    assert ours == pytest.approx(stock["reconstruction_quality"]["explained_variance"], rel=1e-5)
    # and the plugin's own float64 formula agrees with the reference
    plugin = fp.explained_variance(x, x_hat, "saebench_0_6", mask=keep, batch_ids=ids)
    assert plugin == pytest.approx(ours, rel=1e-9)


# ------------------------------------------------------------- nothing else changes


def test_every_other_metric_bit_identical(offset_model, ds):
    everything = cfg(
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_featurewise_density_statistics=True,
        compute_featurewise_weight_based_metrics=True,
        n_eval_reconstruction_batches=2,
        explained_variance_report=["all"],
    )
    sae = standard_sae(seed=11)
    stock_m, stock_f = run(offset_model, sae, ds, everything)
    with fsb.enabled():
        m, f = run(offset_model, sae, ds, everything)
    assert set(f) == set(stock_f)
    for key in f:  # bit-identical, NaN where stock has NaN (dead latents)
        torch.testing.assert_close(
            torch.tensor(f[key]), torch.tensor(stock_f[key]), rtol=0, atol=0, equal_nan=True
        )
    assert set(m) == set(stock_m)
    for group, values in stock_m.items():
        for key, value in values.items():
            if group == "reconstruction_quality" and key == "explained_variance":
                continue
            assert m[group][key] == value or (math.isnan(value) and math.isnan(m[group][key])), key
    added = set(m["reconstruction_quality"]) - set(stock_m["reconstruction_quality"])
    assert added == {
        "explained_variance_definition",
        "explained_variance_by_definition",
        "explained_variance_excluded_tokens",
        "explained_variance_provenance",
        "explained_variance_ci",
        "explained_variance_replicates",
        "explained_variance_ci_level",
        "explained_variance_bootstrap",
        "explained_variance_bootstrap_seed",
    }


def test_stock_config_gets_plugin_default(offset_model, ds):
    stock_cfg = CoreEvalConfig(
        compute_variance_metrics=True,
        batch_size_prompts=4,
        n_eval_sparsity_variance_batches=N_BATCHES,
    )
    sae = standard_sae(seed=2)
    with fsb.enabled():
        a, _ = run(offset_model, sae, ds, stock_cfg)
    with fsb.enabled(default_definition="fvu_per_dim", default_report=["fvu_b"]):
        p, _ = run(offset_model, sae, ds, stock_cfg)
    assert a["reconstruction_quality"]["explained_variance_definition"] == "fvu_a"
    assert list(p["reconstruction_quality"]["explained_variance_by_definition"]) == [
        "fvu_per_dim",
        "fvu_b",
    ]


# ------------------------------------------------------------------------ hooks


def test_head_indexed_and_hook_z(offset_model, ds):
    model = offset_model
    d_head = model.cfg.d_head
    cases = [
        standard_sae(d_in=model.cfg.n_heads * d_head, hook="blocks.0.attn.hook_z", seed=1),
        standard_sae(d_in=d_head, hook="blocks.0.attn.hook_q", seed=2, head_index=1),
    ]
    for sae in cases:
        x, keep, ids = collect(model, sae, ds, N_BATCHES)
        with torch.no_grad():
            x_hat = sae.decode(sae.encode(x))
        with fsb.enabled():
            m, _ = run(model, sae, ds, cfg(explained_variance_report=["fvu_b"]))
        got = m["reconstruction_quality"]["explained_variance_by_definition"]
        want = reference(x, x_hat, keep, ids, ["fvu_a", "fvu_b"])
        for name in ("fvu_a", "fvu_b"):
            assert got[name] == pytest.approx(1 - want[name], rel=1e-9), (sae.cfg.hook_name, name)


# ---------------------------------------------------------------------- bad input


def test_nan_activations_are_nan_with_a_warning_and_lose_nothing(ds):
    model = tiny_model()
    with torch.no_grad():
        model.embed.W_E[5:40, 3] = float("nan")
    stock, _ = run(model, identity_sae(), ds, cfg())
    with (
        fsb.enabled(),
        pytest.warns(fp.FVUWarning, match=r"eval batch 1: \d+ NaN/inf entries in x"),
    ):
        m, _ = run(model, identity_sae(), ds, cfg(explained_variance_report=["fvu_b"]))
    rq = m["reconstruction_quality"]
    assert math.isnan(rq["explained_variance"])
    assert all(math.isnan(v) for v in rq["explained_variance_by_definition"].values())
    assert "NaN/inf" in rq["explained_variance_note"]
    assert set(m) == set(stock) and m["sparsity"].keys() == stock["sparsity"].keys()


# ---------------------------------------------------------------------- result JSON


def test_result_json_carries_definition(offset_model, ds, tmp_path):
    sae = standard_sae(seed=4)
    everything = cfg(
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_featurewise_density_statistics=True,
        compute_featurewise_weight_based_metrics=True,
        n_eval_reconstruction_batches=1,
        explained_variance_definition="fvu_b",
        explained_variance_report=["fvu_a", "fvu_per_dim"],
    )
    stock_cfg = CoreEvalConfig(
        **{k: getattr(everything, k) for k in CoreEvalConfig.__dataclass_fields__}
    )
    with fsb.enabled():
        for name, config in (("ext", everything), ("stock", stock_cfg)):
            metrics, feats = run(offset_model, sae, ds, config)
            metrics["misc_metrics"] = core.calculate_misc_metrics(feats)
            result = {
                "eval_cfg": config,
                "metrics": metrics,
                "feature_metrics": feats,
                "sae_set": "local",
                "sae_id": name,
            }
            core.save_single_eval_result(
                result, "run", "6.54.12", "n/a", str(tmp_path / f"{name}.json"), sae
            )
    ext = json.loads((tmp_path / "ext.json").read_text())
    assert ext["eval_config"]["explained_variance_definition"] == "fvu_b"
    assert ext["eval_config"]["explained_variance_report"] == ["fvu_a", "fvu_per_dim"]
    rq = ext["eval_result_metrics"]["reconstruction_quality"]
    assert rq["explained_variance_definition"] == "fvu_b"
    assert list(rq["explained_variance_by_definition"]) == ["fvu_b", "fvu_a", "fvu_per_dim"]
    assert rq["explained_variance"] == rq["explained_variance_by_definition"]["fvu_b"]
    st = json.loads((tmp_path / "stock.json").read_text())
    assert st["eval_config"]["explained_variance_definition"] == "fvu_a"  # recorded default
    assert (
        st["eval_result_metrics"]["reconstruction_quality"]["explained_variance_definition"]
        == "fvu_a"
    )


def test_cli_mirrors_saebench_arguments():
    stock = {a.dest for a in core.arg_parser()._actions}
    ours = fsb.arg_parser()
    added = {
        "explained_variance_definition",
        "explained_variance_report",
        "explained_variance_bootstrap",
        "explained_variance_ci_level",
    }
    assert stock | added == {a.dest for a in ours._actions}
    args = ours.parse_args(
        [
            "rel",
            "blk",
            "--explained_variance_definition",
            "fvu_b",
            "--explained_variance_report",
            "all",
        ]
    )
    assert args.explained_variance_definition == "fvu_b" and args.explained_variance_report == [
        "all"
    ]
    with pytest.raises(SystemExit):  # a misspelt definition is refused by the parser
        ours.parse_args(["rel", "blk", "--explained_variance_definition", "fvu_z"])


def test_exclude_norm_above_is_explicit_and_recorded(offset_model, ds, tmp_path):
    sae = standard_sae(seed=8)
    x, keep, ids = collect(offset_model, sae, ds, N_BATCHES)
    norms = x.double().norm(dim=-1)
    thr = float(norms[keep].quantile(0.9))
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    kept = keep & (norms <= thr)
    config = cfg(
        explained_variance_exclude_norm_above=thr,
        explained_variance_report=["all"],
        compute_l2_norms=True,
        compute_featurewise_density_statistics=True,
        compute_featurewise_weight_based_metrics=True,
    )
    with fsb.enabled():
        m, feats = run(offset_model, sae, ds, config)
        plain, _ = run(offset_model, sae, ds, cfg())
    rq = m["reconstruction_quality"]
    assert rq["explained_variance_excluded_tokens"] == int((keep & (norms > thr)).sum()) > 0
    assert plain["reconstruction_quality"]["explained_variance_excluded_tokens"] == 0
    want = reference(x, x_hat, kept, ids)
    for name, value in rq["explained_variance_by_definition"].items():
        assert value == pytest.approx(1 - want[name], rel=1e-9, abs=1e-12), name
    # other metrics still see every token
    assert (
        rq["explained_variance_legacy"]
        == plain["reconstruction_quality"]["explained_variance_legacy"]
    )
    with pytest.raises(ValidationError, match="positive number"):
        cfg(explained_variance_exclude_norm_above=-1.0)
    # SAEBench's saver needs KL/CE groups; give it a full run's groups
    with fsb.enabled():
        full, _ = run(
            offset_model,
            sae,
            ds,
            cfg(compute_kl=True, compute_ce_loss=True, n_eval_reconstruction_batches=1),
        )
    m["model_behavior_preservation"] = full["model_behavior_preservation"]
    m["model_performance_preservation"] = full["model_performance_preservation"]
    m["misc_metrics"] = core.calculate_misc_metrics(feats)
    result = {
        "eval_cfg": config,
        "metrics": m,
        "feature_metrics": feats,
        "sae_set": "local",
        "sae_id": "x",
    }
    path = tmp_path / "r.json"
    with fsb.enabled():
        core.save_single_eval_result(result, "run", "6.54.12", "n/a", str(path), sae)
    saved = json.loads(path.read_text())
    assert saved["eval_config"]["explained_variance_exclude_norm_above"] == thr
    assert (
        saved["eval_result_metrics"]["reconstruction_quality"]["explained_variance_excluded_tokens"]
        == rq["explained_variance_excluded_tokens"]
    )
