"""``sae-fvu eval``: SAEBench's core eval of a saved SAE (a local SAELens folder — any
architecture, clustering SAEs included — or a SAELens registry release with ``--sae-id``,
which needs the hub), with the plugin reporting the chosen definitions and intervals.

For an SAE that records its provenance (every ``sae-fvu fit`` and experiment fit does),
the eval contexts are drawn disjoint from its fit contexts and the result JSON records
both and their overlap (0); without provenance a warning says overlap cannot be checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..validate import UsageError, check_int, resolve_device
from .commands import EvalCommand


@dataclass(frozen=True)
class EvalPlan:
    """What an eval command resolves to before anything heavy is loaded."""

    local: bool
    metadata: dict[str, Any]
    model_name: str
    dataset: str
    hook: str
    context_size: int
    provenance: Any  # Provenance or None
    out_json: Path


def output_target(cmd: EvalCommand) -> Path:
    """Where the result JSON goes: ``--output-json`` (a folder: ``eval_results.json`` in
    it) or the SAE folder's ``eval_results.json``; a :class:`UsageError` before any work if
    it cannot be written there."""
    import os

    out = Path(cmd.output_json) if cmd.output_json else Path(cmd.sae) / "eval_results.json"
    if out.is_dir():
        out = out / "eval_results.json"
    if out.is_dir():
        raise UsageError(f"--output-json: {out} is a folder; name a JSON file.")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--output-json: {parent} is a file, so {out} cannot be created.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--output-json: cannot write to {parent} (permission denied).")
    return out


def plan_eval(cmd: EvalCommand, metadata: dict[str, Any] | None = None) -> EvalPlan:
    """Check the command and the saved SAE's cfg.json (definitions, hook, metadata) and
    resolve model, dataset and context size — a :class:`UsageError` before any loading.
    ``metadata``: a registry SAE's, once it is loaded."""
    from ..definitions import DEFINITIONS
    from ..hooks import OFFLINE_DATASET, OFFLINE_MODEL
    from ..provenance import Provenance
    from ..sae_io import read_saved_cfg

    local = Path(cmd.sae).exists() or cmd.sae_id is None
    try:
        for name in (cmd.definition, *(n for n in cmd.report if n != "all")):
            DEFINITIONS[name]  # UnknownDefinitionError lists the valid names
    except ValueError as err:
        raise UsageError(str(err)) from None
    where = f"{cmd.sae}/cfg.json" if local else f"{cmd.sae}/{cmd.sae_id}"
    if metadata is None:
        metadata = (read_saved_cfg(cmd.sae) if local else {}).get("metadata") or {}
    meta = metadata
    if not isinstance(meta, dict):
        raise UsageError(f"{where}: metadata must be a JSON object, got {type(meta).__name__}.")
    try:
        provenance = Provenance.from_metadata(meta)
        context_size = check_int("metadata.context_size", meta.get("context_size") or 128, 2)
    except (ValueError, TypeError) as err:
        raise UsageError(
            f"{where}: {err} Restore the file or re-fit the SAE (an SAE without provenance is "
            "evaluated with a warning that overlap cannot be checked)."
        ) from None
    hook = meta.get("hook_name")
    if (local or meta) and (not isinstance(hook, str) or not hook):
        raise UsageError(f"{where} names no hook_name; it cannot be evaluated.")
    dataset = (
        cmd.dataset
        or (provenance.dataset if provenance else None)
        or meta.get("dataset_path")
        or OFFLINE_DATASET
    )
    return EvalPlan(
        local=local,
        metadata=meta,
        model_name=cmd.model or meta.get("model_name") or OFFLINE_MODEL,
        dataset=dataset,
        hook=str(hook),
        context_size=context_size,
        provenance=provenance,
        out_json=output_target(cmd),
    )


