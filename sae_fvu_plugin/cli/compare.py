"""``sae-fvu compare A.json B.json``: two SAEBench results (written with the plugin and
bootstrap replicates) side by side, per definition, with the paired difference and its
interval — or why the two cannot be paired.

Paired means: the same eval tokens, resampled with the same weights. The result JSONs
record, per definition, a fingerprint of the eval tokens' content (sha256 of the token ids
in eval order), the model and hook, the tokens counted, the eval batches, the bootstrap B
and seed and a fingerprint of the units (eval contexts); all must agree, and a result that
lacks any of them is not paired. The difference's interval is
:func:`sae_fvu_plugin.bootstrap.paired_interval` of the replicates. A result whose
estimate or replicates are not finite numbers is refused, never computed with.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..validate import UsageError

PAIRING_KEYS = (
    "tokens_fingerprint",  # sha256 of the eval token ids in eval order: the same text
    "model",
    "hook",
    "tokens",
    "batches",
    "bootstrap",
    "seed",
    "units_fingerprint",
)


def load(path: str | Path) -> dict[str, Any]:
    """The ``reconstruction_quality`` of a result JSON written with the plugin, checked
    field by field (a :class:`UsageError` naming the field otherwise)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p} does not exist or is not a file; give two SAEBench result JSONs.")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{p} is not JSON ({err}).") from None
    if not isinstance(data, dict):
        raise UsageError(f"{p} holds a JSON {type(data).__name__}, not a SAEBench result object.")
    if "eval_result_metrics" not in data and "rows" in data:
        raise UsageError(
            f"{p} is an experiment's results.json, not one eval result; compare two files from "
            "its results/ folder."
        )
    note = str((data.get("eval_config") or {}).get("note") or "")
    if note.startswith("Gaussian control"):
        raise UsageError(
            f"{p} is a Gaussian-control result (evaluated directly on samples, no eval tokens); "
            "it pairs with no other result. Compare two results on the model's text."
        )
    rq = (data.get("eval_result_metrics") or {}).get("reconstruction_quality")
    if not isinstance(rq, dict) or "explained_variance_by_definition" not in rq:
        raise UsageError(
            f"{p} has no explained_variance_by_definition: it was not written with the plugin "
            "enabled (sae-fvu eval, or sae_fvu_plugin.saebench.enable())."
        )
    _check_fields(p, rq)
    return rq


def _check_fields(p: Path, rq: dict[str, Any]) -> None:
    evs = rq["explained_variance_by_definition"]
    if not isinstance(evs, dict) or not evs:
        raise UsageError(f"{p}: explained_variance_by_definition must map definitions to values.")
    level = rq.get("explained_variance_ci_level")
    level = 0.95 if level is None else level
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise UsageError(f"{p}: explained_variance_ci_level must be in (0, 1), got {level!r}.")
    reps = rq.get("explained_variance_replicates") or {}
    if not isinstance(reps, dict):
        raise UsageError(f"{p}: explained_variance_replicates must map definitions to lists.")
    for name, values in reps.items():
        if not isinstance(values, list) or not all(
            v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        ):
            raise UsageError(
                f"{p}: explained_variance_replicates[{name!r}] must be a list of numbers "
                "(null where a replicate is undefined)."
            )


def pairing_problem(a: dict[str, Any], b: dict[str, Any], name: str) -> str:
    """Why definition ``name`` of results ``a`` and ``b`` cannot be paired ('' if it can)."""
    for side, rq in (("A", a), ("B", b)):
        est = rq["explained_variance_by_definition"].get(name)
        if not isinstance(est, (int, float)) or not math.isfinite(est):
            note = rq.get("explained_variance_note")
            return f"{side}'s {name} is not a finite number ({est!r}{'; ' + note if note else ''})"
        reps = (rq.get("explained_variance_replicates") or {}).get(name)
        if not reps:
            return (
                f"{side} has no bootstrap replicates of {name} (explained_variance_bootstrap = 0)"
            )
        if len(reps) < 2 or not all(v is not None and math.isfinite(v) for v in reps):
            return f"{side}'s replicates of {name} are fewer than 2 or not all finite"
    pa = (a.get("explained_variance_provenance") or {}).get(name, {})
    pb = (b.get("explained_variance_provenance") or {}).get(name, {})
    for key in PAIRING_KEYS:
        if pa.get(key) is None or pb.get(key) is None:
            return f"{key} is not recorded for {name} in {'A' if pa.get(key) is None else 'B'}"
        if pa.get(key) != pb.get(key):
            return f"{key} differs ({pa.get(key)} vs {pb.get(key)})"
    return ""


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    """{definition: (low, high, estimate)} of EV(A) − EV(B) for every paired definition at
    A's ``explained_variance_ci_level``; a :class:`UsageError` when none is paired."""
    from ..bootstrap import paired_interval

    level = float(a.get("explained_variance_ci_level") or 0.95)
    names = [
        n
        for n in a["explained_variance_by_definition"]
        if n in b["explained_variance_by_definition"]
    ]
    problems = {n: pairing_problem(a, b, n) for n in names}
    if not names or all(problems.values()):
        why = next(iter(problems.values()), "they report no common definition")
        raise UsageError(f"the two results are not paired: {why}.")
    out = {}
    for n in names:
        if problems[n]:
            continue
        ra, rb = a["explained_variance_replicates"][n], b["explained_variance_replicates"][n]
        est = a["explained_variance_by_definition"][n] - b["explained_variance_by_definition"][n]
        lo, hi = paired_interval(est, ra, rb, level)
        out[n] = (lo, hi, est)
    return out


def _interval(rq: dict[str, Any], name: str) -> str:
    ci = (rq.get("explained_variance_ci") or {}).get(name)
    if not ci or len(ci) != 2 or not all(isinstance(c, (int, float)) for c in ci):
        return "[      -,       -]"
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def compare_command(paths: list[str]) -> dict[str, tuple[float, float, float]]:
    """Print both values with their intervals (each at its own level) and the paired
    difference with its interval, per paired definition."""
    if len(paths) != 2 or any(a.startswith("-") for a in paths):
        raise UsageError("usage: sae-fvu compare A.json B.json")
    a, b = load(paths[0]), load(paths[1])
    diffs = compare(a, b)
    la = float(a.get("explained_variance_ci_level") or 0.95)
    lb = float(b.get("explained_variance_ci_level") or 0.95)
    levels = f"{la:.0%}" if la == lb else f"A {la:.0%}, B {lb:.0%}; difference {la:.0%}"
    print(f"explained variance, {levels} bootstrap intervals; A = {paths[0]}, B = {paths[1]}")
    print(f"{'definition':<20} {'A':>22} {'B':>22} {'paired difference A − B':>34}")
    for n, (lo, hi, est) in diffs.items():
        va = a["explained_variance_by_definition"][n]
        vb = b["explained_variance_by_definition"][n]
        sig = "  *" if math.isfinite(lo) and not lo <= 0 <= hi else ""
        print(
            f"{n:<20} {va:8.4f} {_interval(a, n)} {vb:8.4f} {_interval(b, n)} "
            f"{est:+10.5f} [{lo:+.5f}, {hi:+.5f}]{sig}"
        )
    print("(* the interval of the paired difference excludes 0)")
    return diffs
