"""Stages → codebook: centre, optional PCA, then one or more k-means stages, each on the
residual the previous ones leave.

    z⁰ = x − μ − V Vᵀ (x − μ)      (V: the n_pca principal axes; none for plain k-means)
    stage s: centroids C_s fitted on z^{s−1};  z^s = z^{s−1} − C_s[a_s(z^{s−1})]

One stage is k-means (PCA + k-means with n_pca > 0); several are residual k-means
(multi-stage vector quantisation). Each stage is a k-means fit: seeding (``n_init`` runs),
Lloyd, the run with the lowest exact inertia kept. Checkpoints resume per stage and run.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..kmeans_options import KMeansOptions
from ..validate import is_tensor, resolve_device
from .checkpoint import Checkpoint, state_payload
from .lloyd import Assigner, LloydResult, LloydState, lloyd
from .precision import resolve_score_dtype
from .reduce import LocalReducer, agree, current_reducer
from .seeding import (
    _generator,
    greedy_kmeans_pp,
    importance_sample,
    kmeans_parallel,
    random_rows,
    uniform_sample,
)
from .source import ActivationSource, DataStats, data_stats, sub_rows

_SEED_SAVE_SECONDS = 120.0  # an interrupted seeding or Lloyd run loses at most ~this much work


@dataclass
class PCAResult:
    components: torch.Tensor  # (p, d), rows orthonormal, by decreasing variance
    explained_variance: torch.Tensor  # (p,), eigenvalues / (n − 1), like scikit-learn
    explained_variance_ratio: torch.Tensor  # (p,)


def pca_from_stats(stats: DataStats, n_components: int) -> PCAResult:
    """Top principal axes of the centred data: eigenvectors of Σ (x−μ)(x−μ)ᵀ. Sign
    convention: each component's largest-magnitude coordinate is positive."""
    assert stats.scatter is not None
    evals, evecs = torch.linalg.eigh(stats.scatter)
    order = torch.argsort(evals, descending=True)[:n_components]
    comps = evecs[:, order].T.contiguous()
    idx = comps.abs().argmax(1)
    comps = comps * torch.sign(comps[torch.arange(len(comps)), idx])[:, None]
    vals = evals[order].clamp(min=0)
    total = float(torch.trace(stats.scatter))
    return PCAResult(comps, vals / max(stats.n - 1, 1), vals / total)


@dataclass
class StageRecord:
    """What one k-means stage did (stored in the SAE's metadata)."""

    n_clusters: int
    inertia: float  # exact Σ_n ‖z_n − c_{a(n)}‖² of the kept run
    input_sum_of_squares: float  # Σ_n ‖z_n‖² of the stage's input
    runs: list[dict[str, Any]] = field(default_factory=list)
    best_run: int = 0
    empty_clusters: int = 0
    cluster_sizes: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_clusters": self.n_clusters,
            "inertia": self.inertia,
            "input_sum_of_squares": self.input_sum_of_squares,
            "runs": self.runs,
            "best_run": self.best_run,
            "empty_clusters": self.empty_clusters,
            "cluster_sizes": self.cluster_sizes,
        }


@dataclass
class Codebook:
    """A fitted clustering: mean, PCA axes, and each stage's centroids (centred frame)."""

    mean: torch.Tensor  # (d,) float64
    components: torch.Tensor | None  # (p, d) float64 or None
    stages: list[torch.Tensor]  # [(k_s, d) float64]
    records: list[StageRecord]
    stats: DataStats
    pca: PCAResult | None
    passes: int  # passes over the data, all stages (and processes of a resumed fit) together
    settings: dict[str, Any]

    @property
    def inertia(self) -> float:
        return self.records[-1].inertia


