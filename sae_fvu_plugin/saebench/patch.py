"""The patch: while enabled, SAEBench's own ``get_sparsity_and_variance_metrics`` runs
unchanged but *observes* each batch it computes — the SAE's ``encode`` input x and the
matching ``decode`` output x̂, with the ``ignore_tokens`` mask rebuilt by SAEBench's own
expression from the batch tokens it drew — and streams them into an
:class:`~sae_fvu_plugin.FVUAccumulator`. It observes through per-call proxies of the SAE
and the activation store (nothing is set on either object), so runs in several threads on
one SAE never mix. No extra forward pass; every other metric is SAEBench's.

Swapped while enabled (and restored, in every module that imported them):
``run_evals``, ``get_sparsity_and_variance_metrics``, ``save_single_eval_result``,
``ReconstructionQualityMetrics``, ``CoreMetricCategories``, ``CoreEvalOutput`` of
``sae_bench.evals.core.main``.
"""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import Any

from sae_bench.evals.core import main as _core

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
from .config import (
    FVUCoreEvalConfig,
    FVUCoreEvalOutput,
    FVUCoreMetricCategories,
    FVUReconstructionQualityMetrics,
)

SUPPORTED = "sae-bench 0.6.x"


def check_upstream() -> None:
    """Refuse, with one clear error, an SAEBench the plugin was not built against."""
    version = version_of("sae-bench")
    if not version.startswith("0.6"):
        raise UnsupportedVersionError(
            f"sae_fvu_plugin.saebench supports {SUPPORTED}; installed: sae-bench {version}. "
            "Install sae-bench 0.6.x, or apply patches/saebench to your version."
        )
    require_parameters(
        "sae_bench.evals.core.main.get_sparsity_and_variance_metrics",
        _core.get_sparsity_and_variance_metrics,
        ["sae", "activation_store", "compute_variance_metrics", "ignore_tokens"],
        SUPPORTED,
    )
    require_parameters(
        "sae_bench.evals.core.main.run_evals", _core.run_evals, ["eval_config"], SUPPORTED
    )
    require_parameters(
        "sae_bench.evals.core.main.save_single_eval_result",
        _core.save_single_eval_result,
        ["result"],
        SUPPORTED,
    )


def _sparsity_and_variance(*args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    original = SAEBENCH.original("get_sparsity_and_variance_metrics")
    bound = inspect.signature(original).bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    if not a["compute_variance_metrics"]:
        return original(*args, **kwargs)
    run = current_run(SAEBENCH.defaults)
    feeder = BatchFeeder(run, "SAEBench")
    sae, store, ignore = a["sae"], a["activation_store"], a["ignore_tokens"]
    seen: dict[str, Any] = {"tokens": None, "pending": None, "batches": 0, "pairs": 0}

    feeder.where = {
        "model": getattr(getattr(a.get("model"), "cfg", None), "model_name", None),
        "hook": getattr(sae.cfg, "hook_name", None) or sae.cfg.metadata.hook_name,
    }

    def get_batch_tokens(*ga: Any, **gk: Any) -> Any:
        tokens = store.get_batch_tokens(*ga, **gk)
        seen["tokens"] = tokens
        seen["batches"] += 1
        feeder.see_tokens(tokens)
        return tokens

    def encode(x: Any, *ea: Any, **ek: Any) -> Any:
        feats = sae.encode(x, *ea, **ek)
        seen["pending"] = (x, feats)
        return feats

    def decode(feats: Any, *da: Any, **dk: Any) -> Any:
        out = sae.decode(feats, *da, **dk)
        pending = seen["pending"]
        if pending is not None and feats is pending[1] and seen["tokens"] is not None:
            seen["pending"] = None
            seen["pairs"] += 1
            x = pending[0]
            mask = ignore_mask(seen["tokens"], ignore).to(x.device)
            feeder.feed(x, out, mask if mask.shape == x.shape[:-1] else None)
        return out

    a["sae"] = Proxy(sae, encode=encode, decode=decode)
    a["activation_store"] = Proxy(store, get_batch_tokens=get_batch_tokens)
    metrics, feature_metrics = original(*bound.args, **bound.kwargs)
    if seen["pairs"] != seen["batches"]:
        raise RuntimeError(
            f"sae_fvu_plugin saw {seen['pairs']} encode→decode pairs for {seen['batches']} "
            f"SAEBench batches with {type(sae).__name__}; its explained variance would be "
            "incomplete. Report this SAE class; sae_fvu_plugin.saebench.disable() restores "
            "stock SAEBench."
        )
    quality = feeder.finish()
    ev = quality["explained_variance_by_definition"]
    if (
        "saebench_0_6" in ev
        and run.selection.exclude_norm_above is None
        and "explained_variance_note" not in quality
    ):
        ev["saebench_0_6"] = float(metrics["explained_variance"])  # SAEBench's own number
        quality["explained_variance"] = ev[run.selection.definition]
    metrics["explained_variance"] = quality["explained_variance"]
    run.quality = quality
    return metrics, feature_metrics


def _upgrade_config(config: Any, quality: dict[str, Any]) -> FVUCoreEvalConfig:
    if isinstance(config, FVUCoreEvalConfig):
        return config
    definition = quality.get("explained_variance_definition", SAEBENCH.defaults.definition)
    report = [k for k in quality.get("explained_variance_by_definition", {}) if k != definition]
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    return FVUCoreEvalConfig(
        **values,
        explained_variance_definition=definition,
        explained_variance_report=report,
        explained_variance_bootstrap=quality.get("explained_variance_bootstrap", 0),
    )


def _save_single_eval_result(result: dict[str, Any], *args: Any, **kwargs: Any) -> str:
    original = SAEBENCH.original("save_single_eval_result")
    quality = result.get("metrics", {}).get("reconstruction_quality", {})
    result = dict(result)
    result["eval_cfg"] = _upgrade_config(result["eval_cfg"], quality)
    return original(result, *args, **kwargs)


SAEBENCH = Integration(
    "sae_fvu_plugin.saebench",
    _core,
    lambda integration: [
        (_core, "get_sparsity_and_variance_metrics", _sparsity_and_variance),
        (_core, "run_evals", integration.run_evals),
        (_core, "save_single_eval_result", _save_single_eval_result),
        (_core, "ReconstructionQualityMetrics", FVUReconstructionQualityMetrics),
        (_core, "CoreMetricCategories", FVUCoreMetricCategories),
        (_core, "CoreEvalOutput", FVUCoreEvalOutput),
    ],
    check_upstream,
)
