"""Saved SAEs on disk, in SAELens's format (``cfg.json`` + ``sae_weights.safetensors``):
the one way the package writes, reads and checks them.

* :func:`save_sae` never deletes what the package did not write: a non-empty folder that
  holds no saved SAE is refused; ``overwrite=True`` replaces only the SAE's own files, each
  written to a temporary sibling first and then renamed into place.
* :func:`load_saved_sae` loads any registered architecture (import
  :mod:`sae_fvu_plugin.clustering` first for the clustering ones), refuses non-finite
  weights and a width other than the hook's, and standardises the cfg for SAEBench.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .validate import UsageError

SAE_FILES = ("cfg.json", "sae_weights.safetensors")


class SavedSAEError(UsageError):
    """A saved SAE that cannot be written or read as asked (the message says why)."""


class SAEExistsError(SavedSAEError, FileExistsError):
    """The target folder already holds a saved SAE, or other files."""


class SAENotFoundError(SavedSAEError, FileNotFoundError):
    """The folder holds no saved SAE."""


def check_save_target(folder: str | Path, *, overwrite: bool = False) -> Path:
    """``folder`` if an SAE may be saved there (before any work is done): new, empty, or
    holding a saved SAE with ``overwrite``, and writable. Otherwise :class:`SavedSAEError`."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise SavedSAEError(f"{path} is a file, not a folder; choose a folder for the SAE.")
    if path.is_dir():
        if (path / "cfg.json").exists():
            if not overwrite:
                raise SAEExistsError(
                    f"{path} already holds a saved SAE; pass overwrite=True (--overwrite) to "
                    "replace it, or choose another folder."
                )
        elif any(path.iterdir()):
            raise SAEExistsError(
                f"{path} is a non-empty folder that holds no saved SAE; nothing in it was "
                "touched. Choose a new or empty folder for the SAE."
            )
    parent = _existing_parent(path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SavedSAEError(f"cannot write to {parent} (permission denied); choose another folder.")
    return path


def _existing_parent(path: Path) -> Path:
    p = path if path.is_dir() else path.parent
    while not p.exists():
        p = p.parent
    return p


def save_sae(sae: Any, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Save ``sae`` (any SAELens SAE) into ``folder`` as described in the module docstring;
    returns the folder."""
    from sae_lens import SAE

    path = check_save_target(folder, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp"))
    try:
        SAE.save_model(sae, tmp)
        if not path.exists():
            os.replace(tmp, path)
        else:
            names = sorted(f.name for f in tmp.iterdir())
            # weights first: a crash between the renames leaves the old cfg.json, which
            # the weights' shapes then contradict (refused at load), never a silent mix
            for name in sorted(names, key=lambda n: n == "cfg.json"):
                os.replace(tmp / name, path / name)
    except OSError as err:
        raise SavedSAEError(
            f"could not save the SAE to {path}: {err.strerror or err}. Nothing there was "
            "changed; free space or choose another folder."
        ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def read_saved_cfg(folder: str | Path) -> dict[str, Any]:
    """cfg.json of a saved SAE, or a :class:`SavedSAEError` saying what the folder lacks."""
    path = Path(folder)
    if not path.is_dir():
        raise SAENotFoundError(
            f"{path} is not a folder with cfg.json; give the folder of a saved SAE."
        )
    cfg = path / "cfg.json"
    if not all((path / f).is_file() for f in SAE_FILES):
        raise SAENotFoundError(
            f"{path} is not a saved SAE (it needs cfg.json and sae_weights.safetensors, as "
            "`sae-fvu fit` or sae.save_model(path) write)."
        )
    try:
        data = json.loads(cfg.read_text())
    except json.JSONDecodeError as err:
        raise SavedSAEError(f"{cfg} is not valid JSON ({err}); re-fit or restore it.") from None
    if not isinstance(data, dict):
        raise SavedSAEError(f"{cfg} does not hold an SAE config (a JSON object).")
    return data


def check_finite_weights(sae: Any, where: str) -> None:
    """Every parameter of ``sae`` finite, else a :class:`SavedSAEError` naming it."""
    import torch

    for name, p in sae.named_parameters():
        if not bool(torch.isfinite(p).all()):
            bad = int((~torch.isfinite(p)).sum())
            raise SavedSAEError(
                f"{where}: parameter {name} holds {bad} NaN/inf value(s); the SAE would "
                "output non-finite reconstructions. Re-fit or restore it."
            )


def load_saved_sae(
    folder: str | Path,
    *,
    device: str = "cpu",
    expected_d_in: int | None = None,
    standardize: bool = True,
) -> Any:
    """Any SAELens SAE saved in ``folder``, checked (files, JSON, finite weights, width
    ``expected_d_in``) and, with ``standardize``, its cfg standardised for SAEBench."""
    from sae_lens import SAE

    read_saved_cfg(folder)
    try:
        sae = SAE.load_from_disk(folder, device=device)
    except Exception as err:
        raise SavedSAEError(
            f"Could not load the SAE at {folder}: {type(err).__name__}: {err}. The files look "
            "corrupt, truncated or of another architecture; re-fit or restore them."
        ) from None
    check_finite_weights(sae, str(folder))
    if expected_d_in is not None and sae.cfg.d_in != expected_d_in:
        raise SavedSAEError(
            f"The SAE at {folder} has d_in={sae.cfg.d_in} but the hook "
            f"{sae.cfg.metadata.hook_name!r} has width {expected_d_in}; it was fitted on "
            "another model or hook. Evaluate it on the hook it was fitted on."
        )
    if standardize and sae.cfg.metadata.hook_name is not None:
        from sae_bench.sae_bench_utils.general_utils import _standardize_sae_cfg

        _standardize_sae_cfg(sae.cfg)
    return sae


def load_registry_sae(release: str, sae_id: str, device: str) -> Any:
    """A SAELens registry SAE (``SAE.from_pretrained``); needs the Hugging Face hub."""
    from sae_bench.sae_bench_utils.general_utils import _standardize_sae_cfg
    from sae_lens import SAE

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise SavedSAEError(
            f"{release}/{sae_id} is a SAELens registry SAE, which is downloaded from the "
            "Hugging Face hub, and HF_HUB_OFFLINE=1 is set. Unset it where the hub is "
            "reachable, or evaluate a local SAE folder."
        )
    try:
        sae = SAE.from_pretrained(release, sae_id, device=device)
    except Exception as err:
        raise SavedSAEError(
            f"Could not load {release}/{sae_id}: {type(err).__name__}: {err}"
        ) from None
    _standardize_sae_cfg(sae.cfg)
    return sae