class _Data:
    """The stage input z as batches in the compute dtype on the device, counting passes.

    In-memory sources are transformed once and held; streamed ones are transformed on
    every pass (centre, PCA, and the assignments of finished stages)."""

    def __init__(
        self,
        source: ActivationSource,
        stats: DataStats,
        basis: torch.Tensor | None,
        dtype: torch.dtype,
        device: torch.device,
        score_dtype: torch.dtype | None = None,
    ) -> None:
        self.source, self.dtype, self.device = source, dtype, device
        self.score_dtype = score_dtype or dtype
        self.mean, self.basis = stats.mean.to(device), basis
        self.row_offset = stats.row_offset
        self.finished: list[torch.Tensor] = []
        self.passes = 0
        self.held: list[torch.Tensor] | None = None
        if source.in_memory:
            self.held = [self.transform(b) for b in source.batches() if b.shape[0]]
            self.passes += 1

    def transform(self, b: torch.Tensor) -> torch.Tensor:
        out = torch.empty(b.shape, dtype=self.dtype, device=self.device)
        step = sub_rows(b.shape[1], self.device)
        for s in range(0, b.shape[0], step):
            z = b[s : s + step].to(self.device, torch.float64) - self.mean
            if self.basis is not None:
                z = z - (z @ self.basis.T) @ self.basis
            out[s : s + step] = z
        for c in self.finished:
            out -= c.to(self.dtype)[Assigner(c, self.dtype, self.score_dtype).full(out).labels]
        return out

    def batches(self) -> Iterator[torch.Tensor]:
        self.passes += 1
        if self.held is not None:
            return iter(self.held)
        return (self.transform(b) for b in self.source.batches() if b.shape[0])

    def local_sizes(self) -> list[int]:
        if self.held is not None:
            return [b.shape[0] for b in self.held]
        return [b.shape[0] for b in self.source.batches() if b.shape[0]]

    def finish_stage(self, centroids: torch.Tensor, labels: list[torch.Tensor]) -> None:
        """Continue with the residual of a finished stage."""
        if self.held is not None:
            c = centroids.to(self.dtype)
            self.held = [z - c[lab] for z, lab in zip(self.held, labels, strict=True)]
        else:
            self.finished.append(centroids)


def _tensor_key(t: torch.Tensor) -> str:
    raw = t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()
    return "tensor:sha256:" + hashlib.sha256(raw).hexdigest()[:16]


def fit_codebook(
    acts: Any,
    stages: list[int],
    n_pca: int,
    options: KMeansOptions,
    *,
    kind: str,
) -> Codebook:
    """Fit the stages on ``acts`` (this rank's shard when a process group is initialised):
    exact statistics, options checked against the data (and agreed by every rank), PCA,
    then each k-means stage on the residual of the ones before, resuming from the
    checkpoint where one matches."""
    reducer = current_reducer()
    device = torch.device(resolve_device(options.device))
    source = ActivationSource(acts)
    stats = data_stats(source, device, reducer, scatter=n_pca > 0)
    settings = fit_settings(stats, stages, n_pca, options, kind, reducer.world)
    compute_dtype = torch.float64 if stats.dtype == torch.float64 else torch.float32
    agree(
        reducer,
        "the fit options",
        {k: v for k, v in settings.items() if k != "data"}
        | {"n_iter": options.n_iter, "checkpoint": options.checkpoint is not None},
    )
    pca = pca_from_stats(stats, n_pca) if n_pca else None
    basis = None if pca is None else pca.components.to(device)
    score_dtype = resolve_score_dtype(options.compute_dtype, device)
    data = _Data(source, stats, basis, compute_dtype, device, score_dtype)
    can_extend = len(stages) == 1 and options.n_init == 1
    ckpt = Checkpoint(
        options.checkpoint,
        settings,
        options.n_iter,
        reducer,
        stats.local_sizes,
        can_extend=can_extend,
    )
    ckpt.passes_now = lambda: data.passes
    done, current = _resume_point(ckpt, can_extend, options.n_iter)
    centroids: list[torch.Tensor] = []
    records: list[StageRecord] = []
    for s, k in enumerate(stages):
        if s < len(done):  # finished before: continue from its residual
            c = done[s]["centroids"].to(device)
            centroids.append(c)
            records.append(StageRecord(**done[s]["record"]))
            data.finish_stage(c, _final_labels(data, c, compute_dtype, reducer).labels)
            continue
        stage = _StageFit(s, k, data, options, ckpt, reducer, kind, n_pca, len(stages), done)
        if current is not None and current["stage"] == s:
            stage.resume(current)
        best, state = stage.run_all(options.init, stats.n)
        record = stage.record(best)
        best_c = stage.best_c
        assert best_c is not None
        _warn_empty(record, s, len(stages))
        centroids.append(best_c)
        records.append(record)
        entry: dict[str, Any] = {"centroids": best_c.cpu(), "record": record.to_dict()}
        if can_extend:
            entry["lloyd"] = state_payload(state, reducer)
        done = [*done, entry]
        ckpt.save({"stages": done, "current": None})
        if s + 1 < len(stages):
            data.finish_stage(best_c, best.labels)
        current = None
    return Codebook(
        mean=stats.mean,
        components=None if pca is None else pca.components,
        stages=centroids,
        records=records,
        stats=stats,
        pca=pca,
        passes=ckpt.passes_before + data.passes,  # a resumed fit's too: every process's
        # the score precision changes the speed only (labels are certified): not a setting
        settings=settings | {"n_iter": options.n_iter, "score_dtype": str(score_dtype)},
    )


