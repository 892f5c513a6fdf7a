"""One experiment runner: ``run_experiment(spec, config)``.

An :class:`ExperimentSpec` says what an experiment is — its points, how a point is
evaluated (default: SAEBench on held-out tokens, the Gaussian control directly), its
summary, its printed report, its CSV columns and plots. The runner does the rest for every
spec alike: the shared inputs (model, split, activation cache), fitting each point once,
the row cache, the progress line and estimate, ``results.json`` / ``results.csv``, and
the closing line. Reruns reuse everything cached under the output folder (activations,
fitted SAEs, evaluated rows), keyed by the settings that produced them; nothing cached is
ever overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..validate import UsageError, resolve_device
from . import methods  # noqa: F401  (registers the built-in methods)
from .config import ExperimentConfig
from .evaluation import Evaluator
from .fitting import Fits
from .inputs import ExperimentInputs
from .keys import row_file, versions
from .points import Point
from .report import plain, write_csv
from .row_import import import_rows, superseded_file

Rows = list[dict[str, Any]]


class Experiment:
    """The inputs, fits, evaluation and row cache of one experiment configuration."""

    def __init__(self, cfg: ExperimentConfig, *, progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out {self.out} is a file; pass a folder (new or of a run).")
        device = resolve_device(cfg.device)
        self.out.mkdir(parents=True, exist_ok=True)
        self.inputs = ExperimentInputs(cfg, self.out, device, progress)
        self.fits = Fits(self.inputs)
        self.evaluator = Evaluator(self.inputs)
        self.progress = progress

    def fitted(self, point: Point) -> Any:
        return self.fits.fitted(point)

    def _rows_path(self, point: Point) -> Path:
        return self.out / "rows" / row_file(self.cfg, point)

    def is_cached(self, point: Point) -> bool:
        return self._rows_path(point).is_file()

    def _superseded_path(self, point: Point) -> Path:
        return superseded_file(self.out / "rows", row_file(self.cfg, point))

    def superseded(self, point: Point) -> bool:
        """Whether an imported row of an older version of this point's fit is kept aside
        (:mod:`.row_import`) and no current row is cached."""
        return not self.is_cached(point) and self._superseded_path(point).is_file()

    def rows_for(self, point: Point, evaluate: Callable[[Any, Point], Rows]) -> Rows:
        """The rows of a point: cached, or fitted and evaluated now (written atomically;
        each records the machine that computed it, ``computed_on``: a grid's parts may run
        on different machines, and its ``fit_seconds`` are that machine's)."""
        import torch

        from ..clustering.precision import device_key

        path = self._rows_path(point)
        # the key encodes the method's version (when ≠ 1), so a cached row is of this one
        version = versions(self.cfg, point)
        if path.is_file():
            return [{**r, **version} for r in json.loads(path.read_text())]
        if getattr(self.cfg, "cached_only", False) and self.superseded(point):
            # reported as it was computed (its own versions, marked ``superseded``)
            return list(json.loads(self._superseded_path(point).read_text()))
        here = device_key(torch.device(self.inputs.device))
        rows = [{**r, **version, "computed_on": here} for r in evaluate(self.fitted(point), point)]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, default=float))
        os.replace(tmp, path)
        return rows

    def run(
        self, points: Iterable[Point], evaluate: Callable[[Any, Point], Rows], desc: str
    ) -> Rows:
        points = list(points)
        out: Rows = []
        bar = tqdm(points, desc=desc, unit="model", disable=not self.progress)
        for point in bar:
            bar.set_postfix_str(point.name)
            out += self.rows_for(point, evaluate)
        bar.close()
        return out


@dataclass(frozen=True)
class ExperimentSpec:
    """What one experiment is; :func:`run_experiment` runs any of them.

    * ``points(cfg)``: its models; ``describe(cfg, points)``: one line saying what runs;
      ``estimate_minutes(cfg, todo, cached_layers, sae_speedup, seed_speedup, base_fits)``:
      the wall minutes of the points not yet cached, the activations of ``cached_layers``
      already on disk, SAE training ``sae_speedup`` and large k-means++ seedings
      ``seed_speedup`` times faster than float32, plus the fits ``base_fits`` that those
      points start from and that are not cached, less what the fits that resume from a
      checkpoint have done (keyword ``progress``: :meth:`.fitting.Fits.progress`);
    * ``prepare(exp)``: context computed once before the points (default: none);
      ``evaluate(exp, context, sae, point)``: a point's rows (default: SAEBench on
      held-out tokens, the Gaussian control directly);
    * ``summarize(rows, context)``: the keys ``results.json`` adds to config and rows;
      ``report(rows, summary)``: the text printed; ``csv_columns``, ``csv_intervals``:
      ``results.csv``; ``plots(rows, summary, out, cfg)``: the files drawn (matplotlib).
    """

    name: str
    points: Callable[[Any], list[Point]]
    describe: Callable[[Any, list[Point]], str]
    estimate_minutes: Callable[..., float]  # (cfg, todo, cached, sae_speedup, seed, base_fits)
    summarize: Callable[[Rows, dict[str, Any]], dict[str, Any]]
    report: Callable[[Rows, dict[str, Any]], str]
    plots: Callable[[Rows, dict[str, Any], Path, Any], list[str]]
    csv_columns: Sequence[str] = field(default_factory=tuple)
    csv_intervals: bool = False
    prepare: Callable[[Experiment], dict[str, Any]] | None = None
    evaluate: Callable[[Experiment, dict[str, Any], Any, Point], Rows] | None = None


