"""``explained_variance_definition`` inside SAEBench's own, unmodified core eval.

Usage::

    from sae_bench.evals.core import main as core
    from sae_fvu_plugin import saebench as fvu_saebench

    fvu_saebench.enable()
    cfg = fvu_saebench.FVUCoreEvalConfig(explained_variance_definition="fvu_a",
                                        compute_variance_metrics=True)
    metrics, _ = core.run_evals(sae, activation_store, model, cfg)
    metrics["reconstruction_quality"]["explained_variance"]   # 1 − FVU under fvu_a

How: while enabled, ``sae_bench.evals.core.main.get_sparsity_and_variance_metrics`` runs
unchanged but *observes* each batch SAEBench itself computes — the SAE's ``encode`` input
x and the matching ``decode`` output x̂, with the ``ignore_tokens`` mask rebuilt by
SAEBench's own expression from the batch tokens it drew — and streams them into an
:class:`~sae_fvu_plugin.FVUAccumulator` on the SAE's device. No extra forward pass; every
other metric is untouched. ``explained_variance`` is then 1 − FVU under the selected
definition. ``saebench_0_6`` reports SAEBench's own stock number, bit for bit (our float64
reproduction of it when ``explained_variance_exclude_norm_above`` leaves tokens out).

Enabled, the module attributes ``run_evals``, ``get_sparsity_and_variance_metrics``,
``save_single_eval_result``, ``ReconstructionQualityMetrics``, ``CoreMetricCategories``
and ``CoreEvalOutput`` of ``sae_bench.evals.core.main`` are swapped for wrappers or
subclasses; :func:`disable` restores them. Call :func:`enable` before
``from sae_bench.evals.core.main import run_evals`` (or call through the module), since a
name imported earlier keeps pointing at the stock function.
"""

from __future__ import annotations

import argparse
import inspect
import json
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, TypeAdapter, field_validator, model_validator
from pydantic.dataclasses import dataclass
from sae_bench.evals.core import main as _core
from sae_bench.evals.core.eval_config import CoreEvalConfig
from sae_bench.evals.core.eval_output import (
    CoreEvalOutput,
    CoreMetricCategories,
    ReconstructionQualityMetrics,
)

from ._integration import (
    DEFAULT_DEFINITION,
    Integration,
    Selection,
    check_definition_name,
    check_norm_threshold,
    check_report_names,
    current_run,
    ordered_explained_variance,
)
from .accumulator import FVUAccumulator
from .definitions import DEFINITIONS

__all__ = [
    "FVUCoreEvalConfig",
    "FVUCoreEvalOutput",
    "FVUCoreMetricCategories",
    "FVUReconstructionQualityMetrics",
    "disable",
    "enable",
    "enabled",
    "is_enabled",
    "main",
    "core_eval_config",
    "output_json_schema",
    "run_core_eval",
]

SCHEMA_PATH = Path(__file__).parent / "schemas" / "eval_output_schema_core_fvu.json"

_DEFINITION_HELP = (
    "Definition of explained variance (1 − FVU) reported as `explained_variance`. Presets: "
    + ", ".join(
        f"{n} ({DEFINITIONS[n].reduce}, centre {DEFINITIONS[n].center})"
        for n in DEFINITIONS.presets
    )
    + ". `fvu_a` is conventional R² (ratio of sums around the global mean)."
)


