"""TransformerLens hook names: checking one and suggesting the closest valid ones, and
the offline default model's names. Light (no torch) so the command line checks flags at
once; :func:`model_hook_width` runs the model.
"""

from __future__ import annotations

import difflib
from typing import Any

from .validate import UsageError

OFFLINE_MODEL = "smollm2-135m"
OFFLINE_DATASET = "austen"
OFFLINE_LAYERS = 30  # SmolLM2-135M

_BLOCK_HOOKS = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_in",
    "hook_attn_out",
    "hook_mlp_in",
    "hook_mlp_out",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_z",
    "attn.hook_result",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "mlp.hook_pre",
    "mlp.hook_pre_linear",
    "mlp.hook_post",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "ln2.hook_scale",
    "ln2.hook_normalized",
)
_TOP_HOOKS = (
    "hook_embed",
    "hook_pos_embed",
    "ln_final.hook_scale",
    "ln_final.hook_normalized",
)


def hook_suggestions(
    hook: str, valid: list[str] | None = None, n_layers: int | None = None
) -> list[str]:
    """The valid hook names closest to ``hook`` (from ``valid``, or TransformerLens's
    naming scheme with ``n_layers`` blocks)."""
    if valid is None:
        layers = range(n_layers if n_layers is not None else 64)
        valid = [*_TOP_HOOKS, *(f"blocks.{i}.{h}" for i in layers for h in _BLOCK_HOOKS)]
    return difflib.get_close_matches(hook, valid, n=3, cutoff=0.6)


def check_hook(hook: str, valid: list[str] | None = None, n_layers: int | None = None) -> str:
    """A TransformerLens hook name (in ``valid`` when given), else a ``ValueError`` naming
    the closest valid names."""
    if valid is not None:
        ok = hook in valid
    else:
        parts = hook.split(".", 2)
        ok = hook in _TOP_HOOKS or (
            len(parts) == 3
            and parts[0] == "blocks"
            and parts[1].isdigit()
            and (n_layers is None or int(parts[1]) < n_layers)
            and parts[2] in _BLOCK_HOOKS
        )
    if not ok:
        if valid is not None:
            n_layers = len({v.split(".")[1] for v in valid if v.startswith("blocks.")})
        parts = hook.split(".", 2)
        if (
            n_layers
            and len(parts) == 3
            and parts[0] == "blocks"
            and parts[1].isdigit()
            and int(parts[1]) >= n_layers
        ):
            raise ValueError(
                f"hook {hook!r} names layer {parts[1]}, but the model has {n_layers} layers "
                f"(blocks.0 … blocks.{n_layers - 1}); choose a layer below {n_layers}."
            )
        close = hook_suggestions(hook, valid, n_layers)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"hook {hook!r} is not a hook of the model.{hint} Hooks look like "
            "'blocks.3.hook_resid_post'."
        )
    return hook


def model_hook_width(model: Any, hook: str) -> int:
    """Width of the activations at ``hook`` (as SAEBench flattens hook_z / q / k / v);
    an unknown hook is a :class:`UsageError` naming the closest valid ones."""
    import torch

    try:
        check_hook(hook, valid=sorted(model.hook_dict))
    except ValueError as err:
        raise UsageError(str(err)) from None
    tokens = torch.zeros(1, 2, dtype=torch.long, device=model.cfg.device)
    _, cache = model.run_with_cache(tokens, names_filter=[hook], prepend_bos=False)
    act = cache[hook]
    return int(act.shape[-1] * (act.shape[-2] if act.ndim == 4 else 1))
