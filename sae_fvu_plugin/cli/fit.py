"""``sae-fvu fit``: fit a clustering SAE on a model's activations.

    sae-fvu fit --hook blocks.3.hook_resid_post --tokens 20000 --n-clusters 512 --out out/km512
    torchrun --nproc_per_node 2 -m sae_fvu_plugin fit ...   # one fit, 2 processes

Defaults are the offline ones (SmolLM2-135M, Jane Austen). ``fit`` records where its tokens
came from (the exact fit contexts), so ``sae-fvu eval`` (:mod:`sae_fvu_plugin.cli.eval`)
scores only contexts disjoint from them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..kmeans_options import KMeansOptions
from ..validate import UsageError, resolve_device
from .commands import FitCommand
from .flags import Interrupted


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


def fit_command(cmd: FitCommand, options: KMeansOptions) -> Path:
    """Collect activations on fit contexts (this rank's share under torchrun), fit, save."""
    from ..sae_io import check_save_target

    out = check_save_target(cmd.out, overwrite=cmd.overwrite)

    from ..clustering import collect_activations, fit_kmeans, fit_pca_kmeans, fit_residual_kmeans
    from ..data import load_model, split_contexts
    from ..hooks import model_hook_width
    from ..provenance import Provenance

    rank, world = _init_distributed()
    device = resolve_device(options.device)
    model = load_model(cmd.model, device=device, n_ctx=max(cmd.context_size, 1024))
    width = model_hook_width(model, cmd.hook)
    if cmd.n_pca >= width:  # before the activations are collected
        raise UsageError(f"--n-pca {cmd.n_pca} must be below the width {width} of {cmd.hook}.")
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
    provenance = Provenance.of_split(
        split,
        split.fit_index.tolist(),
        model_name=cmd.model,
        hook_name=cmd.hook,
        dataset=cmd.dataset,
        context_size=cmd.context_size,
        tokenizer=model.tokenizer,
        split_seed=cmd.split_seed,
        fit_tokens=n_fit * (cmd.context_size - 1),
    )
    if options.checkpoint is None:
        options = KMeansOptions.build(options, checkpoint=str(out.parent / f".{out.name}.ckpt"))
    common: dict[str, Any] = dict(options=options, provenance=provenance)
    try:
        if cmd.n_pca:
            sae = fit_pca_kmeans(acts, cmd.n_clusters, cmd.n_pca, **common)
        elif cmd.n_stages > 1:
            sae = fit_residual_kmeans(acts, cmd.n_clusters, cmd.n_stages, **common)
        else:
            sae = fit_kmeans(acts, cmd.n_clusters, **common)
    except KeyboardInterrupt:
        saved = Path(str(options.checkpoint))
        where = (
            f"progress is saved in {saved}" if saved.exists() else "no checkpoint was written yet"
        )
        raise Interrupted(
            f"{where}; run the same command again to resume where it stopped (nothing in "
            f"{out} was written)."
        ) from None
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
