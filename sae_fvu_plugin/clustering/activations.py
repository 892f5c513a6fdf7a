"""Collect activations of a TransformerLens model at a hook, through SAELens's
``ActivationsStore`` (the same token pipeline SAEBench evaluates with)."""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm

from .._compat import ensure_datasets_can_format


def collect_activations(
    model: Any,
    dataset: Any,
    hook_name: str | list[str],
    n_tokens: int,
    *,
    context_size: int = 128,
    batch_prompts: int = 8,
    prepend_bos: bool = True,
    hook_head_index: int | None = None,
    drop_first_position: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> Any:
    """(n_tokens, d) float32 activations at ``hook_name`` (on CPU); for a list of hooks, a
    dict {hook: activations} from one forward pass (stopping after the last hooked layer).

    ``dataset``: a Hugging Face dataset (or its name) with text or ``input_ids``;
    tokenised into contexts of ``context_size`` by the store. ``drop_first_position``
    leaves out position 0 of every context (the BOS token, whose activation is usually an
    outlier; SAEBench's eval masks it via ``ignore_tokens``).
    """
    from sae_lens import ActivationsStore

    ensure_datasets_can_format()
    rows_per_ctx = context_size - (1 if drop_first_position else 0)
    n_prompts = -(-n_tokens // rows_per_ctx)
    hooks = [hook_name] if isinstance(hook_name, str) else list(hook_name)
    store = ActivationsStore(
        model=model,
        dataset=dataset,
        streaming=isinstance(dataset, str),
        hook_name=hooks[0],
        hook_head_index=hook_head_index,
        context_size=context_size,
        d_in=0,
        n_batches_in_buffer=2,
        total_training_tokens=n_prompts * context_size,
        store_batch_size_prompts=batch_prompts,
        train_batch_size_tokens=batch_prompts * context_size,
        prepend_bos=prepend_bos,
        normalize_activations="none",
        device=torch.device(device),
        dtype="float32",
        disable_concat_sequences=False,
    )
    layers = [_layer_of(h) for h in hooks]
    stop = None if None in layers else max(int(x) for x in layers if x is not None) + 1
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    got = 0
    desc = f"activations {', '.join(hooks)}"
    with tqdm(total=n_tokens, disable=not progress, desc=desc, unit="tok") as bar:
        while got < n_tokens:
            tokens = store.get_batch_tokens(batch_prompts)
            with torch.no_grad():
                _, cache = model.run_with_cache(
                    tokens, prepend_bos=False, names_filter=hooks, stop_at_layer=stop
                )
            take = 0
            for h in hooks:
                act = cache[h]
                if hook_head_index is not None:
                    act = act[:, :, hook_head_index]
                elif act.ndim == 4:
                    act = act.flatten(-2, -1)
                if drop_first_position:
                    act = act[:, 1:]
                act = act.reshape(-1, act.shape[-1]).float().cpu()[: n_tokens - got]
                out[h].append(act)
                take = act.shape[0]
            got += take
            bar.update(take)
    result = {h: torch.cat(v) for h, v in out.items()}
    return result[hooks[0]] if isinstance(hook_name, str) else result


def _layer_of(hook_name: str) -> int | None:
    parts = hook_name.split(".")
    if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None
