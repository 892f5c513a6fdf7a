"""FVU over whole tensors: :func:`fvu` and :func:`explained_variance`.

Both reduce (x, x̂) to the sufficient statistics of :mod:`.stats` batch by batch and apply
the definition's formula (see :mod:`.definitions`), so they give the same number as
:class:`~sae_fvu_plugin.FVUAccumulator` fed the same batches.
"""

from __future__ import annotations

import torch

from .definitions import FVUDefinition, get_definition
from .stats import FVUState, batch_state, compute_fvu, merge_states, ratio_key


def check_pair(
    x: torch.Tensor, x_hat: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate (x, x̂, mask); return x and x̂ as (N, d) and the flat keep-mask (or None).

    Any leading dims are flattened; the last dim is d. ``x_hat`` is moved to ``x``'s device.
    ``mask`` (bool, shape ``x.shape[:-1]``) keeps the tokens where it is True; it is not
    applied here, so callers can apply it chunk by chunk without copying the batch.
    """
    for name, t in (("x", x), ("x_hat", x_hat)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
        if not t.is_floating_point():
            raise TypeError(
                f"{name} has dtype {t.dtype}; FVU needs floating-point activations "
                f"(float64/32/16 or bfloat16). Convert with {name}.float()."
            )
    for name, t in (("x", x), ("x_hat", x_hat)):
        if t.ndim == 0:
            raise ValueError(
                f"{name} is a scalar (0-d tensor); expected shape (..., d) with the last dim "
                "the width d, e.g. (tokens, d)."
            )
    if x.ndim == 1:
        raise ValueError(
            f"x has shape {tuple(x.shape)} (1-D); expected (..., d) with one row per token. For "
            f"one token of width {x.shape[0]} use x.reshape(1, -1); for {x.shape[0]} tokens of "
            "width 1 use x.reshape(-1, 1)."
        )
    if x.shape != x_hat.shape:
        raise ValueError(
            f"x has shape {tuple(x.shape)} but x_hat has shape {tuple(x_hat.shape)}; a "
            "reconstruction must have the shape of its input."
        )
    d = x.shape[-1]
    if d == 0:
        raise ValueError(f"x has shape {tuple(x.shape)}: the width d (last dim) is 0.")
    xs = x.reshape(-1, d)
    hs = x_hat.reshape(-1, d).to(x.device)
    if mask is None:
        return xs, hs, None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(
            f"mask must be a bool tensor (True = keep the token), got "
            f"{getattr(mask, 'dtype', type(mask).__name__)}; use mask.bool()."
        )
    if mask.shape != x.shape[:-1]:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}; expected x.shape[:-1] = "
            f"{tuple(x.shape[:-1])} (one flag per token)."
        )
    return xs, hs, mask.reshape(-1).to(x.device)


def _split_batches(
    xs: torch.Tensor, hs: torch.Tensor, ids: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.argsort(ids, stable=True)
    _, counts = torch.unique_consecutive(ids[order], return_counts=True)
    sizes = counts.tolist()
    return list(zip(xs[order].split(sizes), hs[order].split(sizes), strict=True))


def _batch_ids(batch_ids: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if (
        not isinstance(batch_ids, torch.Tensor)
        or batch_ids.is_floating_point()
        or (batch_ids.dtype == torch.bool)
    ):
        raise TypeError(
            "batch_ids must be an integer tensor giving each token's eval batch, got "
            f"{getattr(batch_ids, 'dtype', type(batch_ids).__name__)}."
        )
    if batch_ids.shape != x.shape[:-1]:
        raise ValueError(
            f"batch_ids has shape {tuple(batch_ids.shape)}; expected x.shape[:-1] = "
            f"{tuple(x.shape[:-1])} (one batch id per token)."
        )
    ids = batch_ids.reshape(-1).to(x.device)
    if mask is not None:
        ids = ids[mask.reshape(-1).to(x.device)]
    return ids


def fvu_state(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    definitions: list[FVUDefinition],
    *,
    mask: torch.Tensor | None = None,
    batch_ids: torch.Tensor | None = None,
) -> FVUState:
    """Merged statistics of all batches for ``definitions`` (two passes where one is not
    enough: per-token / per-batch ratios around the global mean)."""
    xs, hs, keep = check_pair(x, x_hat, mask)
    if keep is not None:
        xs, hs = xs[keep], hs[keep]
    if batch_ids is None:
        batches = [(xs, hs)]
    else:
        batches = _split_batches(xs, hs, _batch_ids(batch_ids, x, mask))
    keys = {k for k in map(ratio_key, definitions) if k is not None}
    one_pass = sorted(k for k in keys if "/global/" not in k)
    two_pass = sorted(k for k in keys if "/global/" in k)

    state = FVUState.empty(xs.shape[1], one_pass)
    for bx, bh in batches:
        state = merge_states(state, batch_state(bx, bh, one_pass))
    if two_pass and state.n > 0:
        centers = (state.mean_x, state.mean_r)
        sums = dict.fromkeys(two_pass, 0.0)
        for bx, bh in batches:
            part = batch_state(bx, bh, two_pass, centers=centers)
            for k in two_pass:
                sums[k] += part.ratio_sums[k]
        state.ratio_sums.update(sums)
    return state


def fvu(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    definition: str | FVUDefinition = "fvu_a",
    *,
    mask: torch.Tensor | None = None,
    batch_ids: torch.Tensor | None = None,
) -> float:
    """Fraction of variance unexplained of ``x_hat`` for ``x`` under ``definition``.

    ``x`` and ``x_hat``: shape (..., d), any float dtype, any device (the work runs there in
    float64). ``mask`` (bool, ``x.shape[:-1]``) keeps tokens where True. ``batch_ids``
    (int, ``x.shape[:-1]``) names each token's eval batch for batch-centred and per-batch
    definitions; without it the whole input is one batch. The formulas are in
    :mod:`sae_fvu_plugin.definitions`; for ``fvu_a``:

        FVU = Σ_n ‖x_n − x̂_n‖² / Σ_n ‖x_n − μ‖²,   μ = mean_n x_n.

    Degenerate input: zero variance gives NaN with an :class:`FVUWarning`; NaN/inf values
    raise ``ValueError``; no unmasked token raises ``ValueError``.

    >>> x = torch.tensor([[0.0], [2.0]])
    >>> fvu(x, torch.ones_like(x))  # predicting the mean explains nothing
    1.0
    """
    defn = get_definition(definition)
    return compute_fvu(defn, fvu_state(x, x_hat, [defn], mask=mask, batch_ids=batch_ids))


def explained_variance(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    definition: str | FVUDefinition = "fvu_a",
    *,
    mask: torch.Tensor | None = None,
    batch_ids: torch.Tensor | None = None,
) -> float:
    """1 − :func:`fvu` (same arguments). ``fvu_a``: 1 − Σ‖r‖² / Σ‖x − μ‖² (R²).

    >>> x = torch.tensor([[0.0], [2.0]])
    >>> explained_variance(x, x)
    1.0
    """
    return 1.0 - fvu(x, x_hat, definition, mask=mask, batch_ids=batch_ids)


def fvu_many(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    definitions: str | list[str] | tuple[str, ...] = "all",
    *,
    mask: torch.Tensor | None = None,
    batch_ids: torch.Tensor | None = None,
) -> dict[str, float]:
    """{name: FVU} for several definitions from one reduction of the data (``"all"`` =
    every registered definition)."""
    from .definitions import DEFINITIONS

    names = DEFINITIONS.resolve(definitions)
    defs = [DEFINITIONS[n] for n in names]
    state = fvu_state(x, x_hat, defs, mask=mask, batch_ids=batch_ids)
    return {n: compute_fvu(d, state) for n, d in zip(names, defs, strict=True)}
