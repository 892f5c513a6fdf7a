"""Checkpoints of a clustering fit: bound to the data's content and to every option that
changes the result, validated on load, written atomically by rank 0 and read by all.

A checkpoint holds the finished stages (centroids and their records), and for the stage in
progress the finished runs of ``n_init``, the best so far, and the running Lloyd state
(centroids, iteration, every row's label and bounds — per rank), so a resumed fit ends
with the identical result. Nothing is written until a loaded payload has been validated;
a refused checkpoint is left as it was.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .lloyd import LloydState, Rows
from .reduce import LocalReducer

FORMAT = 3
KIND = "sae_fvu_plugin.clustering checkpoint"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this fit (other data or options, tampered)."""


def _fail(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"Checkpoint {path}: {what}. Use another checkpoint path or delete this file to "
        "start over; it was not modified."
    )


def save_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Temp file + rename: an interrupted or failed save (disk full, read-only) never
    touches the previous checkpoint, and says which path failed and why."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        why = getattr(err, "strerror", None) or str(err).splitlines()[0]
        raise CheckpointError(
            f"Could not write the checkpoint {path} ({why}); the previous checkpoint, if any, "
            "is intact. Free space or pass another checkpoint path."
        ) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def check_writable(path: Path) -> None:
    """Refuse, before any work, a checkpoint path that cannot be written: one under a file,
    a folder, or in a folder without write permission."""
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        why = f"{folder} is a file, not a folder"
    elif path.is_dir():
        why = "it is a folder"
    elif not os.access(folder, os.W_OK | os.X_OK) or (
        path.exists() and not os.access(path, os.W_OK)
    ):
        why = "permission denied"
    else:
        return
    raise CheckpointError(
        f"Cannot write the checkpoint {path} ({why}); pass a checkpoint path in a writable "
        "folder. Nothing was fitted."
    )


def content_digest(obj: Any) -> str:
    """sha256 of a payload's content (tensors by dtype, shape and bytes; everything else by
    its repr, dict keys sorted): what binds a checkpoint to the numbers it holds."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(o, dict):
            h.update(b"{")
            for k in sorted(o, key=str):
                h.update(repr(k).encode())
                walk(o[k])
            h.update(b"}")
        elif isinstance(o, (list, tuple)):
            h.update(b"[")
            for v in o:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(o).encode())

    walk(obj)
    return h.hexdigest()


def state_payload(state: LloydState, reducer: LocalReducer) -> dict[str, Any]:
    """The Lloyd state with every rank's rows (a collective call: every rank must call)."""
    mine = None
    if state.rows is not None:
        mine = [(r.labels.cpu(), r.upper.cpu(), r.lower.cpu()) for r in state.rows]
    rows = reducer.gather(mine)
    return {
        "centroids": state.centroids.detach().cpu(),
        "iteration": state.iteration,
        "converged": state.converged,
        "history": list(state.history),
        "seconds": list(state.seconds),
        "changed": list(state.changed),
        "scored": list(state.scored),
        "rows": rows,
        "movers": None if state.movers is None else state.movers.cpu(),
    }


