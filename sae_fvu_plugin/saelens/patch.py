"""The patch: SAELens streams every (masked, unscaled) eval batch into its
``ExplainedVarianceCalculator``. While enabled, a subclass feeds an
:class:`~sae_fvu_plugin.FVUAccumulator` as well (the stock statistics are kept too), and
``get_sparsity_and_variance_metrics`` observes the batch tokens through a per-call proxy
of the activation store, so each token's eval context is known for the bootstrap.

Where the plugin has nothing better to say, SAELens's own value stands: a zero-variance
or empty calculator returns what stock SAELens returns (1.0 / 0.0); the plugin's NaN is
reported under ``explained_variance_by_definition`` with a warning. Swapped while
enabled, in every module holding them (``sae_lens.run_evals``, the training runners,
``sae_lens.synthetic.evals``, ...): ``ExplainedVarianceCalculator``,
``get_sparsity_and_variance_metrics``, ``run_evals``.
"""

from __future__ import annotations

import contextvars
import inspect
import math
from typing import Any

import torch
from sae_lens import evals as _evals

from .._integration import (
    BatchFeeder,
    Integration,
    Proxy,
    UnsupportedVersionError,
    current_run,
    ignore_mask,
    require_parameters,
    version_of,
)

SUPPORTED = "sae-lens >= 6.45.1, < 7"
_LOOP: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "sae_fvu_saelens_loop", default=None
)


def check_upstream() -> None:
    version = version_of("sae-lens")
    parts = (
        tuple(int(p) for p in version.split(".")[:3] if p.isdigit()) if version[0].isdigit() else ()
    )
    if not parts or parts < (6, 45, 1) or parts[0] >= 7:
        raise UnsupportedVersionError(
            f"sae_fvu_plugin.saelens supports {SUPPORTED}; installed: sae-lens {version}."
        )
    require_parameters(
        "sae_lens.evals.get_sparsity_and_variance_metrics",
        _evals.get_sparsity_and_variance_metrics,
        [
            "activation_store",
            "compute_variance_metrics",
            "eval_batch_size_prompts",
            "ignore_tokens",
        ],
        SUPPORTED,
    )
    require_parameters("sae_lens.evals.run_evals", _evals.run_evals, ["eval_config"], SUPPORTED)
    calc = _evals.ExplainedVarianceCalculator
    for attr in ("add_batch", "compute"):
        if not callable(getattr(calc, attr, None)):
            raise UnsupportedVersionError(
                f"sae_lens.evals.ExplainedVarianceCalculator has no {attr}(); {SUPPORTED} needed."
            )


class FVUExplainedVarianceCalculator(_evals.ExplainedVarianceCalculator):
    """Same calls as SAELens's calculator; the number comes from the selected definition."""

    def __init__(self) -> None:
        super().__init__()
        self._run = current_run(SAELENS.defaults)
        self._feeder = BatchFeeder(self._run, "SAELens")
        self._loop = _LOOP.get()
        self._next_row = 0

    def _units(self, n_kept: int) -> torch.Tensor | None:
        """Eval-context ids of the kept tokens of the latest batch (None: unknown)."""
        loop = self._loop
        if loop is None or loop.get("tokens") is None:
            return None
        tokens = loop["tokens"]
        mask = ignore_mask(tokens, loop["ignore"])
        rows = torch.arange(tokens.shape[0], device=tokens.device)[:, None].expand_as(tokens)
        ids = rows[mask] + self._next_row
        if ids.numel() != n_kept:
            return None
        self._next_row += tokens.shape[0]
        return ids.cpu()

    def add_batch(self, sae_output: torch.Tensor, hidden_acts: torch.Tensor) -> None:
        super().add_batch(sae_output, hidden_acts)
        self._feeder.feed(hidden_acts, sae_output, None, self._units(hidden_acts.shape[0]))

    def compute(self) -> float:
        stock = super().compute()
        quality = self._feeder.finish()
        value = quality["explained_variance"]
        if math.isnan(value) and not self._feeder.non_finite:
            quality["explained_variance"] = value = stock  # SAELens's convention stands
        self._run.quality = quality
        return value


def _sparsity_and_variance(*args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    original = SAELENS.original("get_sparsity_and_variance_metrics")
    bound = inspect.signature(original).bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    store = a["activation_store"]
    loop: dict[str, Any] = {"tokens": None, "ignore": a["ignore_tokens"]}

    def get_batch_tokens(*ga: Any, **gk: Any) -> Any:
        loop["tokens"] = store.get_batch_tokens(*ga, **gk)
        return loop["tokens"]

    a["activation_store"] = Proxy(store, get_batch_tokens=get_batch_tokens)
    token = _LOOP.set(loop)
    try:
        return original(*bound.args, **bound.kwargs)
    finally:
        _LOOP.reset(token)


SAELENS = Integration(
    "sae_fvu_plugin.saelens",
    _evals,
    lambda integration: [
        (_evals, "ExplainedVarianceCalculator", FVUExplainedVarianceCalculator),
        (_evals, "get_sparsity_and_variance_metrics", _sparsity_and_variance),
        (_evals, "run_evals", integration.run_evals),
    ],
    check_upstream,
)
