"""The patched upstream releases against the plugin, on the same tiny model and tokens.

Run by `make patches-check` in the scratch environment where sae_bench and sae_lens are
the patched trees (scripts/patches.py check); it refuses to run against stock releases.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from sae_bench.evals.core import main as core
from sae_bench.evals.core.eval_config import CoreEvalConfig
from sae_lens import evals as lens_evals
from sae_lens.training.activation_scaler import ActivationScaler
from tiny import SPECIAL, collect, make_store, standard_sae, tiny_dataset, tiny_model

import sae_fvu_plugin as fp

DEFINITIONS = ["fvu_a", "fvu_b", "fvu_per_dim"]
N_BATCHES = 3


def test_running_against_patched_upstream():
    assert os.environ.get("SAE_FVU_PATCHED_UPSTREAM") == "1", "run via scripts/patches.py check"
    assert "explained_variance_definition" in CoreEvalConfig.__dataclass_fields__
    assert "explained_variance_definition" in {
        f.name for f in dataclasses.fields(lens_evals.EvalConfig)
    }


@pytest.fixture(scope="module")
def setup():
    model, ds = tiny_model(offset=3.0, seed=2), tiny_dataset(seed=2)
    sae = standard_sae(seed=6)
    x, keep, ids = collect(model, sae, ds, N_BATCHES)
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    return model, ds, sae, (x, x_hat, keep, ids)


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_patched_saebench_equals_plugin(setup, definition):
    model, ds, sae, (x, x_hat, keep, ids) = setup
    config = CoreEvalConfig(
        compute_variance_metrics=True,
        batch_size_prompts=4,
        n_eval_sparsity_variance_batches=N_BATCHES,
        explained_variance_definition=definition,
    )
    metrics, _ = core.run_evals(
        sae, make_store(model, sae, ds), model, config, ignore_tokens=set(SPECIAL)
    )
    quality = metrics["reconstruction_quality"]
    want = fp.explained_variance(x, x_hat, definition, mask=keep, batch_ids=ids)
    assert quality["explained_variance_definition"] == definition
    assert quality["explained_variance"] == pytest.approx(want, rel=1e-9, abs=1e-12)
    # mse is now the per-token mean of ||x - x_hat||^2
    per_token = (x - x_hat).double().pow(2).sum(-1)[keep].mean().item()
    assert quality["mse"] == pytest.approx(per_token, rel=1e-5)


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_patched_saelens_equals_plugin(setup, definition):
    model, ds, sae, (x, x_hat, keep, ids) = setup
    config = lens_evals.EvalConfig(
        batch_size_prompts=4,
        n_eval_sparsity_variance_batches=N_BATCHES,
        compute_variance_metrics=True,
        explained_variance_definition=definition,
    )
    metrics, _ = lens_evals.run_evals(
        sae,
        make_store(model, sae, ds),
        model,
        ActivationScaler(),
        config,
        exclude_special_tokens=list(SPECIAL),
    )
    quality = metrics["reconstruction_quality"]
    want = fp.explained_variance(x, x_hat, definition, mask=keep, batch_ids=ids)
    assert quality["explained_variance_definition"] == definition
    assert quality["explained_variance"] == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_mean_predictor_is_zero_in_patched_saebench(setup):
    from tiny import ConstantSAE, _standardize_sae_cfg

    model, ds, _, (x, _, keep, _) = setup
    sae = ConstantSAE(x[keep].double().mean(0).float())
    _standardize_sae_cfg(sae.cfg)
    config = CoreEvalConfig(
        compute_variance_metrics=True,
        batch_size_prompts=4,
        n_eval_sparsity_variance_batches=N_BATCHES,
    )
    metrics, _ = core.run_evals(
        sae, make_store(model, sae, ds), model, config, ignore_tokens=set(SPECIAL)
    )
    assert abs(metrics["reconstruction_quality"]["explained_variance"]) < 1e-6