class Checkpoint:
    """One fit's checkpoint file (or none: ``path=None`` makes every call a no-op)."""

    def __init__(
        self,
        path: str | Path | None,
        settings: dict[str, Any],
        n_iter: int,
        reducer: LocalReducer,
        local_sizes: list[int],
        *,
        can_extend: bool,
    ) -> None:
        self.path = None if path is None else Path(path)
        problem = ""
        if self.path is not None and reducer.rank == 0:
            try:
                check_writable(self.path)
            except CheckpointError as err:
                problem = str(err)
        problem = reducer.gather(problem)[0]  # the same error on every rank, before any work
        if problem:
            raise CheckpointError(problem)
        self.settings = settings
        self.n_iter = n_iter
        self.reducer = reducer
        self.local_sizes = local_sizes
        self.can_extend = can_extend
        # passes over the data made by the processes before this one (from the loaded
        # checkpoint), and this process's so far (set by the fit): saved as their sum, so
        # a resumed fit records every pass it made, as its seconds
        self.passes_before = 0
        self.passes_now: Callable[[], int] = lambda: 0

    # ------------------------------------------------------------------------- saving

    def save(self, payload: dict[str, Any]) -> None:
        if self.path is not None and self.reducer.rank == 0:
            full = {
                "format": FORMAT,
                "kind": KIND,
                "settings": self.settings,
                "n_iter": self.n_iter,
                "passes": self.passes_before + self.passes_now(),
            } | payload
            save_atomic(self.path, full | {"content_sha256": content_digest(full)})

    def refuse(self, what: str) -> CheckpointError:
        """The error for a checkpoint whose content does not fit this fit (``what``)."""
        assert self.path is not None
        return _fail(self.path, what)

    # ------------------------------------------------------------------------ loading

    def load(self) -> dict[str, Any] | None:
        """The validated payload, or None when there is no checkpoint file."""
        if self.path is None or not self.path.exists():
            return None
        path = self.path
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated or not a torch file
            raise _fail(path, f"is corrupt or truncated ({type(err).__name__}: {err})") from err
        if not isinstance(payload, dict) or payload.get("kind") != KIND:
            raise _fail(path, "is not a sae_fvu_plugin clustering checkpoint")
        if payload.get("format") != FORMAT:
            raise _fail(path, f"has format {payload.get('format')!r}, this version reads {FORMAT}")
        digest = payload.pop("content_sha256", None)
        saved = payload.get("settings")
        if not isinstance(saved, dict):
            raise _fail(path, "has no settings")
        diff = [
            f"{key}: saved {saved.get(key)!r}, requested {value!r}"
            for key, value in self.settings.items()
            if saved.get(key) != value
        ]
        diff += [
            f"{key}: saved {saved[key]!r}, requested none"
            for key in saved
            if key not in self.settings
        ]
        if diff:
            raise _fail(path, "was written for other data or options (" + "; ".join(diff) + ")")
        saved_iter = payload.get("n_iter")
        if not isinstance(saved_iter, int) or saved_iter < 1:
            raise _fail(path, f"has an invalid n_iter {saved_iter!r}")
        if saved_iter > self.n_iter or (saved_iter < self.n_iter and not self.can_extend):
            rule = (
                "a larger n_iter may continue a finished single-stage run with n_init=1"
                if saved_iter < self.n_iter
                else "a fit cannot be shortened"
            )
            raise _fail(path, f"n_iter: saved {saved_iter}, requested {self.n_iter} ({rule})")
        passes = payload.get("passes", 0)  # (absent: written before passes were saved)
        if not isinstance(passes, int) or isinstance(passes, bool) or passes < 0:
            raise _fail(path, f"has an invalid pass count {passes!r}")
        self._validate(payload)
        if digest != content_digest(payload):  # finite numbers edited after the write
            raise _fail(
                path,
                "does not match its recorded content hash (edited or damaged after it was written)"
                if digest
                else "records no content hash",
            )
        self.passes_before = passes
        return payload

    def _validate(self, payload: dict[str, Any]) -> None:
        path = self.path
        assert path is not None
        d = self.settings["d"]
        sizes = self.settings["stages"]
        stages = payload.get("stages")
        if not isinstance(stages, list) or len(stages) > len(sizes):
            raise _fail(path, "has a malformed list of finished stages")
        for s, stage in enumerate(stages):
            if not isinstance(stage, dict) or "record" not in stage:
                raise _fail(path, f"stage {s} is missing its record")
            _check_centroids(path, f"stage {s} centroids", stage.get("centroids"), sizes[s], d)
        current = payload.get("current")
        if current is None:
            return
        if not isinstance(current, dict):
            raise _fail(path, "has a malformed running stage")
        stage, run = current.get("stage"), current.get("run")
        if (
            stage != len(stages)
            or not isinstance(run, int)
            or not 0 <= run < self.settings["n_init"]
        ):
            raise _fail(path, f"has an inconsistent running stage/run ({stage!r}, {run!r})")
        k = sizes[stage]
        best = current.get("best")
        if best is not None:
            _check_centroids(path, "best run centroids", best.get("centroids"), k, d)
            if not isinstance(best.get("inertia"), float) or not math.isfinite(best["inertia"]):
                raise _fail(path, "best run inertia is not a finite number")
        lloyd = current.get("lloyd")
        if lloyd is None:
            seeding = current.get("seeding")
            keys = {"chosen", "closest", "rng", "screen"}
            if seeding is not None and not (isinstance(seeding, dict) and set(seeding) == keys):
                raise _fail(path, "has a malformed seeding state")
            return
        if not isinstance(lloyd, dict):
            raise _fail(path, "has a malformed Lloyd state")
        _check_centroids(path, "running centroids", lloyd.get("centroids"), k, d)
        it = lloyd.get("iteration")
        if not isinstance(it, int) or not 0 <= it <= payload["n_iter"]:
            raise _fail(path, f"iteration {it!r} is outside [0, n_iter]")
        for key in ("history", "seconds", "changed", "scored"):
            if not isinstance(lloyd.get(key), list) or len(lloyd[key]) != it:
                raise _fail(path, f"Lloyd {key} does not have one entry per iteration")
        movers = lloyd.get("movers")
        if movers is not None and (
            not isinstance(movers, torch.Tensor)
            or movers.dtype != torch.long
            or movers.ndim != 1
            or (len(movers) and (int(movers.min()) < 0 or int(movers.max()) >= k))
        ):
            raise _fail(path, "has invalid mover indices")
        rows = lloyd.get("rows")
        if not isinstance(rows, list) or len(rows) != self.reducer.world:
            raise _fail(
                path,
                f"holds rows for {len(rows) if isinstance(rows, list) else '?'} ranks, this fit runs on {self.reducer.world}",
            )
        mine = rows[self.reducer.rank]
        if mine is None:
            if it > 0:
                raise _fail(path, "lacks the row state of a started run")
            return
        if len(mine) != len(self.local_sizes):
            raise _fail(
                path, f"holds {len(mine)} batches of rows, the data has {len(self.local_sizes)}"
            )
        for b, (entry, size) in enumerate(zip(mine, self.local_sizes, strict=True)):
            labels, upper, lower = entry
            for name, t, dtype in (
                ("labels", labels, torch.long),
                ("upper", upper, torch.float64),
                ("lower", lower, torch.float64),
            ):
                if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.shape != (size,):
                    raise _fail(path, f"batch {b} {name} are not {dtype} of shape ({size},)")
            if size and (int(labels.min()) < 0 or int(labels.max()) >= k):
                raise _fail(path, f"batch {b} has labels outside [0, {k})")
            if not (bool(torch.isfinite(upper).all()) and not bool(torch.isnan(lower).any())):
                raise _fail(path, f"batch {b} has non-finite bounds")

    def restore(self, lloyd: dict[str, Any], device: torch.device) -> LloydState:
        """The running Lloyd state, with this rank's rows, on ``device``."""
        mine = lloyd["rows"][self.reducer.rank]
        rows = None
        if mine is not None:
            rows = [Rows(a.to(device), b.to(device), c.to(device)) for a, b, c in mine]
        return LloydState(
            centroids=lloyd["centroids"].to(device, torch.float64),
            iteration=lloyd["iteration"],
            converged=bool(lloyd["converged"]),
            history=list(lloyd["history"]),
            seconds=list(lloyd["seconds"]),
            changed=list(lloyd["changed"]),
            scored=list(lloyd["scored"]),
            rows=rows,
            movers=None if lloyd.get("movers") is None else lloyd["movers"].to(device),
        )


