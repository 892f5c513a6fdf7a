"""``sae-fvu compare``: a paired difference is printed only for two finite results on the
same units; every refusal is one line naming the field or the difference, exit status 2."""

from __future__ import annotations

import json

import pytest
from conftest import fake_result

from sae_fvu_plugin.cli import main, run


def refused(capsys, a, b, match):
    with pytest.raises(SystemExit) as err:
        main(["compare", a, b])
    assert err.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert match in lines[0], lines[0]


def write(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


GOOD = dict(ev=0.8, reps=[0.79, 0.8, 0.81])
CASES = [
    ("not json", lambda p: write(p, "{oops"), "is not JSON"),
    ("a list at top level", lambda p: write(p, [1, 2]), "holds a JSON list"),
    ("an experiment results.json", lambda p: write(p, {"rows": []}), "experiment's results.json"),
    (
        "no plugin output",
        lambda p: write(p, {"eval_result_metrics": {}}),
        "not written with the plugin",
    ),
    (
        "string replicates",
        lambda p: fake_result(p, 0.7, ["a", "b", "c"]),
        "must be a list of numbers",
    ),
    (
        "NaN estimate",
        lambda p: fake_result(p, float("nan"), [0.7, 0.7, 0.7]),
        "not a finite number",
    ),
    ("NaN replicates", lambda p: fake_result(p, 0.7, [0.7, float("nan"), 0.7]), "not all finite"),
    ("one replicate", lambda p: fake_result(p, 0.7, [0.7]), "fewer than 2"),
    (
        "other units",
        lambda p: fake_result(p, 0.7, [0.7, 0.69, 0.72], units_fingerprint="cd"),
        "units_fingerprint differs",
    ),
    (
        "no provenance",
        lambda p: fake_result(p, 0.7, [0.7, 0.69, 0.72], seed=None),
        "seed is not recorded",
    ),
    (
        "a bad level",
        lambda p: fake_result(p, 0.7, [0.7, 0.69, 0.72], level=95),
        "ci_level must be in (0, 1)",
    ),
]


@pytest.mark.parametrize("name, make_b, match", CASES, ids=[c[0] for c in CASES])
def test_every_refusal_is_one_line(tmp_path, capsys, name, make_b, match):
    a = fake_result(tmp_path / "a.json", **GOOD)
    refused(capsys, a, make_b(tmp_path / "b.json"), match)


def test_intervals_are_labelled_with_their_own_levels(tmp_path, capsys):
    a = fake_result(tmp_path / "a.json", **GOOD)
    b = fake_result(tmp_path / "b.json", 0.7, [0.70, 0.69, 0.72], level=0.99)
    out = run(["compare", a, b])
    printed = capsys.readouterr().out
    assert "A 95%, B 99%" in printed
    lo, hi, est = out["fvu_a"]
    diffs = [0.79 - 0.70, 0.8 - 0.69, 0.81 - 0.72]
    mean = sum(diffs) / 3
    sd = (sum((d - mean) ** 2 for d in diffs) / 2) ** 0.5
    assert est == pytest.approx(0.1) and hi - est == pytest.approx(1.959964 * sd, rel=1e-5)


def test_evals_of_different_text_with_equal_counts_are_not_paired(tmp_path, capsys):
    """Two SAEBench evals of the same SAE on different text (same token and batch counts,
    same seed, same context numbering) print no paired difference."""
    from tiny import CTX, SPECIAL, standard_sae, tiny_dataset, tiny_model

    from sae_fvu_plugin import saebench as fsb

    model = tiny_model(offset=2.0, seed=3)
    cfg = fsb.core_eval_config(
        n_eval_batches=2,
        n_reconstruction_batches=1,
        batch_size_prompts=4,
        context_size=CTX,
        explained_variance_bootstrap=20,
    )
    paths = []
    for seed in (3, 4):
        out = tmp_path / f"text{seed}.json"
        fsb.run_core_eval(
            standard_sae(seed=1),
            model,
            tiny_dataset(seed=seed),
            cfg,
            ignore_tokens=set(SPECIAL),
            out_json=out,
        )
        paths.append(str(out))
    provs = [
        json.loads(open(p).read())["eval_result_metrics"]["reconstruction_quality"][
            "explained_variance_provenance"
        ]["fvu_a"]
        for p in paths
    ]
    assert provs[0]["batches"] == provs[1]["batches"] and provs[0]["seed"] == provs[1]["seed"]
    assert provs[0]["tokens_fingerprint"] != provs[1]["tokens_fingerprint"]
    assert provs[0]["hook"] == "blocks.0.hook_resid_post"
    refused(capsys, paths[0], paths[1], "tokens_fingerprint differs")
