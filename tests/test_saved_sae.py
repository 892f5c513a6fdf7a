"""Saved SAEs on disk: nothing the package did not write is deleted or overwritten, an
overwrite replaces only the SAE's own files, and a saved SAE with non-finite weights is
refused at load. Real SAELens SAEs and the ``sae-fvu`` command line."""

from __future__ import annotations

import pytest
import torch
from tiny import standard_sae

from sae_fvu_plugin.cli import main
from sae_fvu_plugin.clustering import fit_kmeans
from sae_fvu_plugin.sae_io import SavedSAEError, load_saved_sae, save_sae


def test_a_folder_with_other_files_is_refused_and_left_as_it_was(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "data").mkdir()
    sae = fit_kmeans(torch.randn(200, 8), 4, n_iter=2, progress=False)
    for target in (tmp_path, tmp_path / "."):
        with pytest.raises(SavedSAEError, match="non-empty folder that holds no saved SAE"):
            sae.save_model(target)
        with pytest.raises(SavedSAEError, match="non-empty folder"):
            sae.save_model(target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_overwrite_replaces_only_the_sae_files(tmp_path):
    first = standard_sae(seed=1)
    save_sae(first, tmp_path / "sae")
    (tmp_path / "sae" / "eval_results.json").write_text("{}")  # written by someone else
    second = standard_sae(seed=2)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_sae(second, tmp_path / "sae")
    save_sae(second, tmp_path / "sae", overwrite=True)
    assert (tmp_path / "sae" / "eval_results.json").read_text() == "{}"
    back = load_saved_sae(tmp_path / "sae")
    assert torch.equal(back.W_dec, second.W_dec) and not torch.equal(back.W_dec, first.W_dec)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


@pytest.mark.parametrize("param, value", [("W_enc", float("nan")), ("b_dec", float("inf"))])
def test_non_finite_weights_are_refused_at_load(tmp_path, param, value):
    sae = standard_sae(seed=3)
    with torch.no_grad():
        getattr(sae, param).view(-1)[0] = value
    save_sae(sae, tmp_path / "bad")
    with pytest.raises(SavedSAEError, match=f"{param} holds 1 NaN/inf"):
        load_saved_sae(tmp_path / "bad")


def test_fit_refuses_a_non_sae_output_folder_before_any_work(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    argv = ["fit", "--hook", "blocks.3.hook_resid_post", "--n-clusters", "4", "--out"]
    with pytest.raises(SystemExit) as err:
        main([*argv, str(tmp_path)])
    assert err.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error:") and "non-empty folder" in line and "\n" not in line
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