@dataclass(frozen=True)
class FitProgress:
    """How far a checkpointed fit got: ``stages`` of its ``n_stages`` stages finished, and
    in the running stage ``runs`` of its ``n_init`` runs, the running run's greedy
    k-means++ seeding ``seeded`` (chosen centres / k; 1 once Lloyd runs) and Lloyd
    ``iterated`` (iterations / n_iter; 1 once converged) through."""

    n_stages: int
    stages: int
    n_init: int
    runs: int
    seeded: float
    iterated: float

    def done(self, seed_share: float, front: float = 1.0) -> float:
        """The fraction of the fit's work done, a stage's run costing ``seed_share`` in its
        seeding and the rest in Lloyd, whose first ``iterated`` of the iterations do
        iterated^``front`` of its work (``front`` < 1 where the early iterations cost more:
        Hamerly's bound prunes more as the centres settle): (stages + (runs + seed_share ·
        seeded + (1 − seed_share) · iterated^front) / n_init) / n_stages."""
        run = seed_share * self.seeded + (1.0 - seed_share) * self.iterated**front
        return min(1.0, (self.stages + (self.runs + run) / self.n_init) / self.n_stages)


def read_progress(path: str | Path) -> FitProgress | None:
    """The :class:`FitProgress` of the checkpoint at ``path``, for a time estimate: None
    where there is no file or it is not a readable checkpoint of this format (the fit
    itself then refuses it by name). Not validated against any fit's data or options."""
    try:
        # memory-mapped: only the counts are read, not the rows' labels and bounds
        payload = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
        if payload.get("kind") != KIND or payload.get("format") != FORMAT:
            return None
        settings, n_iter = payload["settings"], int(payload["n_iter"])
        sizes, n_init = list(settings["stages"]), int(settings["n_init"])
        stages, current = len(payload["stages"]), payload.get("current") or {}
        runs, seeded, iterated = len(current.get("runs") or []), 0.0, 0.0
        lloyd = current.get("lloyd")
        if lloyd is not None:
            seeded = 1.0
            iterated = 1.0 if lloyd["converged"] else int(lloyd["iteration"]) / n_iter
        elif current.get("seeding") is not None and stages < len(sizes):
            seeded = len(current["seeding"]["chosen"]) / int(sizes[stages])
        if not (sizes and n_init >= 1 and n_iter >= 1 and stages <= len(sizes)):
            return None
    except Exception:  # absent, truncated, another format: no progress to count
        return None
    return FitProgress(len(sizes), stages, n_init, runs, min(seeded, 1.0), min(iterated, 1.0))


def _check_centroids(path: Path, what: str, t: Any, k: int, d: int) -> None:
    if not isinstance(t, torch.Tensor) or t.shape != (k, d) or t.dtype != torch.float64:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise _fail(path, f"{what} have shape {shape}, expected float64 ({k}, {d})")
    if not bool(torch.isfinite(t).all()):
        raise _fail(path, f"{what} contain NaN/inf")
