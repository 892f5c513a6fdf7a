"""SAEs trained by SAELens's own trainer (``SAETrainer`` with its training-SAE classes):
TopK, BatchTopK, ReLU + L1, JumpReLU (quadratic L0 loss towards a target L0), Matryoshka
BatchTopK, and TopK started from the k-means codebook (a separate, labelled method).

Training at its best within a budget:

* **Fresh tokens.** The SAEs train on the experiment's training rows (``train_tokens``, a
  memory-mapped activation cache whose first ``fit_tokens`` rows are the clustering fit
  rows), each row seen at most ``sae_max_passes`` times.
* **Learning rate.** Each rate of ``sae_lrs`` trains ``sae_sweep_tokens`` tokens from the
  same initialisation and token order; the best on the validation rows continues (its
  tokens count; the others' are recorded as ``lr_sweep``).
* **Convergence.** Every ``sae_eval_every`` tokens the held-out validation explained
  variance EV = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² (fvu_a) is recorded (the learning curve). When it
  changed by less than ``plateau`` (relative) over the last fifth of training, training
  continues by 50 % more tokens; if that gains less than ``continuation`` (relative), the
  SAE has converged (each continuation's gain is recorded), otherwise the rule repeats,
  up to ``sae_max_tokens`` or the passes limit.
* **Learning-rate halving.** After the sweep, when a segment ends with the validation EV
  more than ``plateau`` (relative) below the best so far, the rate is halved (down to
  1/16 of the chosen one; each halving's token count is recorded as ``lr_halvings``).
  Measured at the original scale (786k tokens, d_sae 4,096, layer 15, where a few
  massive-activation tokens carry most of the variance): TopK k = 16 at a constant 0.004
  peaked at 0.919 after 393k tokens and then swung between 0.865 and 0.90.
* **Early stopping.** The checkpoint with the best validation EV is kept (for the
  k-means-initialised TopK that includes its start: the top-1 SAE on the centroids).
* **JumpReLU** (quadratic L0 loss towards a target L0) runs with SAELens's
  ``jumprelu_ste_to_input=True`` (Anthropic's setup: the straight-through gradient of the
  gate reaches the pre-activations, so the L0 loss moves the encoder too) and its
  threshold started where the initial L0 is the target (one value for every latent, from
  the first 4,096 rows' pre-activations; recorded as ``initial_threshold``). Measured in
  the demo (d_sae 512, target 8, 2 passes of 65,536 tokens, layer 3 / 15): SAELens's
  defaults (DeepMind's gradient to the threshold only, threshold 0.01) end at L0 179 / 181
  — Adam moves a threshold by at most ~lr per step, and the encoder outruns it — and at
  the original scale at L0 323; the started threshold alone: L0 111 / 147; the
  straight-through gradient alone: L0 14 / 16 with `fvu_a` 0.781 / 0.045 (layer 15
  collapsed); both: L0 10.5 / 10.7 with 0.868 / 0.570.
* **Dead latents.** TopK, BatchTopK and Matryoshka use SAELens's auxiliary-k loss on the
  latents that did not fire for one pass (``dead_feature_window``).
* **The training step.** TopK (also from the k-means codebook), BatchTopK and Matryoshka
  with k / d_sae ≤ 1/32 (:func:`gathered_step`) run SAELens's trainer on subclasses of
  SAELens's training SAEs whose step decodes by gathers instead of a dense latents ×
  decoder product (``topk_gather.py``: the same loss and gradients, tested against
  SAELens's step); denser ones, ReLU + L1 and JumpReLU run SAELens's step as it is.
* **Precision.** ``sae_precision="auto"`` trains under bfloat16 autocast where a short
  calibration of one training step (forward, backward, Adam) measures it ≥ 1.2× faster than
  float32 on the device, float32 elsewhere (on a CPU without bfloat16 units autocast is
  many times slower).

The activations are scaled by c = √d / mean‖x‖ for training (SAELens's
``expected_average_only_in`` convention, which makes the L1 coefficients meaningful across
layers); c is folded into the saved inference SAE, which therefore takes raw activations.
Explained variance is scale-invariant, so the curve on scaled validation data is the same
number.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import tempfile
from collections.abc import Iterator
from typing import Any

import torch

from ..points import FitInput
from ..registry import Method, register
from .topk_gather import (
    gather_batchtopk_class,
    gather_matryoshka_class,
    gather_topk_class,
    is_gathered,
)

_TRAIN_FIELDS = (
    "seed",
    "sae_batch_tokens",
    "sae_lrs",
    "sae_sweep_tokens",
    "sae_max_passes",
    "sae_max_tokens",
    "sae_eval_every",
    "plateau",
    "continuation",
    "sae_precision",
    "val_tokens",
    "train_tokens",
)
_MIN_AUTOCAST_GAIN = 1.2


def _provider(x: torch.Tensor, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled batches of the training rows (a new permutation per pass)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=g)
        for s in range(0, len(order) - batch + 1, batch):
            yield x[order[s : s + batch]].float()


PLATEAU_POINTS = 5  # the fewest learning-curve points (0 included) the plateau rule judges


def plateaued(curve: list[tuple[int, float]], tol: float) -> bool:
    """Held-out explained variance changed by < ``tol`` (relative) over the last fifth of
    training: |EV(t_end) − EV(t_a)| ≤ tol·|EV(t_end)| with t_a the last curve point at or
    before 0.8·t_end, so the window always spans at least the last fifth (needs ≥ 5
    points). (Before version 2 of the SAE methods t_a was the first point at or after
    0.8·t_end, which at the fifth point of a curve starting at 0 is t_end itself: every
    SAE "plateaued" there, and one whose 50 % continuation then dipped was stopped at
    half a pass.)"""
    if len(curve) < PLATEAU_POINTS:
        return False
    t_end, v_end = curve[-1]
    start = [v for t, v in curve if t <= 0.8 * t_end][-1]
    return abs(v_end - start) <= tol * max(abs(v_end), 1e-12)


def regressed(run: Any, tol: float) -> bool:
    """The last validation EV is more than ``tol`` (relative) below the best so far."""
    assert run.best is not None
    best, last = run.best[0], run.curve[-1][1]
    return best - last > tol * max(abs(best), 1e-12)


def _explained(sae: Any, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(fvu_a explained variance, firing frequency per latent) of ``sae`` on ``x``."""
    from ... import explained_variance

    with torch.no_grad():
        feats = sae.encode(x)
        recon = sae.decode(feats)
    return explained_variance(x, recon, "fvu_a"), (feats != 0).float().mean(0)


