"""Held-out evaluation: SAEBench's unmodified core eval (plugin enabled) of a saved SAE on
contexts checked to be disjoint from the contexts it was fitted on.

The one path both ``sae-fvu eval`` and the experiments take: the SAE's recorded
:class:`~sae_fvu_plugin.provenance.Provenance` is checked against the eval corpus (same
text at the fit ids, no shared context), the check's report is written into the result
JSON (``held_out``) and returned with the metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .data import TextSplit
from .provenance import Provenance, check_overlap
from .saebench import FVUCoreEvalConfig, run_core_eval


def held_out_eval(
    sae: Any,
    model: Any,
    split: TextSplit,
    config: FVUCoreEvalConfig,
    *,
    rows: Any = None,
    out_json: str | Path | None = None,
    sae_release: str = "local",
    sae_id: str = "sae",
    device: str = "cpu",
    allow_overlap: bool = False,
    reuse_groups: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """SAEBench's ``run_evals`` of ``sae`` on ``split``'s eval contexts (or ``rows``, a
    slice of them); :class:`~sae_fvu_plugin.provenance.OverlapError` if they overlap the
    SAE's fit contexts (unless ``allow_overlap``). Returns the :func:`run_core_eval` result
    with ``held_out`` (the overlap report) added."""
    from datasets import Dataset

    provenance = Provenance.from_metadata(sae.cfg.metadata)
    report = check_overlap(
        provenance,
        split.eval_index.tolist(),
        fit_hash_now=None if provenance is None else split.contexts_hash(provenance.fit_ids),
        allow_overlap=allow_overlap,
    )
    eval_rows = split.eval if rows is None else rows
    result = run_core_eval(
        sae,
        model,
        Dataset.from_dict({"input_ids": eval_rows.tolist()}),
        config,
        out_json=out_json,
        sae_release=sae_release,
        sae_id=sae_id,
        device=device,
        extra={"held_out": report.to_dict()},
        reuse_groups=reuse_groups,
    )
    result["held_out"] = report.to_dict()
    return result
