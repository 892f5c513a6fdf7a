"""What every experiment reads: the model and text, the split of contexts into fit,
validation and held-out eval contexts (with each fit's provenance), the activation cache
and the Gaussian control with the activations' mean and covariance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..provenance import Provenance
from .config import ExperimentConfig
from .keys import data_key
from .points import Point


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


class ExperimentInputs:
    """The model, the context split and the cached activations of one configuration."""

    def __init__(self, cfg: ExperimentConfig, out: Path, device: str, progress: bool) -> None:
        from ..data import load_model, split_contexts
        from ..hooks import model_hook_width

        self.cfg, self.out, self.device, self.progress = cfg, out, device, progress
        ctx = cfg.context_size
        self.model = load_model(cfg.model, device=device, n_ctx=max(ctx, 128))
        # a UsageError naming the model's layers, before any work
        self.widths = {layer: model_hook_width(self.model, cfg.hook(layer)) for layer in cfg.layers}
        self.n_fit_ctx = -(-cfg.rows_tokens // (ctx - 1))
        self.n_val_ctx = -(-cfg.val_tokens // (ctx - 1)) if cfg.val_tokens else 0
        # SAEBench draws its KL/CE batches first and the variance batches after them (its
        # reset_input_dataset does not rewind the token stream): the eval slice holds both,
        # and a variance-only run reads the same variance contexts.
        self.n_var_ctx = cfg.eval_batches * cfg.batch_prompts
        self.split = split_contexts(
            cfg.dataset,
            self.model.tokenizer,
            context_size=ctx,
            n_fit=self.n_fit_ctx + self.n_val_ctx,
            n_eval=self.n_var_ctx + cfg.recon_batches * cfg.batch_prompts,
            seed=cfg.seed,
        )
        assert not set(self.split.fit_index.tolist()) & set(self.split.eval_index.tolist())
        # One key per layer (each layer's rows, fits and evaluations are cached under its
        # own), so a run that adds a layer reuses every stage of the layers already done.
        self.data_keys = {layer: data_key(cfg, layer) for layer in cfg.layers}
        self._acts: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
        self._gauss: dict[int, dict[str, torch.Tensor]] = {}

    # The activations are read (or collected) when a fit or an evaluation first needs
    # them: a run whose every model is cached never touches them.
    @property
    def rows(self) -> dict[str, torch.Tensor]:
        """Per hook: the activation rows (``rows_tokens``; the fit rows are the first)."""
        if self._acts is None:
            self._acts = self._activations()
        return self._acts[0]

    @property
    def val_acts(self) -> dict[str, torch.Tensor]:
        """Per hook: the held-out validation rows (the SAEs' learning curves)."""
        self.rows  # noqa: B018  (loads both)
        assert self._acts is not None
        return self._acts[1]

    @property
    def fit_acts(self) -> dict[str, torch.Tensor]:
        """Per hook: the fit rows (the first ``fit_tokens`` rows)."""
        return {h: a[: self.cfg.fit_tokens] for h, a in self.rows.items()}

    def data_key(self, layer: int) -> str:
        """The cache key of ``layer``'s activation rows (model, text, split, token counts,
        seed, layer): every fit and evaluation of that layer is keyed under it."""
        return self.data_keys[layer]

    def _acts_path(self, layer: int) -> Path:
        return self.out / "cache" / f"acts-{self.data_key(layer)}.pt"

    def cached_layers(self) -> set[int]:
        """The layers whose activation rows are already on disk (no model pass needed)."""
        return {layer for layer in self.cfg.layers if self._acts_path(layer).is_file()}

    def _activations(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Every layer's rows and validation rows: read (memory-mapped) from each layer's
        cache file, the missing layers collected in one model pass and saved atomically."""
        fit: dict[str, torch.Tensor] = {}
        val: dict[str, torch.Tensor] = {}
        paths = {layer: self._acts_path(layer) for layer in self.cfg.layers}
        missing = [layer for layer, path in paths.items() if not path.is_file()]
        for layer, path in paths.items():
            if layer not in missing:  # memory-mapped: every method reads the same pages
                saved = torch.load(path, weights_only=True, mmap=True)
                fit.update(saved["fit"])
                val.update(saved["val"])
        if missing:
            got_fit, got_val = self._collect([self.cfg.hook(layer) for layer in missing])
            for layer in missing:
                hook = self.cfg.hook(layer)
                path = paths[layer]
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                torch.save({"fit": {hook: got_fit[hook]}, "val": {hook: got_val[hook]}}, tmp)
                tmp.replace(path)  # an interrupted save leaves no half-written cache
            fit.update(got_fit)
            val.update(got_val)
        return fit, val

    def _collect(self, hooks: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        from datasets import Dataset

        from ..clustering import collect_activations

        cfg = self.cfg
        rows = self.split.fit  # fit contexts, then validation contexts
        acts = collect_activations(
            self.model,
            Dataset.from_dict({"input_ids": rows.tolist()}),
            hooks,
            len(rows) * (cfg.context_size - 1),
            context_size=cfg.context_size,
            batch_prompts=cfg.batch_prompts,
            drop_first_position=True,
            device=self.device,
            progress=self.progress,
        )
        n_val = self.n_fit_ctx * (cfg.context_size - 1)
        fit = {h: a[: cfg.rows_tokens].contiguous() for h, a in acts.items()}
        val = {h: a[n_val : n_val + cfg.val_tokens].contiguous() for h, a in acts.items()}
        return fit, val

    def gaussian(self, layer: int) -> dict[str, torch.Tensor]:
        """The control: fit (training rows: ``rows``), validation and eval samples of
        N(mean, cov) of the fit acts."""
        if layer not in self._gauss:
            x = self.fit_acts[self.cfg.hook(layer)]
            s = self.cfg.seed
            rows = gaussian_like(x, self.cfg.rows_tokens, s + 1)
            self._gauss[layer] = {
                "rows": rows,
                "fit": rows[: self.cfg.fit_tokens],
                "val": gaussian_like(x, max(self.cfg.val_tokens, 1), s + 3),
                "eval": gaussian_like(x, self.n_var_ctx * (self.cfg.context_size - 1), s + 2),
            }
        return self._gauss[layer]

    def fit_data(
        self, point: Point, rows: str = "fit"
    ) -> tuple[torch.Tensor, torch.Tensor | None, Provenance | None]:
        """(activations, validation activations or None, provenance) of ``point``: its
        fit rows, or with ``rows="train"`` the SAE training rows (``train_tokens``; the
        fit rows when that is 0)."""
        n = self.cfg.train_tokens or self.cfg.fit_tokens if rows == "train" else None
        if point.source == "real":
            hook = self.cfg.hook(point.layer)
            acts = self.fit_acts[hook] if n is None else self.rows[hook][:n]
            val, prov = self.val_acts.get(hook), self.provenance(point.layer, n)
        else:
            g = self.gaussian(point.layer)
            acts = g["fit"] if n is None else g["rows"][:n]
            val, prov = g["val"], None
        return acts, val if val is not None and len(val) else None, prov

    def provenance(self, layer: int, n_tokens: int | None = None) -> Provenance:
        """Provenance of a fit on the first ``n_tokens`` rows (default: the fit rows)."""
        n = n_tokens or self.cfg.fit_tokens
        n_ctx = -(-n // (self.cfg.context_size - 1))
        return Provenance.of_split(
            self.split,
            self.split.fit_index[:n_ctx].tolist(),
            model_name=self.cfg.model,
            hook_name=self.cfg.hook(layer),
            dataset=self.cfg.dataset,
            context_size=self.cfg.context_size,
            tokenizer=self.model.tokenizer,
            split_seed=self.cfg.seed,
            fit_tokens=n,
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