@dataclass
class FVUCoreEvalConfig(CoreEvalConfig):
    """SAEBench's ``CoreEvalConfig`` plus the choice of explained-variance definition."""

    explained_variance_definition: str = Field(
        default=DEFAULT_DEFINITION,
        title="Explained Variance Definition",
        description=_DEFINITION_HELP,
        examples=list(DEFINITIONS.presets),
    )
    explained_variance_report: list[str] = Field(
        default_factory=list,
        title="Explained Variance Report",
        description="Further definitions reported alongside under "
        "`explained_variance_by_definition` (['all'] = every streaming definition).",
        examples=[["fvu_b", "fvu_per_dim"], ["all"]],
    )

    explained_variance_exclude_norm_above: float | None = Field(
        default=None,
        title="Exclude Tokens Above Norm",
        description="Leave tokens whose activation L2 norm exceeds this out of every "
        "explained-variance definition (e.g. rare 'massive activation' tokens); every other "
        "metric keeps them. None keeps all tokens. The count left out is reported as "
        "`explained_variance_excluded_tokens`.",
    )

    @field_validator("explained_variance_exclude_norm_above")
    @classmethod
    def _positive_threshold(cls, value: float | None) -> float | None:
        return check_norm_threshold(value)

    @field_validator("explained_variance_definition")
    @classmethod
    def _known_definition(cls, value: str) -> str:
        return check_definition_name(value)

    @field_validator("explained_variance_report")
    @classmethod
    def _known_report(cls, value: list[str]) -> list[str]:
        return check_report_names(value)


@dataclass
class FVUReconstructionQualityMetrics(ReconstructionQualityMetrics):
    """SAEBench's reconstruction metrics plus the definition used and all reported values."""

    explained_variance_definition: str = Field(
        default=DEFAULT_DEFINITION,
        title="Explained Variance Definition",
        description="Name of the FVU definition behind `explained_variance`.",
    )
    explained_variance_by_definition: dict[str, float] = Field(
        default_factory=dict,
        title="Explained Variance by Definition",
        description="{definition name: 1 − FVU} for the selected definition and "
        "`explained_variance_report`, on the same tokens.",
    )
    explained_variance_excluded_tokens: int = Field(
        default=0,
        title="Tokens Excluded from Explained Variance",
        description="Tokens left out of explained variance by "
        "`explained_variance_exclude_norm_above` (0 when unset).",
    )

    # SAEBench keeps metrics flat; the one mapping here is a table of scalars.
    @model_validator(mode="after")
    @classmethod
    def validate_dict(cls, data: Any) -> Any:
        for name, value in asdict(data).items():
            if isinstance(value, dict) and name != "explained_variance_by_definition":
                raise ValueError(f"Metric {name!r} must be a scalar, got a dict.")
        return data


@dataclass
class FVUCoreMetricCategories(CoreMetricCategories):
    reconstruction_quality: FVUReconstructionQualityMetrics = Field(
        title="Reconstruction Quality",
        description="Metrics related to how well the SAE reconstructs the original activation",
    )


@dataclass
class FVUCoreEvalOutput(CoreEvalOutput):
    """SAEBench's core eval output with the FVU definition in config and metrics."""

    eval_config: FVUCoreEvalConfig
    eval_result_metrics: FVUCoreMetricCategories


def output_json_schema() -> dict[str, Any]:
    """JSON schema of :class:`FVUCoreEvalOutput` (shipped as ``schemas/...json``)."""
    return TypeAdapter(FVUCoreEvalOutput).json_schema()


# ----------------------------------------------------------------------------- observing


