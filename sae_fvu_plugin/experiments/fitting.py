"""Fitting an experiment's points: each SAE fitted once, saved under ``out/saes/`` keyed by
everything that produced it, and reloaded from there on every rerun."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import clustering  # noqa: F401  (registers the clustering SAE architectures)
from ..kmeans_options import KMeansOptions
from ..sae_io import load_saved_sae, save_sae
from . import registry
from .inputs import ExperimentInputs
from .keys import fit_key
from .points import FitInput, Point

if TYPE_CHECKING:
    from ..clustering.checkpoint import FitProgress


class FitClock:
    """A fit's wall seconds over every process that worked on it: a killed fit resumes from
    its checkpoint, and its time so far is kept beside it (``path``, rewritten atomically
    every ``every`` seconds by a daemon thread), so the recorded ``fit_seconds`` of a fit
    that spanned sessions is the sum of its parts (less at most ``every`` per kill). Only
    with ``resume`` (its checkpoint is there to continue from) are earlier seconds counted:
    a fit that starts over starts its clock over.
    """

    def __init__(self, path: Path, resume: bool, every: float = 30.0) -> None:
        self.path, self.every, self.resume = path, every, resume
        self.before = 0.0
        self.resumed = False
        self._start = 0.0
        self._end: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def seconds(self) -> float:
        """Seconds spent before this process plus this process's so far (until the exit)."""
        end = time.perf_counter() if self._end is None else self._end
        return self.before + (end - self._start)

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(f"{self.seconds:.3f}\n")
            os.replace(tmp, self.path)
        except OSError:  # the clock is a record, never a reason to stop a fit
            pass

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self._write()

    def __enter__(self) -> FitClock:
        self.resumed = self.resume
        try:
            if self.resume:
                self.before = max(0.0, float(self.path.read_text()))
        except (OSError, ValueError):  # killed before its first tick, or unreadable
            self.before = 0.0
        self._start = time.perf_counter()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._end = time.perf_counter()
        self._write()


class Fits:
    """The fitted SAEs of one experiment: from this run, from the disk cache, or fitted now."""

    def __init__(self, inputs: ExperimentInputs) -> None:
        self.inputs = inputs
        self.cfg, self.out = inputs.cfg, inputs.out
        self._fitted: dict[Point, Any] = {}

    def key(self, point: Point) -> str:
        """The cache key of ``point``'s fit (:func:`.keys.fit_key`)."""
        return fit_key(self.cfg, point)

    def _folder(self, point: Point) -> Path:
        return self.out / "saes" / f"{point.name}-{self.key(point)}"

    def is_fitted(self, point: Point) -> bool:
        """Whether ``point``'s SAE is in the disk cache (or fitted in this run)."""
        return point in self._fitted or (self._folder(point) / "cfg.json").is_file()

    def base_fits(self, points: list[Point]) -> list[Point]:
        """The fits that ``points`` start from (``Method.reuses``, e.g. the k-means codebook
        of a top-1 SAE) that are neither among them nor cached: fitting ``points`` fits
        these too."""
        out: list[Point] = []
        for p in points:
            base = p.base
            if base is not None and base not in points and base not in out:
                if not self.is_fitted(base):
                    out.append(base)
        return out

    def checkpoint(self, point: Point) -> Path:
        """Where ``point``'s fit keeps its checkpoint while it runs (removed once saved)."""
        return self.out / "checkpoints" / f"{point.name}-{self.key(point)}.pt"

    def progress(self, points: list[Point]) -> dict[Point, FitProgress]:
        """How far the fits of ``points`` that left a checkpoint got (a killed run's),
        for the time estimate (:func:`..clustering.checkpoint.read_progress`)."""
        from ..clustering.checkpoint import read_progress

        out = {}
        for p in points:
            path = self.checkpoint(p)
            if not self.is_fitted(p) and path.is_file():
                got = read_progress(path)
                if got is not None:
                    out[p] = got
        return out

    def fitted(self, point: Point) -> Any:
        """The SAE of ``point`` (fitted at most once per output folder)."""
        if point in self._fitted:
            return self._fitted[point]
        folder = self._folder(point)
        if not (folder / "cfg.json").is_file():
            save_sae(self.fit(point).to("cpu"), folder)
        sae = load_saved_sae(folder, device="cpu")
        self._fitted[point] = sae
        return sae

    def fit(self, point: Point) -> Any:
        """Fit ``point`` now (its k-means stages checkpointed under ``out/checkpoints/``) and
        record the fit in ``cfg.metadata['experiment']``."""
        from sae_bench.sae_bench_utils.general_utils import _standardize_sae_cfg

        method = registry.get(point.method)
        if point.base is not None:  # first, so that fit_seconds is this fit's own
            self.fitted(point.base)
        acts, val, prov = self.inputs.fit_data(point, method.rows)
        ckpt = self.checkpoint(point)
        clock_file = ckpt.with_name(ckpt.name + ".seconds")
        with FitClock(clock_file, resume=ckpt.exists()) as clock:
            sae = method.fit(self._fit_input(point, acts, val, prov, ckpt))
        seconds = clock.seconds
        meta = sae.cfg.metadata
        meta["experiment"] = {
            "key": self.key(point),
            "method": point.method,
            "family": method.family,
            "params": point.param_dict,
            "layer": point.layer,
            "source": point.source,
            "fit_seconds": round(seconds, 3),
        }
        if clock.resumed:  # (a fit that resumed a killed one: its seconds are summed)
            meta["experiment"]["fit_resumed"] = True
        if prov is not None and meta.get("provenance") is None:
            meta["provenance"] = prov.to_dict()
        for k, v in self.inputs.base_metadata(point).items():
            if meta.get(k) is None:
                meta[k] = v
        _standardize_sae_cfg(sae.cfg)
        ckpt.unlink(missing_ok=True)
        clock_file.unlink(missing_ok=True)
        return sae

    def _fit_input(self, point: Point, acts: Any, val: Any, prov: Any, ckpt: Path) -> FitInput:
        options = KMeansOptions(
            n_iter=self.cfg.n_iter,
            seed=self.cfg.seed,
            device=self.inputs.device,
            progress=False,
            checkpoint=str(ckpt),
        )
        return FitInput(
            point=point,
            params=point.param_dict,
            acts=acts,
            val=val,
            cfg=self.cfg,
            options=options,
            provenance=prov,
            metadata=self.inputs.base_metadata(point),
            device=self.inputs.device,
            fitted=self.fitted,
            progress=self.inputs.progress,
        )