def _warn_empty(record: StageRecord, stage: int, n_stages: int) -> None:
    """A warning (as scikit-learn's "fewer distinct clusters") when the final assignment
    left clusters empty: the data holds fewer distinct rows than clusters (no real fit
    here ended with one), and those latents never fire."""
    if record.empty_clusters:
        where = f"stage {stage + 1} of {n_stages}: " if n_stages > 1 else ""
        k = record.n_clusters
        warnings.warn(
            f"k-means {where}{record.empty_clusters} of {k} clusters are empty after the "
            f"fit ({k - record.empty_clusters} used): the data holds fewer distinct rows "
            "than clusters, and their latents never fire. Fit fewer clusters.",
            UserWarning,
            stacklevel=2,
        )


def fit_settings(
    stats: Any, stages: list[int], n_pca: int, options: KMeansOptions, kind: str, world: int
) -> dict[str, Any]:
    """Every setting that changes the result (what a checkpoint is bound to), after
    checking the options against the data's shape (a ``ValueError`` naming the fix)."""
    n, d = stats.n, stats.d
    for k in stages:
        if k > n:
            raise ValueError(
                f"n_clusters={k} exceeds the number of activation rows N={n}; use fewer "
                "clusters or more tokens."
            )
    if n_pca >= d:
        raise ValueError(f"n_pca={n_pca} must be below the width d={d}.")
    init = options.init
    if is_tensor(init):
        if len(stages) != 1:
            raise ValueError("init as a tensor is for single-stage fits; use a seeding method.")
        if tuple(init.shape) != (stages[0], d):
            raise ValueError(
                f"init has shape {tuple(init.shape)}, expected (n_clusters, d) = ({stages[0]}, {d})."
            )
        if not bool(torch.isfinite(init).all()):
            bad = int((~torch.isfinite(init)).sum())
            raise ValueError(
                f"init holds {bad} NaN/inf value(s); pass finite initial centroids or a seeding "
                "method ('k-means++')."
            )
    compute_dtype = torch.float64 if stats.dtype == torch.float64 else torch.float32
    return {
        "kind": kind,
        "stages": list(stages),
        "n_pca": n_pca,
        "d": d,
        "tol": options.tol,
        "init": _tensor_key(init) if is_tensor(init) else str(init),
        "n_init": options.n_init,
        "n_local_trials": [options.local_trials(k) for k in stages],
        "init_sample": [options.sample_size(n, k) for k in stages],
        "oversampling": options.oversampling,
        "init_rounds": options.init_rounds,
        "empty": options.empty,
        "init_sampling": options.init_sampling,
        "seed": options.seed,
        "input_dtype": str(stats.dtype),
        "compute_dtype": str(compute_dtype),
        "world_size": world,
        "data": stats.fingerprint,
    }