class _Observer:
    """Pairs each ``sae.encode(x)`` with the ``sae.decode`` of its output, masks like
    SAEBench and feeds the accumulator."""

    def __init__(self, acc: FVUAccumulator, ignore_tokens: Any, selection: Selection) -> None:
        self.acc = acc
        self.ignore_tokens = ignore_tokens
        self.selection = selection
        self.excluded = 0
        self.tokens: torch.Tensor | None = None
        self.token_batches = 0
        self.observed = 0
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._depth = 0

    def _mask(self) -> torch.Tensor:
        # SAEBench 0.6.0 get_sparsity_and_variance_metrics, the same expression.
        tokens = self.tokens
        assert tokens is not None
        if len(self.ignore_tokens) > 0:
            return torch.logical_not(
                torch.any(
                    torch.stack([tokens == token for token in self.ignore_tokens], dim=0),
                    dim=0,
                )
            )
        return torch.ones_like(tokens, dtype=torch.bool)

    def wrap_tokens(self, original: Any) -> Any:
        def get_batch_tokens(*args: Any, **kwargs: Any) -> torch.Tensor:
            tokens = original(*args, **kwargs)
            self.tokens = tokens
            self.token_batches += 1
            return tokens

        return get_batch_tokens

    def wrap_encode(self, original: Any) -> Any:
        def encode(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if self._depth:
                return original(x, *args, **kwargs)
            self._depth += 1
            try:
                feats = original(x, *args, **kwargs)
            finally:
                self._depth -= 1
            self._pending = (x, feats)
            return feats

        return encode

    def wrap_decode(self, original: Any) -> Any:
        def decode(feats: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            self._depth += 1
            try:
                out = original(feats, *args, **kwargs)
            finally:
                self._depth -= 1
            pending = self._pending
            if self._depth == 0 and pending is not None and feats is pending[1]:
                self._pending = None
                self.observed += 1
                x = pending[0]
                mask = self._mask().to(x.device)
                by_norm = self.selection.keep(x)
                if by_norm is not None:
                    self.excluded += int((mask & ~by_norm).sum())
                    mask = mask & by_norm
                try:
                    self.acc.update(x, out, mask)
                except ValueError as err:
                    raise ValueError(
                        f"sae_fvu_plugin, SAEBench eval batch {self.observed}: {err}"
                    ) from err
            return out

        return decode


@contextmanager
def _instance_override(obj: Any, name: str, value: Any) -> Iterator[None]:
    had = name in vars(obj)
    old = vars(obj).get(name)
    object.__setattr__(obj, name, value)
    try:
        yield
    finally:
        if had:
            object.__setattr__(obj, name, old)
        else:
            object.__delattr__(obj, name)


def _sparsity_and_variance(*args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    original = _SAEBENCH.original("get_sparsity_and_variance_metrics")
    bound = inspect.signature(original).bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    if not a["compute_variance_metrics"]:
        return original(*args, **kwargs)
    run = current_run(_SAEBENCH.defaults)
    acc = run.selection.accumulator()
    sae, store = a["sae"], a["activation_store"]
    obs = _Observer(acc, a["ignore_tokens"], run.selection)
    with (
        _instance_override(store, "get_batch_tokens", obs.wrap_tokens(store.get_batch_tokens)),
        _instance_override(sae, "encode", obs.wrap_encode(sae.encode)),
        _instance_override(sae, "decode", obs.wrap_decode(sae.decode)),
    ):
        metrics, feature_metrics = original(*args, **kwargs)
    if obs.observed != obs.token_batches:
        raise RuntimeError(
            f"sae_fvu_plugin saw {obs.observed} encode→decode pairs for {obs.token_batches} "
            f"SAEBench batches with {type(sae).__name__}; its explained variance would be "
            "incomplete. Report this SAE class; sae_fvu_plugin.saebench.disable() restores "
            "stock SAEBench."
        )
    ev = ordered_explained_variance(acc, run.selection)
    if "saebench_0_6" in ev and run.selection.exclude_norm_above is None:
        ev["saebench_0_6"] = float(metrics["explained_variance"])  # SAEBench's own number
    metrics["explained_variance"] = ev[run.selection.definition]
    run.by_definition = ev
    run.excluded_tokens = obs.excluded
    return metrics, feature_metrics


def _upgrade_config(config: Any, quality: dict[str, Any]) -> FVUCoreEvalConfig:
    if isinstance(config, FVUCoreEvalConfig):
        return config
    definition = quality.get("explained_variance_definition", _SAEBENCH.defaults.definition)
    report = [k for k in quality.get("explained_variance_by_definition", {}) if k != definition]
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    return FVUCoreEvalConfig(
        **values, explained_variance_definition=definition, explained_variance_report=report
    )


def _save_single_eval_result(result: dict[str, Any], *args: Any, **kwargs: Any) -> str:
    original = _SAEBENCH.original("save_single_eval_result")
    quality = result.get("metrics", {}).get("reconstruction_quality", {})
    result = dict(result)
    result["eval_cfg"] = _upgrade_config(result["eval_cfg"], quality)
    return original(result, *args, **kwargs)


_SAEBENCH = Integration(
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
)


def enable(
    default_definition: str = DEFAULT_DEFINITION, default_report: Sequence[str] = ()
) -> None:
    """Make SAEBench's core eval report ``explained_variance`` under a chosen definition.

    An :class:`FVUCoreEvalConfig` carries its own choice; a stock ``CoreEvalConfig`` (as
    ``multiple_evals`` builds) gets ``default_definition`` / ``default_report``.
    Idempotent; calling it again updates the defaults.
    """
    _SAEBENCH.enable(default_definition, default_report)


def disable() -> None:
    """Restore stock SAEBench (idempotent)."""
    _SAEBENCH.disable()


def is_enabled() -> bool:
    return _SAEBENCH.patch.is_enabled


def enabled(
    default_definition: str = DEFAULT_DEFINITION, default_report: Sequence[str] = ()
) -> AbstractContextManager[None]:
    """``with enabled(): ...`` — enable for the block, then restore the previous state."""
    return _SAEBENCH.enabled(default_definition, default_report)


# ------------------------------------------------------------------- one SAE, end to end


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
) -> dict[str, Any]:
    """SAEBench's ``run_evals`` on ``sae`` with the plugin enabled, tokens from ``dataset``
    (a Hugging Face dataset or name; pretokenised rows are used as they are), as
    ``multiple_evals`` does it; optionally saved with SAEBench's ``save_single_eval_result``.

    ``ignore_tokens`` defaults to the tokenizer's BOS, EOS and PAD ids, like
    ``multiple_evals``. ``extra``: further top-level keys for the result JSON (e.g. the
    held-out report). Returns SAEBench's result dict (``metrics``, ``feature_metrics``).
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
    with enabled():
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
        if out_json is not None:
            if (
                config.compute_featurewise_density_statistics
                and config.compute_featurewise_weight_based_metrics
            ):
                metrics["misc_metrics"] = _core.calculate_misc_metrics(feature_metrics)
            Path(out_json).parent.mkdir(parents=True, exist_ok=True)
            _core.save_single_eval_result(
                _core.replace_nans_with_negative_one(result),
                _core.get_eval_uuid(),
                _core.get_sae_lens_version(),
                _core.get_sae_bench_version(),
                str(out_json),
                sae,
            )
            if extra:
                saved = json.loads(Path(out_json).read_text())
                Path(out_json).write_text(json.dumps(saved | extra, indent=2))
    return result


# ----------------------------------------------------------------------------------- CLI


def arg_parser() -> argparse.ArgumentParser:
    """SAEBench's core CLI arguments plus the two explained-variance options."""
    parser = _core.arg_parser()
    parser.description = "SAEBench core eval with a selectable explained-variance definition"
    parser.add_argument(
        "--explained_variance_definition",
        default=DEFAULT_DEFINITION,
        help=f"Definition reported as explained_variance (default {DEFAULT_DEFINITION}); "
        f"one of {', '.join(DEFINITIONS)}.",
    )
    parser.add_argument(
        "--explained_variance_report",
        nargs="*",
        default=[],
        help="Further definitions to report alongside ('all' for every one).",
    )
    return parser


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = arg_parser().parse_args(argv)
    with enabled(args.explained_variance_definition, args.explained_variance_report):
        results: list[dict[str, Any]] = _core.run_evaluations(args)
    print("Evaluation complete. All results have been saved incrementally.")
    return results


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(output_json_schema(), indent=2) + "\n")
    return path


if __name__ == "__main__":
    main()
