"""What a result JSON claims: NaN explained variance is saved as null with its reason
(never SAEBench's -1 placeholder), an interval from fewer than two eval contexts or from
non-finite replicates is null plus a warning (never zero-width), and ``sae-fvu compare``
refuses such results. Real SAEBench core eval on the tiny random model."""

from __future__ import annotations

import json

import pytest
from tiny import CTX, SPECIAL, standard_sae, tiny_dataset, tiny_model

from sae_fvu_plugin import FVUWarning
from sae_fvu_plugin import saebench as fsb
from sae_fvu_plugin.cli import main


def run(tmp_path, name, **fields):
    model, ds = tiny_model(offset=2.0, seed=7), tiny_dataset(seed=7)
    cfg = fsb.core_eval_config(
        n_eval_batches=fields.pop("n_eval_batches", 2),
        n_reconstruction_batches=1,
        batch_size_prompts=fields.pop("batch_size_prompts", 4),
        context_size=CTX,
        explained_variance_report=["fvu_b"],
        explained_variance_bootstrap=fields.pop("bootstrap", 20),
        **fields,
    )
    out = tmp_path / f"{name}.json"
    res = fsb.run_core_eval(
        standard_sae(seed=7), model, ds, cfg, ignore_tokens=set(SPECIAL), out_json=out
    )
    saved = json.loads(out.read_text())["eval_result_metrics"]["reconstruction_quality"]
    return res["metrics"]["reconstruction_quality"], saved, str(out)


def test_nan_explained_variance_is_saved_as_null_with_the_reason(tmp_path, capsys):
    with pytest.warns(FVUWarning, match="left out every"):
        _, saved, path = run(tmp_path, "none", explained_variance_exclude_norm_above=1e-6)
    assert saved["explained_variance"] is None
    assert saved["explained_variance_by_definition"] == {"fvu_a": None, "fvu_b": None}
    assert "left out every evaluated token" in saved["explained_variance_note"]
    assert -1 not in saved["explained_variance_by_definition"].values()
    _, _, good = run(tmp_path, "good")
    with pytest.raises(SystemExit) as err:
        main(["compare", good, path])
    assert err.value.code == 2
    assert "not a finite number" in capsys.readouterr().err


def test_one_eval_context_gives_no_interval_and_a_warning(tmp_path):
    with pytest.warns(FVUWarning, match="no interval for fvu_a: 1 resampling unit"):
        rq, saved, _ = run(tmp_path, "one", n_eval_batches=1, batch_size_prompts=1)
    assert rq["explained_variance_ci"] == {"fvu_a": None, "fvu_b": None}
    assert saved["explained_variance_ci"] == {"fvu_a": None, "fvu_b": None}
    assert "1 resampling unit" in saved["explained_variance_ci_note"]["fvu_a"]
    assert isinstance(saved["explained_variance"], float)  # the estimate itself stands


def test_replicates_that_drew_no_context_are_left_out_not_fatal(tmp_path):
    """Two eval contexts: each Poisson replicate draws neither with probability e^-2 (27 of
    200 expected). Those replicates are undefined (saved null) and counted; the interval is
    estimate ± z·sd of the others, as the conditional Poisson bootstrap has it."""
    from statistics import NormalDist, stdev

    rq, saved, _ = run(tmp_path, "two", n_eval_batches=1, batch_size_prompts=2, bootstrap=200)
    reps = saved["explained_variance_replicates"]["fvu_a"]
    empty = saved["explained_variance_provenance"]["fvu_a"]["empty_replicates"]
    assert 10 < empty == reps.count(None) < 50
    assert not saved.get("explained_variance_ci_note")
    finite = [v for v in reps if v is not None]
    half = NormalDist().inv_cdf(0.975) * stdev(finite)
    ev = saved["explained_variance_by_definition"]["fvu_a"]
    assert saved["explained_variance_ci"]["fvu_a"] == pytest.approx([ev - half, ev + half])
    assert half > 0


@pytest.mark.parametrize(
    "field, value, match",
    [
        (
            "explained_variance_seed",
            -1,
            r"explained_variance_seed must be an int in \[0, 2\*\*63\)",
        ),
        ("explained_variance_seed", 2**70, "explained_variance_seed must be an int"),
        ("explained_variance_bootstrap", 1, "0 \\(no intervals\\) or an int ≥ 2"),
    ],
)
def test_bootstrap_settings_are_checked_when_the_config_is_built(field, value, match):
    with pytest.raises(ValueError, match=match):
        fsb.FVUCoreEvalConfig(**{field: value})
