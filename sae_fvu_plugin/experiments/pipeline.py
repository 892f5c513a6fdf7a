"""One experiment pipeline for the clustering sweep and the frontier.

What every experiment shares lives here: the model and text; the split of contexts into
fit, validation and held-out eval contexts (with each fit's provenance); the activation
cache; the Gaussian control with the activations' mean and covariance; fitting a point
(a method with its parameters, on a layer and a data source) with its SAE cached on disk;
evaluating it — real data through SAEBench's unmodified ``run_evals`` with the plugin
reporting every definition, the Gaussian control directly with the same definitions and
eval-batch structure; and the result rows. The sweep and the frontier are configurations
of it plus their own tables and plots.

Reruns reuse everything cached under ``out/`` (activations, fitted SAEs, evaluated rows),
keyed by the settings that produced them; nothing cached is ever overwritten.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..clustering.provenance import Provenance, check_overlap, to_ranges
from ..options import KMeansOptions
from . import methods as method_registry
from .config import ExperimentConfig

DEFS = ("fvu_a", "fvu_b", "fvu_per_dim", "saebench_0_6")
ROWS_FORMAT = 2  # bump when a result row gains fields, so cached rows are recomputed


def key_of(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Point:
    """One model of an experiment: a method with its parameters, on a layer and a source."""

    method: str
    params: tuple[tuple[str, Any], ...]
    layer: int
    source: str = "real"  # "real" or "gaussian"

    @classmethod
    def of(cls, method: str, layer: int, source: str = "real", **params: Any) -> Point:
        return cls(method, tuple(sorted(params.items())), layer, source)

    @property
    def p(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def name(self) -> str:
        m = method_registry.get(self.method)
        return f"L{self.layer}-{self.source}-{self.method}-{m.label(self.p)}"


@dataclass
class FitInput:
    """What a method's fit function gets."""

    point: Point
    params: dict[str, Any]
    acts: torch.Tensor
    val: torch.Tensor | None
    cfg: ExperimentConfig
    options: KMeansOptions
    provenance: Provenance | None
    metadata: dict[str, Any]
    device: str
    require: Callable[[Point], Any]
    progress: bool


def massive_stats(x: torch.Tensor, fraction: float) -> dict[str, float]:
    """Share of total variance Σ‖x_n − μ‖² carried by the top ``fraction`` of tokens by
    norm ‖x_n‖, the norm quantiles and the exclusion threshold."""
    x64 = x.double()
    norms = x64.norm(dim=1)
    dev = (x64 - x64.mean(0)).square().sum(1)
    m = max(1, int(round(fraction * len(x))))
    top = torch.topk(norms, m).indices
    return {
        "n_tokens": len(x),
        "top_tokens": m,
        "top_variance_share": float(dev[top].sum() / dev.sum()),
        "norm_median": float(norms.median()),
        "norm_p99": float(norms.quantile(0.99)),
        "norm_max": float(norms.max()),
        "threshold": float(torch.sort(norms).values[-m - 1]) if len(x) > m else float(norms.min()),
    }