def eval_command(cmd: EvalCommand) -> dict[str, Any]:
    """SAEBench core eval of a saved SAE on held-out contexts; prints the reconstruction
    metrics and where the result JSON went."""

    from ..data import load_model, split_contexts
    from ..held_out import held_out_eval
    from ..hooks import model_hook_width
    from ..sae_io import load_registry_sae, load_saved_sae
    from ..saebench import core_eval_config

    plan = plan_eval(cmd)
    device = resolve_device(cmd.device)
    if plan.local:
        from .. import clustering  # noqa: F401  (registers the clustering architectures)

        sae: Any = None
    else:
        sae = load_registry_sae(cmd.sae, str(cmd.sae_id), device)
        plan = plan_eval(cmd, sae.cfg.metadata.to_dict())
    model = load_model(plan.model_name, device=device, n_ctx=max(plan.context_size, 1024))
    width = model_hook_width(model, plan.hook)
    if sae is None:
        sae = load_saved_sae(cmd.sae, device=device, expected_d_in=width)
    provenance = plan.provenance
    split = split_contexts(
        plan.dataset,
        model.tokenizer,
        context_size=plan.context_size,
        n_fit=0,
        n_eval=(cmd.eval_batches + cmd.recon_batches) * cmd.batch_prompts,
        seed=provenance.split_seed or 0 if provenance is not None else 0,
        fit_ids=provenance.fit_ids if provenance is not None else None,
    )
    config = core_eval_config(
        n_eval_batches=cmd.eval_batches,
        n_reconstruction_batches=cmd.recon_batches,
        batch_size_prompts=cmd.batch_prompts,
        model_name=plan.model_name,
        dataset=plan.dataset,
        context_size=plan.context_size,
        explained_variance_definition=cmd.definition,
        explained_variance_report=list(cmd.report),
        explained_variance_exclude_norm_above=cmd.exclude_norm_above,
        explained_variance_bootstrap=cmd.bootstrap,
        explained_variance_ci_level=cmd.ci_level,
        explained_variance_seed=cmd.seed,
    )
    out_json = plan.out_json
    res = held_out_eval(
        sae,
        model,
        split,
        config,
        out_json=out_json,
        sae_release="local" if plan.local else cmd.sae,
        sae_id=Path(cmd.sae).name,
        device=device,
        allow_overlap=cmd.allow_overlap,
    )
    report(res, len(split.eval_index), out_json)
    return res


def report(res: dict[str, Any], n_contexts: int, out_json: Path) -> None:
    """A few lines: the chosen definition's explained variance with its interval, every
    reported definition, SAEBench's other reconstruction and sparsity numbers, and where the
    full JSON (every replicate, provenance) went."""
    print("\n".join(summary_lines(res["metrics"])))
    overlap = res["held_out"]["overlap"]
    shown = "not checked (no provenance)" if overlap is None else overlap
    print(f"held-out contexts: {n_contexts}; overlap with fit contexts: {shown}")
    print(f"SAEBench result JSON: {out_json}")


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """``explained variance (fvu_a) = 0.8521 [0.8400, 0.8630] 95 % CI, 2,048 tokens`` for
    the chosen definition, then one line per other reported definition and one of
    SAEBench's own metrics."""
    rq = metrics["reconstruction_quality"]
    chosen = rq.get("explained_variance_definition", "fvu_a")
    evs = rq.get("explained_variance_by_definition") or {chosen: rq.get("explained_variance")}
    cis = rq.get("explained_variance_ci") or {}
    notes = rq.get("explained_variance_ci_note") or {}
    level = rq.get("explained_variance_ci_level")
    tokens = (rq.get("explained_variance_provenance") or {}).get(chosen, {}).get("tokens")

    def one(name: str) -> str:
        ev, ci = evs.get(name), cis.get(name)
        text = "nan (see explained_variance_note)" if ev is None else f"{ev:.4f}"
        if ci is not None:
            text += f" [{ci[0]:.4f}, {ci[1]:.4f}]"
        elif name in notes:
            text += f" (no interval: {notes[name]})"
        return text

    head = f"explained variance ({chosen}) = {one(chosen)}"
    if level is not None and cis.get(chosen) is not None:
        head += f" {level:.0%} CI"
    if tokens:
        head += f", {tokens:,} tokens"
    lines = [head]
    lines += [f"  {name:<20} {one(name)}" for name in evs if name != chosen]
    saebench = {
        "L0": metrics.get("sparsity", {}).get("l0"),
        "cossim": rq.get("cossim"),
        "mse": rq.get("mse"),
        "KL-div score": metrics.get("model_behavior_preservation", {}).get("kl_div_score"),
        "CE-loss score": metrics.get("model_performance_preservation", {}).get("ce_loss_score"),
    }
    shown = [f"{k} {v:.4g}" for k, v in saebench.items() if isinstance(v, (int, float))]
    if shown:
        lines.append("SAEBench: " + ", ".join(shown))
    return lines