def _check_widths(pts: list[Point], widths: dict[int, int], cfg: Any) -> None:
    """PCA + k-means removes n_pca < d principal components of a width-d hook: a larger
    n_pca is a UsageError before any activation is collected (not a failed fit hours in)."""
    for p in pts:
        n_pca = int(p.param_dict.get("n_pca", 0))
        if n_pca >= widths[p.layer]:
            raise UsageError(
                f"{p.name}: n_pca {n_pca} must be below the width {widths[p.layer]} of "
                f"{cfg.hook(p.layer)} ({cfg.model}); drop it from --pca-ns / --large-pca-ns "
                "/ --n-pca."
            )


def run_experiment(spec: ExperimentSpec, cfg: Any, *, progress: bool = True) -> dict[str, Any]:
    """Fit and evaluate every point of ``spec`` under ``cfg`` (cached ones are read back),
    write ``results.json`` / ``results.csv`` / the plots, print the report; returns the
    result (``config``, the summary's keys, ``rows``, ``minutes``)."""
    t0 = time.time()
    out = Path(cfg.out)
    try:
        pts = spec.points(cfg)
    except ValueError as err:  # a --methods that names no method of the grid
        raise UsageError(str(err)) from None
    tag = f"[{spec.name}]"
    print(f"{tag} {spec.describe(cfg, pts)}", flush=True)
    exp = Experiment(cfg, progress=progress)
    _check_widths(pts, exp.inputs.widths, cfg)
    if getattr(cfg, "import_rows", None):
        eval_ids = exp.inputs.split.eval_index.tolist()
        print(f"{tag} " + import_rows(cfg.import_rows, cfg, pts, out / "rows", eval_ids))
    todo = [p for p in pts if not exp.is_cached(p)]
    if getattr(cfg, "cached_only", False) and todo:
        old = [p for p in todo if exp.superseded(p)]
        todo = [p for p in todo if p not in old]
        pts = [p for p in pts if p not in todo]  # the cached and the superseded
        if not pts:
            raise UsageError(
                f"--cached-only: none of the {len(todo)} models of this grid is cached in "
                f"{out}/; run without --cached-only first."
            )
        missing = ", ".join(p.name for p in todo[:8]) + (" …" if len(todo) > 8 else "")
        print(
            f"{tag} --cached-only: reporting the {len(pts)} cached models"
            + (
                f" ({len(old)} of them superseded: computed by an older version of their "
                "fit, marked `superseded`, to refit)"
                if old
                else ""
            )
            + (f"; {len(todo)} not run yet: {missing}" if todo else ""),
            flush=True,
        )
        todo = []
    machine = (
        this_machine(exp.inputs.device, getattr(cfg, "sae_precision", None))
        if todo
        else _recorded_machine(out / "results.json", exp.inputs.device)
    )
    factor, speedup = machine["factor"], machine.get("sae_speedup", 1.0)
    seed = seed_speedup(machine)
    base = exp.fits.base_fits(todo)
    resumed = exp.fits.progress(todo + base)
    minutes = spec.estimate_minutes(
        cfg, todo, exp.inputs.cached_layers(), speedup, seed, base, progress=resumed
    )
    status = (
        "everything is cached: printing the results"
        if not todo
        else f"estimated {minutes * factor:.1f} min ({len(pts) - len(todo)} of {len(pts)} "
        f"models cached; rates of 2 AMD EPYC cores scaled ×{factor:.2f} by a matmul timing "
        "of this machine"
        + (
            f", SAE training ÷{speedup:.2f} by its bfloat16-autocast timing"
            if speedup != 1.0
            else ""
        )
        + (f", large seedings ÷{seed:.2f} by their screen's gain" if seed != 1.0 else "")
        + "".join(
            f"; {p.name} resumes from its checkpoint ("
            + (f"{got.stages} of {got.n_stages} stages done, " if got.n_stages > 1 else "")
            + f"seeding {got.seeded:.0%}, Lloyd {got.iterated:.0%} of its iterations)"
            for p, got in resumed.items()
        )
        + ")"
    )
    print(f"{tag} {status}; output in {out}/", flush=True)
    context = spec.prepare(exp) if spec.prepare is not None else {}
    evaluate = spec.evaluate
    if evaluate is None:
        rows = exp.run(pts, exp.evaluator.default_rows, desc=spec.name)
    else:
        rows = exp.run(pts, lambda sae, p: evaluate(exp, context, sae, p), desc=spec.name)
    summary = spec.summarize(rows, context)
    result = {"config": dataclasses.asdict(cfg), **summary, "rows": rows}
    result["minutes"] = (time.time() - t0) / 60
    result["minutes_computed"] = _minutes_computed(out / "results.json", result["minutes"], todo)
    result["machine"] = machine
    (out / "results.json").write_text(json.dumps(plain(result), indent=1))
    write_csv(rows, out / "results.csv", spec.csv_columns, intervals=spec.csv_intervals)
    print(spec.report(rows, summary))
    try:
        plotted = ", ".join(f"{out}/{name}" for name in spec.plots(rows, summary, out, cfg))
    except ImportError as err:  # matplotlib is an optional (demo) dependency
        plotted = f"plots skipped ({err})"
    print(
        f"{tag} done in {result['minutes']:.1f} min. Outputs: {out}/results.csv, "
        f"{out}/results.json, {plotted}; SAEBench result JSONs in {out}/results/; fitted "
        f"SAEs in {out}/saes/"
    )
    return result