def _resume_point(
    ckpt: Checkpoint, can_extend: bool, n_iter: int
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(finished stages, the stage in progress or None) from the checkpoint; a finished
    single-stage run that a larger ``n_iter`` may continue becomes in progress again."""
    saved = ckpt.load()
    done: list[dict[str, Any]] = [] if saved is None else list(saved["stages"])
    current: dict[str, Any] | None = None if saved is None else saved.get("current")
    if can_extend and done and done[0].get("lloyd") is not None:
        last = done[0]["lloyd"]
        if not last["converged"] and last["iteration"] < n_iter:
            done, current = [], {"stage": 0, "run": 0, "runs": [], "best": None, "lloyd": last}
    return done, current


class _StageFit:
    """The ``n_init`` runs of one k-means stage, checkpointed after every run."""

    def __init__(
        self,
        index: int,
        k: int,
        data: _Data,
        options: KMeansOptions,
        ckpt: Checkpoint,
        reducer: LocalReducer,
        kind: str,
        n_pca: int,
        n_stages: int,
        done: list[dict[str, Any]],
    ) -> None:
        self.index, self.k, self.data, self.options = index, k, data, options
        self.ckpt, self.reducer, self.done = ckpt, reducer, done
        self.runs: list[dict[str, Any]] = []
        self.best_c: torch.Tensor | None = None
        self.best: LloydResult | None = None
        self.first_run = 0
        self.restored: LloydState | None = None
        self.seeding: dict[str, Any] | None = None  # an interrupted seeding's state
        self.sq_total: float | None = None
        self.label = (
            f"{kind} k={k}"
            + (f" p={n_pca}" if n_pca else "")
            + (f" stage {index + 1}/{n_stages}" if n_stages > 1 else "")
        )

    def resume(self, current: dict[str, Any]) -> None:
        self.runs = list(current["runs"])
        if current.get("best") is not None:
            self.best_c = current["best"]["centroids"].to(self.data.device)
        run = current["run"]
        if len(self.runs) > run:  # run `run` had finished
            self.first_run = run + 1
        else:
            self.first_run = run
            if current.get("lloyd") is not None:
                self.restored = self.ckpt.restore(current["lloyd"], self.data.device)
            else:
                self.seeding = current.get("seeding")

    def payload(
        self, run: int, state: LloydState | None, seeding: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The checkpoint of run ``run``: its Lloyd ``state`` (a collective call), or while
        it is still seeding (no state), the seeding's own."""
        best = None
        if self.best_c is not None:
            best = {
                "centroids": self.best_c.cpu(),
                "inertia": self.runs[_best_index(self.runs)]["inertia"],
            }
        current = {"stage": self.index, "run": run, "runs": self.runs, "best": best}
        if state is None:
            return {"stages": self.done, "current": current | {"lloyd": None, "seeding": seeding}}
        return {
            "stages": self.done,
            "current": current | {"lloyd": state_payload(state, self.reducer)},
        }

    def run_all(self, init: Any, n: int) -> tuple[LloydResult, LloydState]:
        opts = self.options
        state: LloydState | None = None
        for r in range(self.first_run, opts.n_init):
            if self.restored is not None and r == self.first_run:
                state = self.restored
            else:
                resume, self.seeding = self.seeding, None
                save = None
                if self.ckpt.path is not None:

                    def save(seeding: dict[str, Any], r: int = r) -> None:
                        self.ckpt.save(self.payload(r, None, seeding))

                try:
                    c0 = _seed(
                        self.data, self.k, r, self.index, opts, init, self.reducer, n, resume, save
                    )
                except ValueError as err:
                    if resume is None or not str(err).startswith("the seeding state"):
                        raise
                    raise self.ckpt.refuse(f"{err} (saved by another seeding)") from None
                state = LloydState(centroids=c0.to(self.data.device))
                if self.ckpt.path is not None:  # seeding at large k takes long: keep it
                    self.ckpt.save(self.payload(r, state))
            desc = self.label + (f" run {r + 1}/{opts.n_init}" if opts.n_init > 1 else "")
            bar = tqdm(
                total=opts.n_iter,
                initial=min(state.iteration, opts.n_iter),
                disable=not opts.progress or self.reducer.rank != 0,
                desc=desc,
                unit="it",
            )

            saved = [time.monotonic()]

            def on_iteration(
                st: LloydState, r: int = r, bar: Any = bar, saved: list[float] = saved
            ) -> None:
                bar.update(1)
                bar.set_postfix(inertia=f"{st.history[-1]:.6g}", rescored=f"{st.scored[-1]:.0%}")
                if self.ckpt.path is not None and (
                    st.iteration % opts.checkpoint_every == 0
                    or st.converged
                    or st.iteration >= opts.n_iter
                    or time.monotonic() - saved[0] >= _SEED_SAVE_SECONDS
                ):  # and after any iteration 2 min after the last save: at 16,384 clusters
                    # on 786k rows an iteration takes minutes, 5 of them too many to lose
                    self.ckpt.save(self.payload(r, st))
                    saved[0] = time.monotonic()

            try:
                result = lloyd(
                    self.data.batches,
                    state,
                    n_iter=opts.n_iter,
                    tol=opts.tol,
                    compute_dtype=self.data.dtype,
                    reducer=self.reducer,
                    empty=opts.empty,
                    seed=opts.seed + r,
                    on_iteration=on_iteration,
                    score_dtype=self.data.score_dtype,
                )
            finally:
                bar.close()
            if result.sq_total is not None:
                self.sq_total = result.sq_total
            st = result.state
            self.runs.append(
                {
                    "run": r,
                    "seed": opts.seed + r,
                    "inertia": result.inertia,
                    "n_iter_run": st.iteration,
                    "converged": st.converged,
                    "inertia_history": st.history,
                    "iteration_seconds": [round(t, 4) for t in st.seconds],
                    "labels_changed": st.changed,
                    "rows_rescored": [round(v, 4) for v in st.scored],
                }
            )
            if (
                self.best_c is None
                or result.inertia < self.runs[_best_index(self.runs[:-1])]["inertia"]
            ):
                self.best, self.best_c = result, st.centroids
            self.ckpt.save(self.payload(r, st))
        assert self.best_c is not None
        if self.best is None:  # the kept run finished before a resume: its labels again
            self.best = _final_labels(self.data, self.best_c, self.data.dtype, self.reducer)
        if state is None:
            state = LloydState(centroids=self.best_c, converged=True)
        return self.best, state

    def record(self, best: LloydResult) -> StageRecord:
        if self.sq_total is None:
            self.sq_total = _sum_sq(self.data, self.reducer)
        i_best = _best_index(self.runs)
        return StageRecord(
            n_clusters=self.k,
            inertia=self.runs[i_best]["inertia"],
            input_sum_of_squares=self.sq_total,
            runs=self.runs,
            best_run=i_best,
            empty_clusters=int((best.counts == 0).sum()),
            cluster_sizes=[int(v) for v in best.counts.tolist()],
        )


def _best_index(runs: list[dict[str, Any]]) -> int:
    return min(range(len(runs)), key=lambda i: runs[i]["inertia"]) if runs else 0


def _sum_sq(data: _Data, reducer: LocalReducer) -> float:
    total = torch.zeros(1, dtype=torch.float64)
    for z in data.batches():
        total += float(z.square().sum(1).sum(dtype=torch.float64))
    return float(reducer.sum_(total))


def _final_labels(
    data: _Data, centroids: torch.Tensor, dtype: torch.dtype, reducer: LocalReducer
) -> LloydResult:
    from .lloyd import final_assignment

    state = LloydState(centroids=centroids)
    return final_assignment(data.batches, state, dtype, reducer, data.score_dtype)


def _seed(
    data: _Data,
    k: int,
    run: int,
    stage: int,
    options: KMeansOptions,
    init: Any,
    reducer: LocalReducer,
    n: int,
    resume: dict[str, Any] | None = None,
    save: Callable[[dict[str, Any]], None] | None = None,
) -> torch.Tensor:
    """Initial centroids of one run (the same on every rank: computed from gathered
    samples with the same generator, then broadcast from rank 0). A greedy k-means++
    seeding hands its state to ``save`` every ``_SEED_SAVE_SECONDS`` and continues from
    ``resume`` (:func:`.seeding.greedy_kmeans_pp`); the other inits ignore both."""
    seed = options.seed + run + 7919 * stage
    if is_tensor(init):
        out = data.transform(init.to(torch.float64)).to(torch.float64)
    elif init == "k-means||":
        out = kmeans_parallel(
            data.batches,
            k,
            seed,
            reducer,
            rounds=options.init_rounds,
            oversampling=options.oversampling,
            n_local_trials=options.local_trials(k),
            dtype=data.dtype,
            score_dtype=data.score_dtype,
        )
    elif init == "k-means++" and options.init_sampling == "importance":
        rows, weights = importance_sample(
            data.batches, options.sample_size(n, k), seed, reducer, data.row_offset
        )
        if len(rows) >= k:  # (a Bernoulli sample can fall short of k when m is near k)
            out = _greedy(data, rows, k, seed, options, resume, save, weights)
        else:
            out = _uniform_seed(data, k, seed, options, reducer, n, init, resume, save)
    else:
        out = _uniform_seed(data, k, seed, options, reducer, n, init, resume, save)
    out = reducer.broadcast(out.cpu())
    if out.shape[0] < k or not math.isfinite(float(out.sum())):
        raise RuntimeError(f"Seeding produced {out.shape[0]} centroids for k={k}.")
    return out.to(torch.float64)


def _uniform_seed(
    data: _Data,
    k: int,
    seed: int,
    options: KMeansOptions,
    reducer: LocalReducer,
    n: int,
    init: str,
    resume: dict[str, Any] | None = None,
    save: Callable[[dict[str, Any]], None] | None = None,
) -> torch.Tensor:
    """Random rows, or greedy k-means++ on a uniform sample (resumable as in :func:`_seed`)."""
    sample = uniform_sample(data.batches, options.sample_size(n, k), seed, reducer, data.row_offset)
    if init == "random":
        return random_rows(sample, k)
    return _greedy(data, sample, k, seed, options, resume, save)


def _greedy(
    data: _Data,
    rows: torch.Tensor,
    k: int,
    seed: int,
    options: KMeansOptions,
    resume: dict[str, Any] | None,
    save: Callable[[dict[str, Any]], None] | None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Greedy k-means++ on the sampled ``rows`` (``weights``: an importance sample's),
    saving its state every ``_SEED_SAVE_SECONDS`` (resumable as in :func:`_seed`)."""
    return greedy_kmeans_pp(
        rows.to(data.device),
        k,
        _generator(seed, 1),
        options.local_trials(k),
        weights=weights,
        dtype=data.dtype,
        score_dtype=data.score_dtype,
        resume=resume,
        save=save,
        save_every=_SEED_SAVE_SECONDS,
    )