_GATHERED_KINDS = ("topk", "topk_kmeans_init", "batchtopk", "matryoshka")
_GATHER_DENSITY = 1 / 32


def gathered_step(kind: str, p: dict[str, Any]) -> bool:
    """Whether an SAE of ``kind`` with parameters ``p`` trains with the gathered step
    (``topk_gather.py``): a TopK-like family with k / d_sae ≤ 1/32, where the gathers beat
    the dense product (measured: 2.8–4.9× SAELens's float32 throughput at d_sae 4,096 and
    k 1–64; at d_sae 512 k 1–8 gain ~20 %, k 64 runs 1.8× slower)."""
    return kind in _GATHERED_KINDS and p["k"] <= _GATHER_DENSITY * p["d_sae"]


def _training_sae(kind: str, p: dict[str, Any], d: int, device: str) -> Any:
    """A fresh SAELens training SAE of ``kind`` (SAELens's own initialisation)."""
    import sae_lens
    from sae_lens.saes.sae import SAEMetadata

    common: dict[str, Any] = dict(
        d_in=d, d_sae=p["d_sae"], dtype="float32", device=device, metadata=SAEMetadata()
    )
    gathered = gathered_step(kind, p)
    if kind in ("topk", "topk_kmeans_init"):
        cls = gather_topk_class() if gathered else sae_lens.TopKTrainingSAE
        return cls(sae_lens.TopKTrainingSAEConfig(k=p["k"], **common))
    if kind == "batchtopk":
        cls = gather_batchtopk_class() if gathered else sae_lens.BatchTopKTrainingSAE
        return cls(sae_lens.BatchTopKTrainingSAEConfig(k=p["k"], **common))
    if kind == "matryoshka":
        n = p["d_sae"]
        widths = sorted({max(1, n // 8), max(1, n // 4), max(1, n // 2), n})
        cls = gather_matryoshka_class() if gathered else sae_lens.MatryoshkaBatchTopKTrainingSAE
        return cls(
            sae_lens.MatryoshkaBatchTopKTrainingSAEConfig(
                k=p["k"], matryoshka_widths=widths, **common
            )
        )
    if kind == "jumprelu":
        return sae_lens.JumpReLUTrainingSAE(
            sae_lens.JumpReLUTrainingSAEConfig(
                jumprelu_sparsity_loss_mode="quadratic",
                target_l0=float(p["l0"]),
                jumprelu_ste_to_input=True,  # (module docstring: JumpReLU)
                **common,
            )
        )
    if kind == "standard":
        return sae_lens.StandardTrainingSAE(
            sae_lens.StandardTrainingSAEConfig(l1_coefficient=p["l1"], **common)
        )
    raise ValueError(f"unknown SAE kind {kind!r}.")


def measure_autocast(device: torch.device | str) -> dict[str, Any]:
    """Seconds of one SAELens TopK training step (d_in 576, d_sae 1,024, batch 1,024:
    forward, backward, Adam) in float32 and under bfloat16 autocast on ``device``."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import SAEMetadata, TrainStepInput

    from ...clustering.precision import time_best

    device = torch.device(device)
    torch.manual_seed(0)
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(d_in=576, d_sae=1024, k=8, device=str(device), metadata=SAEMetadata())
    )
    x = torch.randn(1024, 576, device=device)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    dead = torch.zeros(1024, dtype=torch.bool, device=device)

    def step(enabled: bool) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
            out = sae.training_forward_pass(
                TrainStepInput(
                    sae_in=x,
                    coefficients={},
                    dead_neuron_mask=dead,
                    n_training_steps=0,
                    is_logging_step=False,
                )
            )
        out.loss.backward()
        opt.step()
        opt.zero_grad()

    out: dict[str, Any] = {"float32": time_best(lambda: step(False), device, reps=3)}
    try:
        out["bfloat16"] = time_best(lambda: step(True), device, reps=3)
    except RuntimeError:  # no bfloat16 autocast on this device
        out["bfloat16"] = float("inf")
    out["gain"] = out["float32"] / out["bfloat16"]
    out["choice"] = "bfloat16" if out["gain"] >= _MIN_AUTOCAST_GAIN else "float32"
    return out


def use_autocast(precision: str, device: torch.device | str) -> bool:
    """Whether SAE training runs under bfloat16 autocast: ``precision`` "bfloat16",
    "float32" or "auto" (the cached calibration of :func:`measure_autocast`)."""
    if precision in ("bfloat16", "float32"):
        return precision == "bfloat16"
    if precision != "auto":
        raise ValueError(f"precision must be auto, float32 or bfloat16, got {precision!r}.")
    from ...clustering.precision import cached_calibration

    return bool(cached_calibration("sae-train", device, measure_autocast)["choice"] == "bfloat16")


def training_speedup(precision: str, device: torch.device | str) -> float:
    """How many times faster than float32 SAE training runs under ``precision`` on
    ``device``: the cached calibration's float32 / bfloat16 step-time ratio when training
    runs under bfloat16 autocast, else 1."""
    if not use_autocast(precision, device):
        return 1.0
    from ...clustering.precision import cached_calibration

    return float(cached_calibration("sae-train", device, measure_autocast)["gain"])


class _Run:
    """One SAE under SAELens's trainer, advanced in segments, with its learning curve and
    the state of its best validation point."""

    def __init__(
        self,
        sae: Any,
        xs: torch.Tensor,
        val: torch.Tensor,
        lr: float,
        cfg: Any,
        device: str,
        autocast: bool,
    ) -> None:
        from sae_lens import LoggingConfig, SAETrainer
        from sae_lens.config import SAETrainerConfig

        self.sae, self.val, self.lr = sae, val, lr
        batch = min(cfg.sae_batch_tokens, len(xs))
        self.trainer = SAETrainer(
            SAETrainerConfig(
                total_training_samples=0,
                train_batch_size_samples=batch,
                lr=lr,
                lr_end=lr,
                lr_scheduler_name="constant",
                device=device,
                autocast=autocast,
                dead_feature_window=max(1, len(xs) // batch),
                feature_sampling_window=max(1, len(xs) // batch),
                logger=LoggingConfig(log_to_wandb=False),
            ),
            sae,
            _provider(xs, batch, cfg.seed),
        )
        self.curve: list[tuple[int, float]] = []
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        self._record()

    @property
    def tokens(self) -> int:
        return int(self.trainer.n_training_samples)

    def _record(self) -> None:
        self.sae.eval()
        ev, _ = _explained(self.sae, self.val)
        self.sae.train()
        self.curve.append((self.tokens, ev))
        if math.isfinite(ev) and (self.best is None or ev > self.best[0]):
            self.best = (ev, self.tokens, copy.deepcopy(self.sae.state_dict()))

    def advance(self, to_tokens: int) -> None:
        """Train until ``to_tokens`` tokens were seen (whole batches), then record."""
        if to_tokens <= self.tokens:
            return
        self.trainer.cfg.total_training_samples = to_tokens
        with contextlib.redirect_stderr(io.StringIO()):  # SAELens's own progress bar
            self.trainer.fit()
        self._record()

    def set_lr(self, lr: float) -> None:
        """Train on at ``lr``. SAELens's "constant" schedule is a ``LambdaLR`` (factor 1)
        inside a ``SequentialLR``; each step sets the rate to the LambdaLR's base rate,
        so that base rate is what changes."""
        from torch.optim.lr_scheduler import LambdaLR

        sched = self.trainer.lr_scheduler
        subs = list(getattr(sched, "_schedulers", [sched]))
        if not all(isinstance(sub, LambdaLR) for sub in subs):
            names = ", ".join(type(sub).__name__ for sub in subs)
            raise RuntimeError(f"cannot set the rate of SAELens's schedule ({names})")
        self.lr = lr
        for group in self.trainer.optimizer.param_groups:
            group["lr"] = lr
        for sub in subs:
            sub.base_lrs = [lr for _ in sub.base_lrs]

    def keep_best(self) -> int:
        """Load the best validation checkpoint; returns the tokens it had seen."""
        assert self.best is not None
        self.sae.load_state_dict(self.best[2])
        return self.best[1]


_THRESHOLD_ROWS = 4096


def _threshold_at_target(sae: Any, xs: torch.Tensor, target_l0: float) -> float:
    """Set every JumpReLU threshold (SAELens's ``jumprelu_init_threshold``, one value) to
    the pre-activation value t that makes the SAE's initial L0 the target on the first
    rows: t lies between the m-th and (m + 1)-th largest of the n × d_sae pre-activations
    of n = min(4,096, rows) rows, m = ⌈n·L0⌉, so exactly m of them pass the gate pre > t.
    SAELens's default (0.01) starts at L0 ≈ d_sae / 2, and Adam moves a threshold by at
    most ~lr per step: at the original scale (384 steps of 4,096 tokens, lr 0.004) the
    quadratic loss could not bring L0 below ~320 against a target of 8. Returns t."""
    rows = xs[:_THRESHOLD_ROWS]
    with torch.no_grad():
        _, pre = sae.encode_with_hidden_pre(rows)
        n_top = max(1, min(pre.numel() - 1, math.ceil(len(rows) * target_l0)))
        v = pre.flatten().float().topk(n_top + 1).values  # descending
        t = max(0.0, float(v[n_top - 1] + v[n_top]) / 2)  # the gate is pre > t
        sae.threshold.fill_(t)
    return t


def _kmeans_fit(p: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The k-means fit whose codebook starts ``topk_kmeans_init``: d_sae clusters."""
    return "kmeans", {"n_clusters": p["d_sae"]}


def _kmeans_init(sae: Any, inp: FitInput, scale: float) -> None:
    """Encoder and decoder rows on the unit k-means centroid directions, b_dec on the data
    mean, b_enc 0: the top-1 SAE on the centroids (``kmeans_top1``), exactly."""
    from ...clustering.codebook_saes import codebook_of, unit_directions

    base = inp.point.base
    assert base is not None  # (registered with reuses=)
    km = inp.fitted(base)
    mean, dirs = codebook_of(km)
    u = unit_directions(dirs).float().to(sae.W_dec.device)
    with torch.no_grad():
        sae.W_dec.copy_(u)
        sae.W_enc.copy_(u.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(mean.float().to(u.device) * scale)


def train(kind: str, inp: FitInput) -> Any:
    """Train one SAE of ``kind`` with SAELens's trainer (module docstring); return its
    inference SAE with the training record in ``cfg.metadata``."""
    from sae_lens import SAE as InferenceSAE

    cfg, p = inp.cfg, inp.params
    x = inp.acts
    n, d = x.shape
    with torch.no_grad():
        scale = math.sqrt(d) / float(x.float().norm(dim=1).mean())
    xs = (x.float() * scale).to(inp.device)
    val_raw = inp.val if inp.val is not None else x[-2048:]
    val = val_raw.float().to(inp.device) * scale
    batch = min(cfg.sae_batch_tokens, n)
    # whole batches: the trainer only stops between batches
    budget = max(batch, min(cfg.sae_max_tokens, int(cfg.sae_max_passes * n)) // batch * batch)
    sweep_tokens = max(batch, min(cfg.sae_sweep_tokens, budget) // batch * batch)
    segment = max(batch, (cfg.sae_eval_every // batch) * batch)
    autocast = use_autocast(cfg.sae_precision, inp.device)
    initial_threshold: float | None = None  # (JumpReLU; the same for every rate's start)

    def start(lr: float) -> _Run:
        nonlocal initial_threshold
        torch.manual_seed(cfg.seed)
        sae = _training_sae(kind, p, d, inp.device)
        with torch.no_grad():
            sae.b_dec.copy_(xs.mean(0))
        if kind == "topk_kmeans_init":
            _kmeans_init(sae, inp, scale)
        if kind == "jumprelu":
            initial_threshold = _threshold_at_target(sae, xs, float(p["l0"]))
        return _Run(sae, xs, val, lr, cfg, inp.device, autocast)

    runs = []
    for lr in cfg.sae_lrs:
        run = start(float(lr))
        t = 0
        while t < sweep_tokens:
            t = min(t + segment, sweep_tokens)
            run.advance(t)
        runs.append(run)
    best = max(runs, key=lambda r: r.curve[-1][1] if math.isfinite(r.curve[-1][1]) else -1e9)
    sweep = {
        "lrs": [r.lr for r in runs],
        "ev": [r.curve[-1][1] for r in runs],
        "tokens": [r.tokens for r in runs],
        "chosen": best.lr,
    }
    chosen = best.lr  # (set_lr changes run.lr below)
    run, runs = best, []  # the other rates' SAEs are dropped here (memory)
    continuations: list[dict[str, Any]] = []
    converged = False
    halvings: list[int] = []
    while run.tokens < budget:
        run.advance(min(run.tokens + segment, budget))
        if regressed(run, cfg.plateau) and run.lr > chosen / 16:
            run.set_lr(run.lr / 2)
            halvings.append(run.tokens)
            continue
        if plateaued(run.curve, cfg.plateau):
            t0, v0 = run.curve[-1]
            target = int(1.5 * t0) // batch * batch
            while run.tokens < min(target, budget):
                run.advance(min(run.tokens + segment, target, budget))
            gain = (run.curve[-1][1] - v0) / max(abs(v0), 1e-12)
            continuations.append({"from_tokens": t0, "to_tokens": run.tokens, "gain": gain})
            if run.tokens >= target and gain < cfg.continuation:
                converged = True
                break
    kept_at = run.keep_best()
    sae = run.sae
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        inference = InferenceSAE.load_from_disk(tmp, device="cpu")
    inference.fold_activation_norm_scaling_factor(scale)
    _, freq = _explained(inference, val_raw.float().cpu())
    seen = run.tokens
    meta = inference.cfg.metadata
    for key, value in inp.metadata.items():
        meta[key] = value
    if inp.provenance is not None:
        meta["provenance"] = inp.provenance.to_dict()
    meta["n_tokens"] = n
    meta["tokens_seen"] = seen
    meta["passes"] = seen / n
    meta["learning_curve"] = [[t, v] for t, v in run.curve]
    meta["plateaued"] = plateaued(run.curve, cfg.plateau)
    meta["converged"] = converged
    meta["continuations"] = continuations
    meta["continuation_gain"] = continuations[-1]["gain"] if continuations else None
    meta["kept_checkpoint_tokens"] = kept_at
    meta["lr"] = chosen
    meta["lr_halvings"] = halvings
    meta["lr_final"] = run.lr
    meta["lr_sweep"] = sweep
    meta["precision"] = "bfloat16 autocast" if autocast else "float32"
    # (rows without it were trained by SAELens's own step)
    meta["training_step"] = "gathered" if is_gathered(run.sae) else "SAELens"
    if initial_threshold is not None:
        meta["initial_threshold"] = initial_threshold
    meta["dead_latents"] = int((freq == 0).sum())
    meta["dead_fraction"] = float((freq == 0).float().mean())
    meta["dense_latents"] = int((freq > 0.1).sum())
    meta["training_scale"] = scale
    return inference


def _kind(kind: str) -> Any:
    def fit(inp: Any) -> Any:
        return train(kind, inp)

    return fit


def _sae(
    name: str, l0: Any, label: Any, description: str, version: int = 3, reuses: Any = None
) -> None:
    register(
        Method(
            name,
            "sae",
            _kind(name),
            l0=l0,
            d_sae=lambda p: p["d_sae"],
            label=label,
            description=description,
            config_fields=_TRAIN_FIELDS,
            rows="train",
            # 2: the plateau window fixed; 3: the rate halved when validation regresses;
            # 4 (JumpReLU): the threshold starts where the initial L0 is the target, and the
            # straight-through gradient reaches the encoder
            version=version,
            reuses=reuses,
        )
    )


def _k(p: dict[str, Any]) -> str:
    return f"d{p['d_sae']}-k{p['k']}"


_sae("topk", lambda p: p["k"], _k, "SAELens TopK SAE")
_sae("batchtopk", lambda p: p["k"], _k, "SAELens BatchTopK SAE (JumpReLU at inference)")
_sae(
    "standard",
    lambda p: None,
    lambda p: f"d{p['d_sae']}-l1_{p['l1']:g}",
    "SAELens standard SAE (ReLU + L1)",
)
_sae(
    "jumprelu",
    lambda p: None,
    lambda p: f"d{p['d_sae']}-l0_{p['l0']:g}",
    "SAELens JumpReLU SAE (quadratic L0 loss towards a target L0, threshold started at "
    "it, straight-through gradient to the encoder; L0 measured)",
    version=4,
)
_sae(
    "matryoshka",
    lambda p: p["k"],
    _k,
    "SAELens Matryoshka BatchTopK SAE (nested widths d/8, d/4, d/2, d)",
)
_sae(
    "topk_kmeans_init",
    lambda p: p["k"],
    _k,
    "SAELens TopK SAE started from the k-means codebook (not SAELens's own init)",
    reuses=_kmeans_fit,
)
