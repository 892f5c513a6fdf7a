"""SAELens's own run_evals with the plugin: real SAELens, tiny random model, offline."""

from __future__ import annotations

import math

import pytest
import torch
from refs import ref_fvu
from sae_lens import evals
from sae_lens.training.activation_scaler import ActivationScaler
from tiny import SPECIAL, collect, make_store, standard_sae, tiny_dataset, tiny_model

import sae_fvu_plugin as fp
from sae_fvu_plugin import saelens as fsl


def ref_ev(x, x_hat, keep, ids, name):
    """1 − FVU from the independent float64 numpy reference on the kept tokens."""
    return 1 - ref_fvu(
        x[keep].double().numpy(), x_hat[keep].double().numpy(), name, ids[keep].numpy()
    )


N_BATCHES = 3


@pytest.fixture(autouse=True)
def _stock_afterwards():
    yield
    fsl.disable()


@pytest.fixture(scope="module")
def setup():
    model, ds = tiny_model(offset=2.0, seed=1), tiny_dataset(seed=1)
    sae = standard_sae(seed=9)
    x, keep, ids = collect(model, sae, ds, N_BATCHES)
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    return model, ds, sae, (x, x_hat, keep, ids)


def config(cls=evals.EvalConfig, **kw):
    return cls(
        batch_size_prompts=4,
        n_eval_sparsity_variance_batches=N_BATCHES,
        compute_variance_metrics=True,
        compute_sparsity_metrics=True,
        compute_l2_norms=True,
        compute_featurewise_density_statistics=True,
        **kw,
    )


def run(setup, cfg):
    model, ds, sae, _ = setup
    return evals.run_evals(
        sae,
        make_store(model, sae, ds),
        model,
        ActivationScaler(),
        cfg,
        exclude_special_tokens=list(SPECIAL),
    )


def test_saelens_own_numbers_are_fvu_a_and_fvu_b(setup):
    x, x_hat, keep, ids = setup[3]
    stock, _ = run(setup, config())
    rq = stock["reconstruction_quality"]
    assert rq["explained_variance"] == pytest.approx(ref_ev(x, x_hat, keep, ids, "fvu_a"), rel=1e-5)
    assert rq["explained_variance_legacy"] == pytest.approx(
        ref_ev(x, x_hat, keep, ids, "fvu_b"), rel=1e-5
    )


def test_enabled_reports_selected_definition_exactly(setup):
    x, x_hat, keep, ids = setup[3]
    want = {n: ref_ev(x, x_hat, keep, ids, n) for n in fp.DEFINITIONS.presets}
    stock, stock_f = run(setup, config())
    with fsl.enabled():
        m, f = run(
            setup,
            config(
                fsl.FVUEvalConfig,
                explained_variance_definition="fvu_b",
                explained_variance_report=["all"],
            ),
        )
        d, _ = run(setup, config())  # stock config → default fvu_a
    rq = m["reconstruction_quality"]
    assert rq["explained_variance_definition"] == "fvu_b"
    assert rq["explained_variance"] == pytest.approx(want["fvu_b"], rel=1e-9)
    for name, value in rq["explained_variance_by_definition"].items():
        assert value == pytest.approx(want[name], rel=1e-9, abs=1e-12), name
    assert d["reconstruction_quality"]["explained_variance"] == pytest.approx(
        want["fvu_a"], rel=1e-9
    )
    # every other metric bit-identical
    for group, values in stock.items():
        for key, value in values.items():
            if key != "explained_variance":
                assert m[group][key] == value or (math.isnan(value) and math.isnan(m[group][key]))
    for key in stock_f:
        torch.testing.assert_close(
            torch.tensor(f[key]), torch.tensor(stock_f[key]), rtol=0, atol=0, equal_nan=True
        )


def test_config_validation_and_reversibility():
    with pytest.raises(fp.UnknownDefinitionError, match="fvu_q"):
        fsl.FVUEvalConfig(explained_variance_definition="fvu_q")
    stock = (evals.run_evals, evals.ExplainedVarianceCalculator)
    fsl.enable()
    fsl.enable()
    assert evals.run_evals is not stock[0]
    fsl.disable()
    assert (evals.run_evals, evals.ExplainedVarianceCalculator) == stock


def test_exclude_norm_above(setup):
    x, x_hat, keep, ids = setup[3]
    norms = x.double().norm(dim=-1)
    thr = float(norms[keep].quantile(0.8))
    kept = keep & (norms <= thr)
    with fsl.enabled():
        m, _ = run(setup, config(fsl.FVUEvalConfig, explained_variance_exclude_norm_above=thr))
    rq = m["reconstruction_quality"]
    assert rq["explained_variance_excluded_tokens"] == int((keep & (norms > thr)).sum()) > 0
    assert rq["explained_variance"] == pytest.approx(ref_ev(x, x_hat, kept, ids, "fvu_a"), rel=1e-9)
