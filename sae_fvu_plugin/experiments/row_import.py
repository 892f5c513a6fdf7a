"""Rows of an earlier run's ``results.json`` taken into this run's row cache (``--import-rows``).

A long experiment's parts can run on different machines or sessions (the original-scale
grid takes hours); its cache may not travel, but its ``results.json`` does (it is
committed). A row is imported for a point of this grid only when it is the row this run
would compute:

* its file under the earlier run's settings (:func:`.keys.row_file`: data, fit and eval
  keys, so model, text, split seed, token counts, the method's config fields and eval
  settings) is the file under this run's settings;
* its method's version (``method_version``, 1 when the row predates it) and that of the fit
  it starts from (``base_version``, 1 when absent) are this run's (:func:`.keys.versions`:
  a fit whose fix raised the version is recomputed, not imported);
* a real-data row's held-out eval contexts are this run's, context id by context id (and
  with them the bootstrap's per-context weights, keyed by the seed and each context's
  position in eval order: paired intervals against freshly computed rows stay valid).

A row that passes every check but is of an *older* version of its fit (or of the fit it
starts from) is not imported into the cache: it is kept aside as **superseded**
(``rows/superseded/``, the row marked ``superseded``, e.g. "method_version 1 (here 3)").
``--cached-only`` reports it, marked, where no current row exists, so a long grid's
committed numbers stay visible until their refit; any run without ``--cached-only``
computes the point afresh, and its own row takes the superseded one's place.

Nothing already cached is overwritten; each imported row records ``imported_from`` and,
where known, the machine that computed it (``computed_on``: its own, or the earlier
results.json's ``machine`` for a row that run computed itself).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..provenance import to_ranges
from ..validate import UsageError
from .keys import row_file, versions
from .points import Point


def _earlier_config(cfg: Any, raw: Any, path: Path) -> Any:
    if not isinstance(raw, dict):
        raise UsageError(f"--import-rows {path}: its 'config' is not an object.")
    names = {f.name for f in dataclasses.fields(cfg)}
    try:
        return dataclasses.replace(cfg, **{k: v for k, v in raw.items() if k in names})
    except (TypeError, ValueError) as err:
        raise UsageError(f"--import-rows {path}: its config is not valid here ({err}).") from None


def _differences(cfg: Any, earlier: Any) -> str:
    skip = {"out", "methods", "cached_only", "import_rows", "device"}
    diffs = [
        f"{f.name} {getattr(earlier, f.name)!r} (here {getattr(cfg, f.name)!r})"
        for f in dataclasses.fields(cfg)
        if f.name not in skip and getattr(earlier, f.name) != getattr(cfg, f.name)
    ]
    return ", ".join(diffs) or "another cache key (this version's keys differ)"


def _versions_of(row: dict[str, Any]) -> dict[str, int]:
    """A row's versions in :func:`.keys.versions`' form (1 where the row predates them)."""
    out = {"method_version": int(row.get("method_version", 1))}
    if row.get("base_version", 1) != 1:
        out["base_version"] = int(row["base_version"])
    return out


def _version_change(old: dict[str, int], new: dict[str, int]) -> str:
    """ "method_version 1 (here 3)": the versions of a row that differ from this run's."""
    diff = {k: v for k, v in new.items() if old.get(k, 1) != v} or new
    return ", ".join(f"{k} {old.get(k, 1)} (here {v})" for k, v in diff.items())


def _older(old: dict[str, int], new: dict[str, int]) -> bool:
    """Whether a row of versions ``old`` predates this run's ``new`` (none is newer)."""
    return all(old.get(k, 1) <= new.get(k, 1) for k in {*old, *new})


def _write(target: Path, rows: list[dict[str, Any]]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows))
    os.replace(tmp, target)


def superseded_file(rows_dir: Path, name: str) -> Path:
    """Where a superseded row of the row file ``name`` is kept (``rows_dir`` is the cache)."""
    return rows_dir / "superseded" / name


def _computed_on(row: dict[str, Any], machine: dict[str, Any]) -> dict[str, Any]:
    """The row's own ``computed_on``; else, for a row the earlier run computed itself (not
    one it had imported in turn), the machine its results.json records; else nothing."""
    if row.get("computed_on"):
        return {"computed_on": row["computed_on"]}
    if not row.get("imported_from") and machine.get("name"):
        return {"computed_on": machine["name"]}
    return {}


def import_rows(
    path: str | Path,
    cfg: Any,
    points: Sequence[Point],
    rows_dir: Path,
    eval_ids: Sequence[int],
) -> str:
    """Write the rows of ``path`` (a ``results.json``) that ``points`` would compute under
    ``cfg`` into ``rows_dir``; returns the line that says what was imported and what not.
    ``eval_ids``: this run's held-out eval context ids. A file that is not a results JSON
    is a :class:`UsageError`; rows under other settings are listed, not imported."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        raw_rows, raw_cfg = data["rows"], data["config"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(
            f"--import-rows {path}: not a readable results.json with 'config' and 'rows' "
            f"({type(err).__name__}: {err}). Pass the results.json an experiment wrote."
        ) from None
    if not isinstance(raw_rows, list) or not all(
        isinstance(r, dict) and isinstance(r.get("name"), str) for r in raw_rows
    ):
        raise UsageError(f"--import-rows {path}: 'rows' must be a list of named rows.")
    earlier = _earlier_config(cfg, raw_cfg, path)
    machine = data.get("machine") if isinstance(data.get("machine"), dict) else {}
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in raw_rows:
        by_name.setdefault(r["name"], []).append(r)
    eval_contexts = to_ranges(sorted(int(i) for i in eval_ids))
    imported, cached, refused, superseded = [], [], [], []
    for point in points:
        rows = by_name.pop(point.name, None)
        if rows is None:
            continue
        target = rows_dir / row_file(cfg, point)
        version = versions(cfg, point)
        if target.is_file():
            cached.append(point.name)
        elif row_file(earlier, point) != target.name:
            refused.append(f"{point.name}: computed under {_differences(cfg, earlier)}")
        elif any(
            r.get("source") == "real"
            and (r.get("held_out") or {}).get("eval_contexts") != eval_contexts
            for r in rows
        ):
            refused.append(f"{point.name}: scored on other held-out contexts")
        elif any(_versions_of(r) != version for r in rows):
            change = _version_change(_versions_of(rows[0]), version)  # e.g. its base's
            if not all(_older(_versions_of(r), version) for r in rows):
                refused.append(f"{point.name}: computed by another version of its fit ({change})")
                continue
            _write(
                superseded_file(rows_dir, target.name),
                [
                    {
                        **r,
                        "imported_from": str(path),
                        "superseded": change,
                        **_computed_on(r, machine),
                    }
                    for r in rows
                ],
            )
            superseded.append(f"{point.name} ({change})")
        else:
            rows = [{**r, "imported_from": str(path), **_computed_on(r, machine)} for r in rows]
            _write(target, rows)
            imported.append(point.name)
    line = (
        f"--import-rows {path}: {len(imported)} models imported"
        + (f" ({', '.join(imported)})" if imported else "")
        + (f"; {len(cached)} already cached here (kept)" if cached else "")
        + (f"; {len(by_name)} not in this grid" if by_name else "")
    )
    if superseded:
        line += (
            f"; {len(superseded)} computed by an older version of their fit, kept as "
            "superseded (reported, marked, by --cached-only until refitted; not cached): "
            + "; ".join(superseded)
        )
    if refused:
        line += f"; {len(refused)} not imported: " + "; ".join(refused)
    return line
