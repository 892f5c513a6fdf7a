"""What every experiment writes: result rows as CSV, aligned text tables, JSON-safe copies
and error-bar plots. Pure helpers over rows (dicts), no model or SAE."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

DEFS = ("fvu_a", "fvu_b", "fvu_per_dim", "saebench_0_6")


def plain(obj: Any) -> Any:
    """JSON-friendly copy (dataclasses, tensors, NaN → None)."""
    if hasattr(obj, "__dataclass_fields__"):
        return plain(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # a tensor or an array
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_csv(
    rows: list[dict[str, Any]], path: Path, cols: Sequence[str], *, intervals: bool = False
) -> None:
    """``cols`` of every row, then every definition in ``ev_all`` (``ev_all_<name>``) and,
    with ``intervals``, each main definition's interval as JSON (``ci_<name>``)."""
    names = sorted({n for r in rows for n in r["ev_all"]})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [*cols, *(f"ev_all_{n}" for n in names), *(f"ci_{d}" for d in DEFS if intervals)]
        )
        for r in rows:
            ci = r.get("ev_ci") or {}
            w.writerow(
                [json.dumps(r.get(c)) if c == "params" else r.get(c) for c in cols]
                + [r["ev_all"].get(n) for n in names]
                + [json.dumps(ci.get(d)) if ci.get(d) else None for d in DEFS if intervals]
            )


def aligned(title: str, table: list[list[str]]) -> str:
    """``title`` and the rows of ``table`` (the first is the header), right-aligned."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [title]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(lines)


def half_width(row: dict[str, Any], defn: str) -> str:
    """Half the width of the row's interval of ``defn`` ('-' without one)."""
    ci = (row.get("ev_ci") or {}).get(defn)
    return "-" if not ci else f"{(ci[1] - ci[0]) / 2:.4f}"


def draw_with_intervals(
    ax: Any, x: list[float], rows: list[dict[str, Any]], key: str, **kw: Any
) -> None:
    """Explained variance ``ev_<key>`` of ``rows`` against ``x``, with each row's bootstrap
    interval as an error bar when every row has one."""
    y = [r[f"ev_{key}"] for r in rows]
    cis = [(r.get("ev_ci") or {}).get(key) for r in rows]
    fmt = kw.pop("fmt", "")
    if cis and all(c is not None for c in cis):
        lo = [max(0.0, v - c[0]) for v, c in zip(y, cis, strict=True) if c is not None]
        hi = [max(0.0, c[1] - v) for v, c in zip(y, cis, strict=True) if c is not None]
        ax.errorbar(x, y, yerr=[lo, hi], fmt=fmt, capsize=2, **kw)
    else:
        ax.plot(x, y, fmt, **kw)
