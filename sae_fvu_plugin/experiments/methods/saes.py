"""SAEs trained by SAELens's own trainer (``SAETrainer`` with its training-SAE classes) on
the same cached fit activations as the clustering methods: TopK, BatchTopK and the
standard ReLU + L1 SAE.

Training is a fair fight: the trainer runs in segments of ``sae_eval_every`` tokens; after
each, explained variance (fvu_a) on held-out validation tokens is recorded (the learning
curve); training stops once it changed by less than ``plateau`` (relative) over the last
fifth of training, or at ``sae_max_tokens``. The activations are scaled by
c = √d / mean‖x‖ for training (SAELens's ``expected_average_only_in`` convention, which
makes the L1 coefficients meaningful across layers); c is folded into the saved inference
SAE, which therefore takes raw activations. Explained variance is scale-invariant, so the
curve on scaled validation data is the same number.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from typing import Any

import torch

from ..points import FitInput
from ..registry import Method, register

_TRAIN_FIELDS = (
    "seed",
    "sae_batch_tokens",
    "sae_lr",
    "sae_max_tokens",
    "sae_eval_every",
    "plateau",
    "val_tokens",
)


def _provider(x: torch.Tensor, batch: int, seed: int) -> Any:
    """Endless shuffled batches of the fit activations (a new permutation per epoch)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=g)
        for s in range(0, len(order) - batch + 1, batch):
            yield x[order[s : s + batch]]


def plateaued(curve: list[tuple[int, float]], tol: float) -> bool:
    """Held-out explained variance changed by < ``tol`` (relative) over the last fifth of
    training (needs ≥ 5 points)."""
    if len(curve) < 5:
        return False
    t_end, v_end = curve[-1]
    start = next(v for t, v in curve if t >= 0.8 * t_end)
    return abs(v_end - start) <= tol * max(abs(v_end), 1e-12)


def _explained(sae: Any, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(fvu_a explained variance, firing frequency per latent) of ``sae`` on ``x``."""
    from ... import explained_variance

    with torch.no_grad():
        feats = sae.encode(x)
        recon = sae.decode(feats)
    return explained_variance(x, recon, "fvu_a"), (feats != 0).float().mean(0)


def train(kind: str, inp: FitInput) -> Any:
    """Train one SAE of ``kind`` with SAELens's trainer; return its inference SAE."""
    from sae_lens import SAE as InferenceSAE
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        LoggingConfig,
        SAETrainer,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata

    cfg, p = inp.cfg, inp.params
    x = inp.acts.float()
    d = x.shape[1]
    scale = math.sqrt(d) / float(x.norm(dim=1).mean())
    xs = (x * scale).to(inp.device)
    val = (inp.val if inp.val is not None else x[-2048:]).float().to(inp.device) * scale
    torch.manual_seed(cfg.seed)
    common = dict(
        d_in=d, d_sae=p["d_sae"], dtype="float32", device=inp.device, metadata=SAEMetadata()
    )
    sae: Any
    if kind == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=p["k"], **common))
    elif kind == "batchtopk":
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=p["k"], **common))
    else:
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=p["l1"], **common))
    with torch.no_grad():
        sae.b_dec.copy_(xs.mean(0))
    batch = min(cfg.sae_batch_tokens, len(xs))
    segment = max(batch, (cfg.sae_eval_every // batch) * batch)
    trainer = SAETrainer(
        SAETrainerConfig(
            total_training_samples=segment,
            train_batch_size_samples=batch,
            lr=cfg.sae_lr,
            lr_end=cfg.sae_lr,
            lr_scheduler_name="constant",
            device=inp.device,
            dead_feature_window=max(1, len(xs) // batch),
            feature_sampling_window=max(1, len(xs) // batch),
            logger=LoggingConfig(log_to_wandb=False),
        ),
        sae,
        _provider(xs, batch, cfg.seed),
    )
    curve: list[tuple[int, float]] = []
    while True:
        with contextlib.redirect_stderr(io.StringIO()):  # SAELens's own progress bar
            trainer.fit()
        sae.eval()
        ev, _ = _explained(sae, val)
        sae.train()
        curve.append((trainer.n_training_samples, ev))
        if plateaued(curve, cfg.plateau) or trainer.n_training_samples >= cfg.sae_max_tokens:
            break
        trainer.cfg.total_training_samples += segment
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        inference = InferenceSAE.load_from_disk(tmp, device="cpu")
    inference.fold_activation_norm_scaling_factor(scale)
    _, freq = _explained(inference, (val / scale).cpu())
    seen = trainer.n_training_samples
    meta = inference.cfg.metadata
    for key, value in inp.metadata.items():
        meta[key] = value
    if inp.provenance is not None:
        meta["provenance"] = inp.provenance.to_dict()
    meta["n_tokens"] = len(x)
    meta["tokens_seen"] = seen
    meta["passes"] = seen / len(x)
    meta["learning_curve"] = [[t, v] for t, v in curve]
    meta["plateaued"] = plateaued(curve, cfg.plateau)
    meta["dead_latents"] = int((freq == 0).sum())
    meta["dense_latents"] = int((freq > 0.1).sum())
    meta["training_scale"] = scale
    return inference


def _kind(kind: str) -> Any:
    def fit(inp: Any) -> Any:
        return train(kind, inp)

    return fit


register(
    Method(
        "topk",
        "sae",
        _kind("topk"),
        l0=lambda p: p["k"],
        d_sae=lambda p: p["d_sae"],
        label=lambda p: f"d{p['d_sae']}-k{p['k']}",
        description="SAELens TopK SAE",
        config_fields=_TRAIN_FIELDS,
    )
)
register(
    Method(
        "batchtopk",
        "sae",
        _kind("batchtopk"),
        l0=lambda p: p["k"],
        d_sae=lambda p: p["d_sae"],
        label=lambda p: f"d{p['d_sae']}-k{p['k']}",
        description="SAELens BatchTopK SAE (JumpReLU at inference)",
        config_fields=_TRAIN_FIELDS,
    )
)
register(
    Method(
        "standard",
        "sae",
        _kind("standard"),
        l0=lambda p: None,
        d_sae=lambda p: p["d_sae"],
        label=lambda p: f"d{p['d_sae']}-l1_{p['l1']:g}",
        description="SAELens standard SAE (ReLU + L1)",
        config_fields=_TRAIN_FIELDS,
    )
)
