"""``sae-fvu compare A.json B.json``: two SAEBench results (written with the plugin and
bootstrap replicates) side by side, per definition, with the paired difference and its
interval — or why the two cannot be paired.

Paired means: the same eval tokens, resampled with the same weights. The result JSONs
record, per definition, the tokens counted, the eval batches, the bootstrap B and seed and
a fingerprint of the units (eval contexts); all must agree. The difference's interval is
estimate ± z · sd of the replicate-wise differences EV_A,b − EV_B,b (the plugin's default
interval method, see :func:`sae_fvu_plugin.bootstrap.normal_interval`).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from statistics import NormalDist, stdev
from typing import Any

from ._cli import UsageError, run_main


def load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p} does not exist; give two SAEBench result JSONs.")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{p} is not JSON ({err}).") from None
    rq = (data.get("eval_result_metrics") or {}).get("reconstruction_quality")
    if not isinstance(rq, dict) or "explained_variance_by_definition" not in rq:
        raise UsageError(
            f"{p} has no explained_variance_by_definition: evaluate with the plugin enabled "
            "(sae-fvu eval, or sae_fvu_plugin.saebench.enable())."
        )
    return rq


def pairing_problem(a: dict[str, Any], b: dict[str, Any], name: str) -> str:
    if not a.get("explained_variance_replicates") or not b.get("explained_variance_replicates"):
        return "one of them has no bootstrap replicates (explained_variance_bootstrap = 0)"
    pa = (a.get("explained_variance_provenance") or {}).get(name, {})
    pb = (b.get("explained_variance_provenance") or {}).get(name, {})
    for key in ("tokens", "batches", "bootstrap", "seed", "units_fingerprint"):
        if pa.get(key) != pb.get(key):
            return f"{key} differs ({pa.get(key)} vs {pb.get(key)})"
    return ""


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    """{definition: (low, high, estimate)} of EV(A) − EV(B) for every paired definition."""
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
        diffs = [x - y for x, y in zip(ra, rb, strict=True) if math.isfinite(x - y)]
        est = a["explained_variance_by_definition"][n] - b["explained_variance_by_definition"][n]
        half = NormalDist().inv_cdf((1 + level) / 2) * (
            stdev(diffs) if len(diffs) > 1 else math.nan
        )
        out[n] = (est - half, est + half, est)
    return out


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float, float]]:
    def _run(argv: list[str] | None) -> dict[str, tuple[float, float, float]]:
        args = sys.argv[1:] if argv is None else argv
        if len(args) != 2 or any(a.startswith("-") for a in args):
            raise UsageError("usage: sae-fvu compare A.json B.json")
        a, b = load(args[0]), load(args[1])
        diffs = compare(a, b)
        level = float(a.get("explained_variance_ci_level") or 0.95)
        pct = f"{level:.0%}"
        print(f"explained variance, {pct} bootstrap intervals; A = {args[0]}, B = {args[1]}")
        print(f"{'definition':<20} {'A':>22} {'B':>22} {'paired difference A − B':>34}")
        for n, (lo, hi, est) in diffs.items():
            ca = a.get("explained_variance_ci", {}).get(n, [math.nan, math.nan])
            cb = b.get("explained_variance_ci", {}).get(n, [math.nan, math.nan])
            va, vb = (
                a["explained_variance_by_definition"][n],
                b["explained_variance_by_definition"][n],
            )
            sig = "" if lo <= 0 <= hi else "  *"
            print(
                f"{n:<20} {va:8.4f} [{ca[0]:.4f}, {ca[1]:.4f}] {vb:8.4f} [{cb[0]:.4f}, {cb[1]:.4f}] "
                f"{est:+10.5f} [{lo:+.5f}, {hi:+.5f}]{sig}"
            )
        print("(* the interval of the paired difference excludes 0)")
        return diffs

    result: dict[str, tuple[float, float, float]] = run_main(_run, argv)
    return result


if __name__ == "__main__":
    main()
