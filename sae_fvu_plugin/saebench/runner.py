"""One SAE, end to end: SAEBench's ``run_evals`` with the plugin enabled on a dataset, as
``multiple_evals`` does it, optionally saved with SAEBench's ``save_single_eval_result``.
The offline helpers behind ``sae-fvu eval``, the clustering CLI and the experiments."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from sae_bench.evals.core import eval_output as _out
from sae_bench.evals.core import main as _core

from .config import FVUCoreEvalConfig
from .patch import SAEBENCH


def core_eval_config(
    *,
    all_metrics: bool = True,
    n_eval_batches: int = 8,
    n_reconstruction_batches: int = 2,
    batch_size_prompts: int = 8,
    **fields: Any,
) -> FVUCoreEvalConfig:
    """An :class:`FVUCoreEvalConfig` with every metric on (what ``save_single_eval_result``
    needs), or with ``all_metrics=False`` only variance and sparsity (no KL/CE passes).
    ``fields`` sets any other field (``explained_variance_definition=...``)."""
    flags = dict.fromkeys(
        (
            "compute_kl",
            "compute_ce_loss",
            "compute_l2_norms",
            "compute_featurewise_density_statistics",
            "compute_featurewise_weight_based_metrics",
        ),
        all_metrics,
    )
    return FVUCoreEvalConfig(
        batch_size_prompts=batch_size_prompts,
        n_eval_sparsity_variance_batches=n_eval_batches,
        n_eval_reconstruction_batches=n_reconstruction_batches,
        compute_variance_metrics=True,
        compute_sparsity_metrics=True,
        **(flags | fields),
    )


def run_core_eval(
    sae: Any,
    model: Any,
    dataset: Any,
    config: FVUCoreEvalConfig,
    *,
    ignore_tokens: set[int | None] | None = None,
    out_json: str | Path | None = None,
    sae_release: str = "local",
    sae_id: str = "sae",
    device: str = "cpu",
    extra: dict[str, Any] | None = None,
    reuse_groups: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """SAEBench's ``run_evals`` on ``sae`` with the plugin enabled, tokens from ``dataset``
    (a Hugging Face dataset or name; pretokenised rows are used as they are), as
    ``multiple_evals`` does it; optionally saved with SAEBench's ``save_single_eval_result``.

    ``ignore_tokens`` defaults to the tokenizer's BOS, EOS and PAD ids, like
    ``multiple_evals``. ``extra``: further top-level keys for the result JSON (e.g. the
    held-out report). ``reuse_groups``: metric groups this run did not compute, taken
    from another run of the same SAE (e.g. KL / CE for a variance-only rerun). Returns SAEBench's result dict (``metrics``, ``feature_metrics``).
    """
    from sae_lens import ActivationsStore

    tok = getattr(model, "tokenizer", None)
    if ignore_tokens is None:
        ignore_tokens = (
            set()
            if tok is None
            else {
                t for t in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) if t is not None
            }
        )
    n_rows = config.batch_size_prompts * max(
        config.n_eval_sparsity_variance_batches,
        config.n_eval_reconstruction_batches
        if (config.compute_kl or config.compute_ce_loss)
        else 0,
    )
    store = ActivationsStore.from_sae(
        model,
        sae,
        dataset=dataset,
        context_size=config.context_size,
        streaming=isinstance(dataset, str),
        store_batch_size_prompts=config.batch_size_prompts,
        n_batches_in_buffer=2,
        train_batch_size_tokens=config.batch_size_prompts * config.context_size,
        total_tokens=max(n_rows, 1) * config.context_size,
        device=device,
    )
    with SAEBENCH.enabled(config.explained_variance_definition):
        metrics, feature_metrics = _core.run_evals(
            sae, store, model, config, ignore_tokens=ignore_tokens
        )
        result: dict[str, Any] = {
            "eval_cfg": config,
            "metrics": metrics,
            "feature_metrics": feature_metrics,
            "sae_set": sae_release,
            "sae_id": sae_id,
        }
        for group, values in (reuse_groups or {}).items():
            if not metrics.get(group):  # e.g. KL / CE of a run on the same SAE and tokens
                metrics[group] = values
        if out_json is not None:
            save_result(result, config, sae, Path(out_json), extra)
    return result


def save_result(
    result: dict[str, Any],
    config: FVUCoreEvalConfig,
    sae: Any,
    out_json: Path,
    extra: dict[str, Any] | None,
) -> None:
    """Write ``result`` with SAEBench's own ``save_single_eval_result``, then put back what
    its saver cannot hold: groups this config did not compute as null (with a note, never
    SAEBench's -1 placeholder), the plugin's explained-variance fields with NaN as null, and
    the ``extra`` top-level keys."""
    metrics = result["metrics"]
    if (
        config.compute_featurewise_density_statistics
        and config.compute_featurewise_weight_based_metrics
    ):
        metrics["misc_metrics"] = _core.calculate_misc_metrics(result["feature_metrics"])
    out_json.parent.mkdir(parents=True, exist_ok=True)
    # SAEBench's saver needs every group: a group this config did not compute is
    # saved as null (with a note), never as SAEBench's -1 placeholder.
    skipped = [g for g in _SKIPPABLE if not metrics.get(g)]
    to_save = dict(result)
    to_save["metrics"] = metrics | {
        g: {f.name: math.nan for f in dataclasses.fields(_SKIPPABLE[g])} for g in skipped
    }
    _core.save_single_eval_result(
        _core.replace_nans_with_negative_one(to_save),
        _core.get_eval_uuid(),
        _core.get_sae_lens_version(),
        _core.get_sae_bench_version(),
        str(out_json),
        sae,
    )
    saved = json.loads(out_json.read_text())
    # SAEBench saves NaN as -1; the plugin's numbers keep NaN as null (the reason is
    # in explained_variance_note / explained_variance_ci_note)
    rq = metrics.get("reconstruction_quality") or {}
    saved["eval_result_metrics"]["reconstruction_quality"].update(
        {k: _nan_to_null(v) for k, v in rq.items() if k.startswith("explained_variance")}
    )
    for g in skipped:
        saved["eval_result_metrics"][g] = None
    if skipped:
        saved["not_computed"] = {
            g: "compute_kl / compute_ce_loss were off in this eval config" for g in skipped
        }
    out_json.write_text(json.dumps(saved | (extra or {}), indent=2))


# Metric groups a config may leave out (KL / CE passes off) and their SAEBench classes.
_SKIPPABLE = {
    "model_behavior_preservation": _out.ModelBehaviorPreservationMetrics,
    "model_performance_preservation": _out.ModelPerformancePreservationMetrics,
}


def _nan_to_null(value: Any) -> Any:
    """A JSON-safe copy with every non-finite float as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_null(v) for v in value]
    return value