# calibration("cpu")["float32"] (seconds of the k-means score matmul) on the machine the
# estimate's rates were calibrated on: 2 cores of an AMD EPYC (AVX2, no AVX-512), torch
# 2.13.0+cpu, 2026-12-02 (the committed demo run; an AVX-512 EPYC measured 0.0203).
_REFERENCE_FP32_SECONDS = 0.0246


def machine_factor() -> float:
    """How much slower (> 1) or faster this machine's CPU is than the one the estimates
    were measured on, by the cached matmul calibration (measured once, ~0.2 s); clamped to
    [0.1, 10]. The estimates are of CPU runs."""
    from ..clustering.precision import calibration

    seconds = float(calibration("cpu")["float32"])
    return min(max(seconds / _REFERENCE_FP32_SECONDS, 0.1), 10.0)


def this_machine(device: str, sae_precision: str | None = None) -> dict[str, Any]:
    """What computed a run's rows: the device (CPU model and threads, or GPU; torch), its
    :func:`machine_factor`, the k-means score calibration's bfloat16 / float32 speed ratio
    and choice, how many times faster than the plain float32 step its large greedy
    k-means++ seedings run (``seed_speedup``: screened by the rank-128 projection,
    :class:`..clustering.seeding._Projected`, ``costs.PROJECTED_SEED_GAIN`` as measured on
    the AVX2 AMD EPYC; where the calibration chose bfloat16 the rows it leaves are screened
    again in bfloat16, :class:`..clustering.seeding._Screen`, so the larger of that and the
    calibration's gain), and (an experiment that trains SAEs under ``sae_precision``) how
    many times faster than float32 its SAE training runs (``sae_speedup``, 1 in float32)."""
    import torch

    from ..clustering.precision import calibration, device_key

    cal = calibration(device)
    out = {
        "name": device_key(torch.device(device)),
        "factor": machine_factor(),
        "bfloat16_gain": round(float(cal["gain"]), 3),
        "score_dtype": cal["choice"],
    }
    from .costs import PROJECTED_SEED_GAIN

    bf16 = out["score_dtype"] == "bfloat16"
    gain = max(out["bfloat16_gain"], PROJECTED_SEED_GAIN) if bf16 else PROJECTED_SEED_GAIN
    out["seed_speedup"] = gain
    if sae_precision is not None:
        from .methods.saes import training_speedup

        out["sae_speedup"] = round(training_speedup(sae_precision, device), 3)
    return out


def seed_speedup(machine: dict[str, Any]) -> float:
    """How many times faster than float32 a machine record's large k-means++ seedings run:
    its ``seed_speedup``, else its ``bfloat16_gain`` where its score calibration chose
    bfloat16 and 1 where not (a record written before the field: before the projected
    screen, float32 seedings ran the plain step)."""
    if "seed_speedup" in machine:
        return float(machine["seed_speedup"])
    return (
        float(machine.get("bfloat16_gain", 1.0))
        if machine.get("score_dtype") == "bfloat16"
        else 1.0
    )


def _recorded_machine(previous: Path, device: str) -> dict[str, Any]:
    """When every point is cached: the machine the earlier ``results.json`` recorded as
    having computed the rows (a reprint does not relabel them), else this one."""
    try:
        recorded = json.loads(previous.read_text())["machine"]
        float(recorded["factor"])
        return dict(recorded)
    except (OSError, ValueError, KeyError, TypeError):
        return this_machine(device)


def _minutes_computed(previous: Path, minutes: float, todo: list[Point]) -> float:
    """Wall minutes of the run that computed the rows: this run's when it computed any;
    when every point came from the cache, the value the earlier ``results.json`` recorded
    (a rerun that only reprints and replots does not overwrite it with seconds)."""
    if todo or not previous.is_file():
        return minutes
    try:
        old = json.loads(previous.read_text())
        return float(old.get("minutes_computed", old["minutes"]))
    except (ValueError, KeyError, TypeError):
        return minutes