def gaussian_like(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n samples of N(mean(x), cov(x)) (float64 moments, float32 samples)."""
    x64 = x.double()
    mu = x64.mean(0)
    evals, evecs = torch.linalg.eigh(torch.cov(x64.T))
    root = evecs * evals.clamp(min=0).sqrt()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, x.shape[1], generator=g, dtype=torch.float64)
    return (mu + z @ root.T).float()


def _save_atomic(sae: Any, folder: Path) -> None:
    """Save an SAE into a fresh folder (never over an existing one)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp"))
    try:
        from sae_lens import SAE

        SAE.save_model(sae, tmp)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _load_sae(folder: Path, device: str) -> Any:
    from sae_bench.sae_bench_utils.general_utils import _standardize_sae_cfg
    from sae_lens import SAE

    from ..clustering import register

    register()
    sae = SAE.load_from_disk(folder, device=device)
    _standardize_sae_cfg(sae.cfg)
    return sae


class Experiment:
    """The data, the cache and the evaluation of one experiment configuration."""

    def __init__(self, cfg: ExperimentConfig, *, progress: bool = True) -> None:
        from ..data import load_model, split_contexts

        self.cfg = cfg
        self.progress = progress
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_model(cfg.model, device=self.device, n_ctx=max(cfg.context_size, 128))
        ctx = cfg.context_size
        self.val_tokens = int(getattr(cfg, "val_tokens", 0))
        # SAEBench's KL / CE passes: a frontier option (off on CPU), always on in the sweep
        self.model_metrics = bool(getattr(cfg, "model_metrics", True))
        self.n_fit_ctx = -(-cfg.fit_tokens // (ctx - 1))
        self.n_val_ctx = -(-self.val_tokens // (ctx - 1)) if self.val_tokens else 0
        # SAEBench draws its KL/CE batches first and the variance batches after them (its
        # reset_input_dataset does not rewind the token stream): the eval slice holds both,
        # and a variance-only run reads the same variance contexts.
        self.n_var_ctx = cfg.eval_batches * cfg.batch_prompts
        n_eval_ctx = self.n_var_ctx + cfg.recon_batches * cfg.batch_prompts
        self.split = split_contexts(
            cfg.dataset,
            self.model.tokenizer,
            context_size=ctx,
            n_fit=self.n_fit_ctx + self.n_val_ctx,
            n_eval=n_eval_ctx,
            seed=cfg.seed,
        )
        self.fit_index = self.split.fit_index[: self.n_fit_ctx]
        self.val_index = self.split.fit_index[self.n_fit_ctx :]
        assert not set(self.split.fit_index.tolist()) & set(self.split.eval_index.tolist())
        self.data_key = key_of(
            cfg.model, cfg.dataset, ctx, cfg.fit_tokens, self.val_tokens, cfg.seed, cfg.layers
        )
        self.eval_key = key_of(
            ROWS_FORMAT,
            self.data_key,
            cfg.eval_batches,
            cfg.batch_prompts,
            cfg.recon_batches,
            cfg.bootstrap,
            *([] if self.model_metrics else ["no-kl-ce"]),
        )
        self.fit_acts, self.val_acts = self._activations()
        self._gauss: dict[int, dict[str, torch.Tensor]] = {}
        self._fitted: dict[Point, Any] = {}
        self.fit_seconds: dict[Point, float] = {}

    # ------------------------------------------------------------------------- data

    def hooks(self) -> list[str]:
        return [self.cfg.hook(layer) for layer in self.cfg.layers]

    def _activations(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        from datasets import Dataset

        from ..clustering import collect_activations

        path = self.out / "cache" / f"acts-{self.data_key}.pt"
        if path.is_file():
            saved = torch.load(path, weights_only=True)
            return saved["fit"], saved["val"]
        rows = self.split.fit  # fit contexts, then validation contexts
        n_rows = len(rows) * (self.cfg.context_size - 1)
        acts = collect_activations(
            self.model,
            Dataset.from_dict({"input_ids": rows.tolist()}),
            self.hooks(),
            n_rows,
            context_size=self.cfg.context_size,
            batch_prompts=self.cfg.batch_prompts,
            drop_first_position=True,
            device=self.device,
            progress=self.progress,
        )
        n_fit = self.cfg.fit_tokens
        n_val = self.n_fit_ctx * (self.cfg.context_size - 1)
        fit = {h: a[:n_fit].contiguous() for h, a in acts.items()}
        val = {h: a[n_val : n_val + self.val_tokens].contiguous() for h, a in acts.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"fit": fit, "val": val}, path)
        return fit, val

    def gaussian(self, layer: int) -> dict[str, torch.Tensor]:
        """The control: fit, validation and eval samples of N(mean, cov) of the fit acts."""
        if layer not in self._gauss:
            x = self.fit_acts[self.cfg.hook(layer)]
            s = self.cfg.seed
            self._gauss[layer] = {
                "fit": gaussian_like(x, len(x), s + 1),
                "val": gaussian_like(x, max(self.val_tokens, 1), s + 3),
                "eval": gaussian_like(x, self.n_var_ctx * (self.cfg.context_size - 1), s + 2),
            }
        return self._gauss[layer]

    def provenance(self, layer: int) -> Provenance:
        tok = self.model.tokenizer
        return Provenance(
            model_name=self.cfg.model,
            hook_name=self.cfg.hook(layer),
            dataset=self.cfg.dataset,
            context_size=self.cfg.context_size,
            tokenizer=f"{Path(str(getattr(tok, 'name_or_path', 'unknown'))).name}:{len(tok)}",
            prepend_bos=True,
            drop_first_position=True,
            split_seed=self.cfg.seed,
            corpus_contexts=self.split.corpus_contexts,
            fit_contexts=to_ranges(self.fit_index.tolist()),
            fit_contexts_sha256=self.split.contexts_hash(self.fit_index.tolist()),
            fit_tokens=self.cfg.fit_tokens,
        )

    def base_metadata(self, point: Point) -> dict[str, Any]:
        return {
            "model_name": self.cfg.model,
            "hook_name": self.cfg.hook(point.layer),
            "context_size": self.cfg.context_size,
            "prepend_bos": True,
            "dataset_path": self.cfg.dataset
            if point.source == "real"
            else f"gaussian({self.cfg.dataset} moments)",
        }

    # ---------------------------------------------------------------------- fitting

    def fit_key(self, point: Point) -> str:
        m = method_registry.get(point.method)
        relevant = {name: getattr(self.cfg, name, None) for name in m.config_fields}
        return key_of(
            self.data_key, point.method, point.params, point.layer, point.source, relevant
        )

    def fitted(self, point: Point) -> Any:
        """The SAE of ``point``: from this run, from the disk cache, or fitted now."""
        if point in self._fitted:
            return self._fitted[point]
        folder = self.out / "saes" / f"{point.name}-{self.fit_key(point)}"
        if (folder / "cfg.json").is_file():
            sae = _load_sae(folder, "cpu")
        else:
            sae = self._fit(point)
            _save_atomic(sae.to("cpu"), folder)
            sae = _load_sae(folder, "cpu")
        self._fitted[point] = sae
        return sae

    def _fit(self, point: Point) -> Any:
        from sae_bench.sae_bench_utils.general_utils import _standardize_sae_cfg

        method = method_registry.get(point.method)
        hook = self.cfg.hook(point.layer)
        if point.source == "real":
            acts, val, prov = (
                self.fit_acts[hook],
                self.val_acts.get(hook),
                self.provenance(point.layer),
            )
        else:
            g = self.gaussian(point.layer)
            acts, val, prov = g["fit"], g["val"], None
        ckpt = self.out / "checkpoints" / f"{point.name}-{self.fit_key(point)}.pt"
        options = KMeansOptions(
            n_iter=self.cfg.n_iter,
            seed=self.cfg.seed,
            device=self.device,
            progress=False,
            checkpoint=str(ckpt),
        )
        inp = FitInput(
            point=point,
            params=point.p,
            acts=acts,
            val=val if val is not None and len(val) else None,
            cfg=self.cfg,
            options=options,
            provenance=prov,
            metadata=self.base_metadata(point),
            device=self.device,
            require=self.fitted,
            progress=self.progress,
        )
        started = time.perf_counter()
        sae = method.fit(inp)
        seconds = time.perf_counter() - started
        meta = sae.cfg.metadata
        meta["experiment"] = {
            "key": self.fit_key(point),
            "method": point.method,
            "family": method.family,
            "params": point.p,
            "layer": point.layer,
            "source": point.source,
            "fit_seconds": round(seconds, 3),
        }
        if prov is not None and meta.get("provenance") is None:
            meta["provenance"] = prov.to_dict()
        for k, v in self.base_metadata(point).items():
            if meta.get(k) is None:
                meta[k] = v
        _standardize_sae_cfg(sae.cfg)
        ckpt.unlink(missing_ok=True)
        return sae

    # ------------------------------------------------------------------- evaluation

    def eval_real(
        self,
        sae: Any,
        point: Point,
        *,
        exclude: float | None = None,
        out_json: Path | None = None,
        reuse_groups: dict[str, Any] | None = None,
        model_metrics: bool = True,
    ) -> dict[str, Any]:
        """SAEBench's run_evals on the held-out eval contexts (plugin enabled, every
        definition reported); with ``exclude``, tokens above that norm are left out of
        explained variance (variance contexts only, no KL / CE passes: those groups come
        from ``reuse_groups``, the all-token run of the same SAE). ``model_metrics=False``
        skips the KL / CE passes too; the variance contexts and every other metric are the
        same as in a run with them."""
        from datasets import Dataset

        from ..saebench import core_eval_config, run_core_eval

        prov = Provenance.from_metadata(sae.cfg.metadata)
        report = check_overlap(
            prov,
            self.split.eval_index.tolist(),
            fit_hash_now=None if prov is None else self.split.contexts_hash(prov.fit_ids),
        )
        variance_only = exclude is not None or not model_metrics
        rows = self.split.eval[-self.n_var_ctx :] if variance_only else self.split.eval
        config = core_eval_config(
            compute_kl=not variance_only,
            compute_ce_loss=not variance_only,
            n_eval_batches=self.cfg.eval_batches,
            n_reconstruction_batches=self.cfg.recon_batches,
            batch_size_prompts=self.cfg.batch_prompts,
            model_name=self.cfg.model,
            dataset=self.cfg.dataset,
            context_size=self.cfg.context_size,
            explained_variance_report=["all"],
            explained_variance_exclude_norm_above=exclude,
            **self.bootstrap_fields(),
        )
        res = run_core_eval(
            sae.to(self.device),
            self.model,
            Dataset.from_dict({"input_ids": rows.tolist()}),
            config,
            out_json=out_json,
            sae_release=f"sae_fvu_plugin:{Path(self.cfg.out).name}",
            sae_id=point.name,
            device=self.device,
            extra={"held_out": report.to_dict()},
            reuse_groups=reuse_groups,
        )
        sae.to("cpu")
        res["held_out"] = report.to_dict()
        return res

    def bootstrap_fields(self) -> dict[str, Any]:
        """Config fields of the uncertainty intervals (paired across every point: same
        seed, same eval contexts)."""
        return {
            "explained_variance_bootstrap": self.cfg.bootstrap,
            "explained_variance_seed": self.cfg.seed,
        }

    def eval_direct(self, sae: Any, point: Point) -> dict[str, Any]:
        """The Gaussian control (no model): every definition on the eval samples with the
        real runs' eval-batch structure, one accumulator update per batch."""
        from .. import FVUAccumulator

        x = self.gaussian(point.layer)["eval"]
        per_batch = self.cfg.batch_prompts * (self.cfg.context_size - 1)
        acc = FVUAccumulator("all", **self._acc_kwargs())
        l0 = 0.0
        with torch.no_grad():
            for s in range(0, len(x), per_batch):
                xb = x[s : s + per_batch]
                f = sae.encode(xb)
                acc.update(xb, sae.decode(f))
                l0 += float((f != 0).sum())
        ev = acc.explained_variance()
        out: dict[str, Any] = {
            "metrics": {
                "reconstruction_quality": {
                    "explained_variance": ev["fvu_a"],
                    "explained_variance_by_definition": ev,
                    "explained_variance_excluded_tokens": 0,
                },
                "sparsity": {"l0": l0 / len(x)},
            },
            "held_out": None,
        }
        if self.cfg.bootstrap:
            rq = out["metrics"]["reconstruction_quality"]
            reps = acc.bootstrap_replicates()
            rq["explained_variance_ci"] = {
                k: [1 - hi, 1 - lo]
                for k, (lo, hi) in acc.confidence_interval(replicates=reps).items()
            }
            rq["explained_variance_replicates"] = {k: (1 - v).tolist() for k, v in reps.items()}
        return out

    def save_direct(self, point: Point, result: dict[str, Any], path: Path) -> None:
        """A result JSON for a direct (Gaussian-control) evaluation, shaped like SAEBench's
        (``eval_config``, ``eval_result_metrics``) and labelled as not a SAEBench run."""
        per_batch = self.cfg.batch_prompts * (self.cfg.context_size - 1)
        data = {
            "eval_type_id": "core",
            "eval_config": {
                "note": "Gaussian control with the activations' mean and covariance: evaluated "
                "directly by sae_fvu_plugin (there is no model to run SAEBench's loop on), with "
                "the same definitions, eval-batch structure and bootstrap",
                "model_name": self.cfg.model,
                "hook_name": self.cfg.hook(point.layer),
                "eval_tokens": len(self.gaussian(point.layer)["eval"]),
                "batch_tokens": per_batch,
                "explained_variance_bootstrap": self.cfg.bootstrap,
                "explained_variance_seed": self.cfg.seed,
            },
            "eval_result_metrics": result["metrics"],
            "sae_id": point.name,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(plain(data), indent=2))

    def _acc_kwargs(self) -> dict[str, Any]:
        return {"bootstrap": self.cfg.bootstrap, "seed": self.cfg.seed}

    # ------------------------------------------------------------------------ rows

    def row(self, point: Point, sae: Any, result: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """One result row: the point, its fit record, every definition, SAEBench's metrics."""
        method = method_registry.get(point.method)
        meta = sae.cfg.metadata
        m = result["metrics"]
        rq = m["reconstruction_quality"]
        ev = rq["explained_variance_by_definition"]
        n = meta.get("n_tokens") or len(self.fit_acts[self.cfg.hook(point.layer)])
        row: dict[str, Any] = {
            "name": point.name,
            "method": point.method,
            "family": method.family,
            "layer": point.layer,
            "hook": self.cfg.hook(point.layer),
            "source": point.source,
            "params": point.p,
            "d_sae": int(sae.cfg.d_sae),
            "l0_nominal": method.l0(point.p),
            "l0": m.get("sparsity", {}).get("l0"),
            "n_tokens": int(n),
            "tokens_seen": meta.get("tokens_seen"),
            "passes": meta.get("passes"),
            "fit_seconds": (meta.get("experiment") or {}).get("fit_seconds"),
            "excluded_tokens": rq.get("explained_variance_excluded_tokens", 0),
            "ev_all": ev,
            "ev_ci": rq.get("explained_variance_ci"),
            "ev_replicates": {
                d: v
                for d, v in (rq.get("explained_variance_replicates") or {}).items()
                if d in ("fvu_a", "fvu_b")
            },
            "kl_div_score": m.get("model_behavior_preservation", {}).get("kl_div_score"),
            "ce_loss_score": m.get("model_performance_preservation", {}).get("ce_loss_score"),
            "cossim": rq.get("cossim"),
            "mse": rq.get("mse"),
            "held_out": result.get("held_out"),
        }
        for d in DEFS:
            row[f"ev_{d}"] = ev.get(d)
        for key in ("learning_curve", "plateaued", "dead_latents", "dense_latents", "inertia"):
            if meta.get(key) is not None:
                row[key] = meta.get(key)
        return row | extra

    def is_cached(self, point: Point, tag: str = "") -> bool:
        return self._rows_path(point, tag).is_file()

    def _rows_path(self, point: Point, tag: str = "") -> Path:
        return self.out / "rows" / f"{point.name}-{self.fit_key(point)}-{self.eval_key}{tag}.json"

    def rows_for(
        self,
        point: Point,
        evaluate: Callable[[Any, Point], list[dict[str, Any]]],
        tag: str = "",
    ) -> list[dict[str, Any]]:
        """The rows of a point: cached, or fitted and evaluated now."""
        path = self._rows_path(point, tag)
        if path.is_file():
            return list(json.loads(path.read_text()))
        sae = self.fitted(point)
        rows = evaluate(sae, point)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, default=float))
        os.replace(tmp, path)
        return rows

    def run(
        self,
        points: Iterable[Point],
        evaluate: Callable[[Any, Point], list[dict[str, Any]]],
        *,
        desc: str = "fit + eval",
        tag: str = "",
    ) -> list[dict[str, Any]]:
        points = list(points)
        out: list[dict[str, Any]] = []
        bar = tqdm(points, desc=desc, unit="model", disable=not self.progress)
        for point in bar:
            bar.set_postfix_str(point.name)
            out += self.rows_for(point, evaluate, tag)
        bar.close()
        return out

    def default_evaluate(self, sae: Any, point: Point) -> list[dict[str, Any]]:
        """Real data: SAEBench with every metric (KL / CE only with ``model_metrics``),
        result JSON saved; Gaussian: direct."""
        if point.source == "real":
            json_path = self.out / "results" / f"{point.name}_eval_results.json"
            res = self.eval_real(sae, point, out_json=json_path, model_metrics=self.model_metrics)
            return [
                self.row(
                    point, sae, res, massive_excluded=False, n_eval_tokens=self.cfg.eval_tokens
                )
            ]
        return self.direct_rows(sae, point)

    def direct_rows(self, sae: Any, point: Point, **extra: Any) -> list[dict[str, Any]]:
        """A Gaussian-control point: evaluated directly, its result JSON saved, one row."""
        res = self.eval_direct(sae, point)
        self.save_direct(point, res, self.out / "results" / f"{point.name}_eval_results.json")
        n = len(self.gaussian(point.layer)["eval"])
        return [self.row(point, sae, res, massive_excluded=False, n_eval_tokens=n, **extra)]


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


def plain(obj: Any) -> Any:
    """JSON-friendly copy (dataclasses, tensors, NaN → None)."""
    if hasattr(obj, "__dataclass_fields__"):
        return plain(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


__all__ = [
    "DEFS",
    "Experiment",
    "FitInput",
    "Point",
    "gaussian_like",
    "key_of",
    "draw_with_intervals",
    "massive_stats",
    "plain",
]
