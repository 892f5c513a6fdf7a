"""Fit a clustering SAE on a model's activations, or evaluate a saved one with SAEBench.

    sae-fvu fit --hook blocks.3.hook_resid_post --tokens 20000 --n-clusters 512 --out out/km512
    sae-fvu eval out/km512 [--eval-batches 8]
    torchrun --nproc_per_node 2 -m sae_fvu_plugin.clustering fit ...   # one fit, 2 processes

(``python -m sae_fvu_plugin.clustering fit|eval`` is the same.) Defaults are the offline
ones (SmolLM2-135M, Jane Austen). ``fit`` records where its tokens came from (the exact
fit contexts); ``eval`` scores only contexts disjoint from them and writes SAEBench's result
JSON with the fit contexts, the eval contexts and their overlap (0).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._cli import UsageError
from ..options import EvalCommand, FitCommand, KMeansOptions, check_hook


def _init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPU)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def model_hook_width(model: Any, hook: str) -> int:
    """Width of the activations at ``hook`` (as SAEBench flattens hook_z / q / k / v);
    an unknown hook is a ``UsageError`` naming the closest valid ones."""
    import torch

    try:
        check_hook(hook, valid=sorted(model.hook_dict))
    except ValueError as err:
        raise UsageError(str(err)) from None
    tokens = torch.zeros(1, 2, dtype=torch.long, device=model.cfg.device)
    _, cache = model.run_with_cache(tokens, names_filter=[hook], prepend_bos=False)
    act = cache[hook]
    return int(act.shape[-1] * (act.shape[-2] if act.ndim == 4 else 1))


def fit_command(cmd: FitCommand, options: KMeansOptions) -> Path:
    """Collect activations on fit contexts (this rank's share under torchrun), fit, save."""
    out = Path(cmd.out)
    if (out / "cfg.json").exists() and not cmd.overwrite:
        raise UsageError(f"{out} already holds a saved SAE; pass --overwrite to replace it.")
    import torch

    from ..data import load_model, split_contexts
    from .activations import collect_activations
    from .api import fit_kmeans, fit_pca_kmeans, fit_residual_kmeans
    from .provenance import Provenance, to_ranges

    rank, world = _init_distributed()
    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(cmd.model, device=device)
    model_hook_width(model, cmd.hook)
    n_fit = -(-cmd.tokens // (cmd.context_size - 1))
    split = split_contexts(
        cmd.dataset,
        model.tokenizer,
        context_size=cmd.context_size,
        n_fit=n_fit,
        n_eval=0,
        seed=cmd.split_seed,
    )
    mine = split.fit[rank::world]
    from datasets import Dataset

    acts = collect_activations(
        model,
        Dataset.from_dict({"input_ids": mine.tolist()}),
        cmd.hook,
        len(mine) * (cmd.context_size - 1),
        context_size=cmd.context_size,
        drop_first_position=True,
        device=device,
        progress=options.progress and rank == 0,
    )
    tok = model.tokenizer
    provenance = Provenance(
        model_name=cmd.model,
        hook_name=cmd.hook,
        dataset=cmd.dataset,
        context_size=cmd.context_size,
        tokenizer=f"{Path(str(getattr(tok, 'name_or_path', 'unknown'))).name}:{len(tok)}",
        prepend_bos=True,
        drop_first_position=True,
        split_seed=cmd.split_seed,
        corpus_contexts=split.corpus_contexts,
        fit_contexts=to_ranges(split.fit_index.tolist()),
        fit_contexts_sha256=split.contexts_hash(split.fit_index.tolist()),
        fit_tokens=n_fit * (cmd.context_size - 1),
    )
    if options.checkpoint is None:
        options = KMeansOptions.build(options, checkpoint=str(out.parent / f".{out.name}.ckpt"))
    common: dict[str, Any] = dict(options=options, provenance=provenance)
    if cmd.n_pca:
        sae = fit_pca_kmeans(acts, cmd.n_clusters, cmd.n_pca, **common)
    elif cmd.n_stages > 1:
        sae = fit_residual_kmeans(acts, cmd.n_clusters, cmd.n_stages, **common)
    else:
        sae = fit_kmeans(acts, cmd.n_clusters, **common)
    if rank == 0:
        sae.to("cpu").save_model(out, overwrite=cmd.overwrite)
        if options.checkpoint is not None:
            Path(options.checkpoint).unlink(missing_ok=True)
        m = sae.cfg.metadata
        print(
            f"saved {sae.cfg.architecture()} SAE to {out}: d_sae={sae.cfg.d_sae}, fit "
            f"explained variance (fvu_a) {m.fit_explained_variance_fvu_a:.4f} on "
            f"{m.n_tokens} tokens ({world} process{'es' if world > 1 else ''}, {m.passes} "
            "passes over the data)"
        )
    return out


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
    from ..definitions import DEFINITIONS

    saved = read_saved_cfg(cmd.sae)
    try:
        DEFINITIONS[cmd.definition]
        for name in cmd.report:
            if name != "all":
                DEFINITIONS[name]
    except ValueError as err:
        raise UsageError(str(err)) from None
    meta = saved.get("metadata") or {}
    import torch

    from ..data import AUSTEN, SMOLLM2, load_model, split_contexts
    from ..saebench import core_eval_config, run_core_eval
    from .provenance import OverlapError, Provenance, check_overlap
    from .sae import load_clustering_sae

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
    device = cmd.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(model_name, device=device)
    width = model_hook_width(model, hook)
    try:
        sae = load_clustering_sae(cmd.sae, device=device, expected_d_in=width)
    except (ValueError, TypeError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None
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
    )
    out_json = Path(cmd.output_json or Path(cmd.sae) / "eval_results.json")
    res = run_core_eval(
        sae,
        model,
        split.dataset("eval"),
        config,
        out_json=out_json,
        sae_release="clustering",
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
