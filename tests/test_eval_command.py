"""``sae-fvu eval`` on a damaged saved SAE: every bad cfg.json is one line naming the field
and exit status 2, before the model is loaded."""

from __future__ import annotations

import json

import pytest
from tiny import standard_sae

from sae_fvu_plugin.cli import main
from sae_fvu_plugin.sae_io import save_sae

GOOD_PROVENANCE = dict(
    model_name="smollm2-135m",
    hook_name="blocks.0.hook_resid_post",
    dataset="austen",
    context_size=16,
    fit_contexts=[[0, 4]],
)


def edit(meta, key, value):
    if key == "metadata":
        return value
    if key == "hook_name" and value is None:
        return {k: v for k, v in meta.items() if k != "hook_name"}
    return meta | {key: value}


CASES = [
    (
        "unknown provenance key",
        "provenance",
        GOOD_PROVENANCE | {"colour": 1},
        "Unknown provenance keys",
    ),
    ("empty range", "provenance", GOOD_PROVENANCE | {"fit_contexts": [[5, 2]]}, "bad range [5, 2]"),
    ("string provenance", "provenance", "from my laptop", "provenance must be a JSON object"),
    ("non-integer context size", "context_size", "12x", "metadata.context_size must be an integer"),
    ("list metadata", "metadata", [1, 2], "metadata must be a JSON object"),
    ("no hook", "hook_name", None, "names no hook_name"),
]


@pytest.mark.parametrize("name, key, value, match", CASES, ids=[c[0] for c in CASES])
def test_a_damaged_cfg_json_is_one_line(tmp_path, capsys, name, key, value, match):
    folder = save_sae(standard_sae(seed=1), tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["metadata"] = edit(cfg["metadata"], key, value)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit) as err:
        main(["eval", str(folder), "--eval-batches", "1"])
    assert err.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert match in lines[0], lines[0]


def test_an_unwritable_output_json_is_refused_before_loading(tmp_path, capsys):
    folder = save_sae(standard_sae(seed=1), tmp_path / "sae")
    (tmp_path / "a_file").write_text("x")
    for target, match in [
        (tmp_path / "a_file" / "r.json", "is a file, so"),
        (tmp_path / "a_file" / "deeper" / "r.json", "is a file, so"),
    ]:
        with pytest.raises(SystemExit) as err:
            main(["eval", str(folder), "--output-json", str(target)])
        assert err.value.code == 2
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(lines) == 1 and match in lines[0], lines


def test_the_summary_leads_with_the_chosen_definition_and_its_interval():
    from sae_fvu_plugin.cli.eval import summary_lines

    metrics = {
        "reconstruction_quality": {
            "explained_variance_definition": "fvu_b",
            "explained_variance_by_definition": {"fvu_a": 0.5, "fvu_b": 0.75, "fvu_per_dim": None},
            "explained_variance_ci": {"fvu_a": None, "fvu_b": [0.7, 0.8], "fvu_per_dim": None},
            "explained_variance_ci_note": {"fvu_a": "1 resampling unit(s)"},
            "explained_variance_ci_level": 0.9,
            "explained_variance_provenance": {"fvu_b": {"tokens": 2048}},
            "cossim": 0.9,
            "mse": 0.25,
        },
        "sparsity": {"l0": 1.0},
    }
    lines = summary_lines(metrics)
    assert lines[0] == "explained variance (fvu_b) = 0.7500 [0.7000, 0.8000] 90% CI, 2,048 tokens"
    assert "0.5000 (no interval: 1 resampling unit(s))" in lines[1]
    assert "nan" in lines[2]
    assert lines[-1] == "SAEBench: L0 1, cossim 0.9, mse 0.25"
