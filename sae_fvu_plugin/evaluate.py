"""``sae-fvu eval``: SAEBench's core eval of a saved SAE (a local SAELens folder — any
architecture, clustering SAEs included — or a SAELens registry release with ``--sae-id``,
which needs the hub), with the plugin reporting the chosen definitions and intervals.

For an SAE that records its provenance (every ``sae-fvu fit`` and experiment fit does),
the eval contexts are drawn disjoint from its fit contexts and the result JSON records
both and their overlap (0); without provenance a warning says overlap cannot be checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._cli import UsageError
from .clustering.cli import model_hook_width
from .options import EvalCommand


def read_saved_cfg(folder: str | Path) -> dict[str, Any]:
    """cfg.json of a saved SAE, or a ``UsageError`` saying what the folder lacks."""
    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"{path} is not a folder; give the folder of a saved SAE.")
    cfg = path / "cfg.json"
    if not cfg.is_file() or not (path / "sae_weights.safetensors").is_file():
        raise UsageError(
            f"{path} is not a saved SAE (it needs cfg.json and sae_weights.safetensors, as "
            "`sae-fvu fit` or sae.save_model(path) write)."
        )
    try:
        data = json.loads(cfg.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{cfg} is not valid JSON ({err}); re-fit or restore it.") from None
    if not isinstance(data, dict):
        raise UsageError(f"{cfg} does not hold an SAE config.")
    return data


def eval_command(cmd: EvalCommand) -> dict[str, Any]:
    """SAEBench core eval of a saved clustering SAE on held-out contexts."""
    from .definitions import DEFINITIONS

    local = Path(cmd.sae).exists() or cmd.sae_id is None
    saved = read_saved_cfg(cmd.sae) if local else {}
    try:
        DEFINITIONS[cmd.definition]
        for name in cmd.report:
            if name != "all":
                DEFINITIONS[name]
    except ValueError as err:
        raise UsageError(str(err)) from None
    import torch

    from .clustering.provenance import OverlapError, Provenance, check_overlap
    from .data import AUSTEN, SMOLLM2, load_model, split_contexts
    from .saebench import core_eval_config, run_core_eval

    device = cmd.device or ("cuda" if torch.cuda.is_available() else "cpu")
    remote = None if local else load_registry_sae(cmd.sae, str(cmd.sae_id), device)
    meta = saved.get("metadata") or ({} if remote is None else remote.cfg.metadata.to_dict())
    provenance = Provenance.from_metadata(meta)
    model_name = cmd.model or meta.get("model_name") or SMOLLM2
    dataset = (
        cmd.dataset
        or (provenance.dataset if provenance else None)
        or meta.get("dataset_path")
        or AUSTEN
    )
    hook = meta.get("hook_name")
    if not hook:
        raise UsageError(f"{cmd.sae}/cfg.json names no hook_name; it cannot be evaluated.")
    model = load_model(model_name, device=device)
    width = model_hook_width(model, hook)
    sae = remote if remote is not None else load_local_sae(cmd.sae, device)
    if sae.cfg.d_in != width:
        raise UsageError(
            f"The SAE at {cmd.sae} has d_in={sae.cfg.d_in} but the hook {hook!r} has width "
            f"{width}; it was fitted on another model or hook. Evaluate it on the hook it was "
            "fitted on."
        )
    ctx = int(meta.get("context_size") or 128)
    n_rows = (cmd.eval_batches + cmd.recon_batches) * cmd.batch_prompts
    fit_ids = provenance.fit_ids if provenance is not None else None
    split = split_contexts(
        dataset,
        model.tokenizer,
        context_size=ctx,
        n_fit=0,
        n_eval=n_rows,
        seed=provenance.split_seed or 0 if provenance is not None else 0,
        fit_ids=fit_ids,
    )
    try:
        report = check_overlap(
            provenance,
            split.eval_index.tolist(),
            fit_hash_now=None if fit_ids is None else split.contexts_hash(fit_ids),
            allow_overlap=cmd.allow_overlap,
        )
    except OverlapError as err:
        raise UsageError(str(err)) from None
    config = core_eval_config(
        n_eval_batches=cmd.eval_batches,
        n_reconstruction_batches=cmd.recon_batches,
        batch_size_prompts=cmd.batch_prompts,
        model_name=model_name,
        dataset=dataset,
        context_size=ctx,
        explained_variance_definition=cmd.definition,
        explained_variance_report=list(cmd.report),
        explained_variance_exclude_norm_above=cmd.exclude_norm_above,
        explained_variance_bootstrap=cmd.bootstrap,
        explained_variance_ci_level=cmd.ci_level,
        explained_variance_seed=cmd.seed,
    )
    out_json = Path(cmd.output_json or Path(cmd.sae) / "eval_results.json")
    res = run_core_eval(
        sae,
        model,
        split.dataset("eval"),
        config,
        out_json=out_json,
        sae_release="local" if remote is None else cmd.sae,
        sae_id=Path(cmd.sae).name,
        device=device,
        extra={"held_out": report.to_dict()},
    )
    res["held_out"] = report.to_dict()
    rq = res["metrics"]["reconstruction_quality"]
    print(json.dumps(rq, indent=1))
    overlap = "not checked (no provenance)" if report.overlap is None else report.overlap
    print(f"held-out contexts: {len(split.eval_index)}; overlap with fit contexts: {overlap}")
    print(f"SAEBench result JSON: {out_json}")
    return res


def load_local_sae(folder: str | Path, device: str) -> Any:
    """Any SAELens SAE saved in ``folder`` (clustering architectures registered), its cfg
    standardised for SAEBench; a ``UsageError`` naming what is wrong otherwise."""
    from sae_bench.sae_bench_utils.general_utils import _standardize_sae_cfg
    from sae_lens import SAE

    from .clustering import register

    register()
    try:
        sae = SAE.load_from_disk(folder, device=device)
        _standardize_sae_cfg(sae.cfg)
    except Exception as err:
        raise UsageError(
            f"Could not load the SAE at {folder}: {type(err).__name__}: {err}. Re-fit or restore it."
        ) from None
    return sae


def load_registry_sae(release: str, sae_id: str, device: str) -> Any:
    """A SAELens registry SAE (``SAE.from_pretrained``); needs the Hugging Face hub."""
    import os

    from sae_bench.sae_bench_utils.general_utils import _standardize_sae_cfg
    from sae_lens import SAE

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UsageError(
            f"{release}/{sae_id} is a SAELens registry SAE, which is downloaded from the "
            "Hugging Face hub, and HF_HUB_OFFLINE=1 is set. Unset it where the hub is "
            "reachable, or evaluate a local SAE folder."
        )
    try:
        sae = SAE.from_pretrained(release, sae_id, device=device)
    except Exception as err:
        raise UsageError(
            f"Could not load {release}/{sae_id}: {type(err).__name__}: {err}"
        ) from None
    _standardize_sae_cfg(sae.cfg)
    return sae
