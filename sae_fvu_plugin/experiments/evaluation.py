"""Evaluating an experiment's points and turning results into rows: real data through
SAEBench's unmodified ``run_evals`` on held-out contexts (plugin enabled, every
definition), the Gaussian control directly with the same definitions, eval-batch structure
and bootstrap (there is no model to run SAEBench's loop on)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from . import registry
from .inputs import ExperimentInputs
from .keys import eval_key
from .points import Point
from .report import DEFS, plain


class Evaluator:
    """Evaluation of one experiment's points on its held-out tokens."""

    def __init__(self, inputs: ExperimentInputs) -> None:
        self.inputs = inputs
        self.cfg, self.out = inputs.cfg, inputs.out

    def key(self, layer: int) -> str:
        """The cache key of ``layer``'s evaluations: its rows' key and the eval settings."""
        return eval_key(self.cfg, layer)

    def result_json(self, point: Point, tag: str = "") -> Path:
        return self.out / "results" / f"{point.name}{tag}_eval_results.json"

    def real(
        self,
        sae: Any,
        point: Point,
        *,
        exclude: float | None = None,
        out_json: Path | None = None,
        reuse_groups: dict[str, Any] | None = None,
        model_metrics: bool = True,
    ) -> dict[str, Any]:
        """SAEBench's run_evals on the held-out eval contexts (every definition reported);
        with ``exclude``, tokens above that norm are left out of explained variance
        (variance contexts only, no KL / CE passes: those groups come from
        ``reuse_groups``, the all-token run of the same SAE). ``model_metrics=False`` skips
        the KL / CE passes too; the variance contexts and every other metric are the same
        as in a run with them."""
        from ..held_out import held_out_eval
        from ..saebench import core_eval_config

        cfg, inputs = self.cfg, self.inputs
        variance_only = exclude is not None or not model_metrics
        config = core_eval_config(
            compute_kl=not variance_only,
            compute_ce_loss=not variance_only,
            n_eval_batches=cfg.eval_batches,
            n_reconstruction_batches=cfg.recon_batches,
            batch_size_prompts=cfg.batch_prompts,
            model_name=cfg.model,
            dataset=cfg.dataset,
            context_size=cfg.context_size,
            explained_variance_report=["all"],
            explained_variance_exclude_norm_above=exclude,
            explained_variance_bootstrap=cfg.bootstrap,
            explained_variance_seed=cfg.seed,
        )
        res = held_out_eval(
            sae.to(inputs.device),
            inputs.model,
            inputs.split,
            config,
            rows=inputs.split.eval[-inputs.n_var_ctx :] if variance_only else None,
            out_json=out_json,
            sae_release=f"sae_fvu_plugin:{Path(cfg.out).name}",
            sae_id=point.name,
            device=inputs.device,
            reuse_groups=reuse_groups,
        )
        sae.to("cpu")
        return res

    def direct(self, sae: Any, point: Point) -> dict[str, Any]:
        """The Gaussian control: every definition on the eval samples with the real runs'
        eval-batch structure, one accumulator update per batch."""
        from .. import FVUAccumulator

        x = self.inputs.gaussian(point.layer)["eval"]
        per_batch = self.cfg.batch_prompts * (self.cfg.context_size - 1)
        acc = FVUAccumulator("all", bootstrap=self.cfg.bootstrap, seed=self.cfg.seed)
        l0 = 0.0
        with torch.no_grad():
            for s in range(0, len(x), per_batch):
                xb = x[s : s + per_batch]
                f = sae.encode(xb)
                acc.update(xb, sae.decode(f))
                l0 += float((f != 0).sum())
        ev = acc.explained_variance()
        rq: dict[str, Any] = {
            "explained_variance": ev["fvu_a"],
            "explained_variance_by_definition": ev,
            "explained_variance_excluded_tokens": 0,
        }
        if self.cfg.bootstrap:
            reps = acc.bootstrap_replicates()
            rq["explained_variance_ci"] = {
                k: [1 - hi, 1 - lo]
                for k, (lo, hi) in acc.confidence_interval(replicates=reps).items()
            }
            rq["explained_variance_replicates"] = {k: (1 - v).tolist() for k, v in reps.items()}
        return {
            "metrics": {"reconstruction_quality": rq, "sparsity": {"l0": l0 / len(x)}},
            "held_out": None,
        }

    def save_direct(self, point: Point, result: dict[str, Any], path: Path) -> None:
        """A result JSON for a direct (Gaussian-control) evaluation, shaped like SAEBench's
        (``eval_config``, ``eval_result_metrics``) and labelled as not a SAEBench run."""
        data = {
            "eval_type_id": "core",
            "eval_config": {
                "note": "Gaussian control with the activations' mean and covariance: evaluated "
                "directly by sae_fvu_plugin (there is no model to run SAEBench's loop on), with "
                "the same definitions, eval-batch structure and bootstrap",
                "model_name": self.cfg.model,
                "hook_name": self.cfg.hook(point.layer),
                "eval_tokens": len(self.inputs.gaussian(point.layer)["eval"]),
                "batch_tokens": self.cfg.batch_prompts * (self.cfg.context_size - 1),
                "explained_variance_bootstrap": self.cfg.bootstrap,
                "explained_variance_seed": self.cfg.seed,
            },
            "eval_result_metrics": result["metrics"],
            "sae_id": point.name,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(plain(data), indent=2))

    def row(self, point: Point, sae: Any, result: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """One result row: the point, its fit record, every definition, SAEBench's metrics."""
        method = registry.get(point.method)
        meta = sae.cfg.metadata
        m = result["metrics"]
        rq = m["reconstruction_quality"]
        ev = rq["explained_variance_by_definition"]
        n = meta.get("n_tokens") or len(self.inputs.fit_acts[self.cfg.hook(point.layer)])
        row: dict[str, Any] = {
            "name": point.name,
            "method": point.method,
            "family": method.family,
            "layer": point.layer,
            "hook": self.cfg.hook(point.layer),
            "source": point.source,
            "params": point.param_dict,
            "d_sae": int(sae.cfg.d_sae),
            "l0_nominal": method.l0(point.param_dict),
            "l0": m.get("sparsity", {}).get("l0"),
            "n_tokens": int(n),
            "tokens_seen": meta.get("tokens_seen"),
            "passes": meta.get("passes"),
            "fit_seconds": (meta.get("experiment") or {}).get("fit_seconds"),
            "excluded_tokens": rq.get("explained_variance_excluded_tokens", 0),
            "ev_all": ev,
            "ev_ci": rq.get("explained_variance_ci"),
            "ev_ci_note": rq.get("explained_variance_ci_note") or {},
            "ev_replicates": {
                d: v
                for d, v in (rq.get("explained_variance_replicates") or {}).items()
                if d in DEFS
            },
            "kl_div_score": m.get("model_behavior_preservation", {}).get("kl_div_score"),
            "ce_loss_score": m.get("model_performance_preservation", {}).get("ce_loss_score"),
            "cossim": rq.get("cossim"),
            "mse": rq.get("mse"),
            "held_out": result.get("held_out"),
        }
        for d in DEFS:
            row[f"ev_{d}"] = ev.get(d)
        for key in (
            "learning_curve",
            "plateaued",
            "converged",
            "continuations",
            "continuation_gain",
            "kept_checkpoint_tokens",
            "lr",
            "lr_sweep",
            "lr_halvings",
            "lr_final",
            "initial_threshold",
            "precision",
            "training_step",
            "dead_latents",
            "dead_fraction",
            "dense_latents",
            "inertia",
        ):
            if meta.get(key) is not None:
                row[key] = meta.get(key)
        return row | extra

    def default_rows(self, sae: Any, point: Point) -> list[dict[str, Any]]:
        """Real data: SAEBench with every metric (KL / CE only with ``model_metrics``),
        result JSON saved; Gaussian: direct."""
        if point.source != "real":
            return self.direct_rows(sae, point)
        res = self.real(
            sae, point, out_json=self.result_json(point), model_metrics=self.cfg.model_metrics
        )
        return [
            self.row(point, sae, res, massive_excluded=False, n_eval_tokens=self.cfg.eval_tokens)
        ]

    def direct_rows(self, sae: Any, point: Point, **extra: Any) -> list[dict[str, Any]]:
        """A Gaussian-control point: evaluated directly, its result JSON saved, one row."""
        res = self.direct(sae, point)
        self.save_direct(point, res, self.result_json(point))
        n = len(self.inputs.gaussian(point.layer)["eval"])
        return [self.row(point, sae, res, massive_excluded=False, n_eval_tokens=n, **extra)]
