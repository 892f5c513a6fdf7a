"""The gathered TopK and BatchTopK training steps (``experiments/methods/topk_gather.py``) computes
SAELens's own ``TopKTrainingSAE`` / ``BatchTopKTrainingSAE`` step: the same loss, the same
gradients, the same firing statistics (and BatchTopK threshold) under SAELens's
``SAETrainer``; anything it does not cover runs SAELens's step."""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import pytest
import torch
from sae_lens import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    LoggingConfig,
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
    SAETrainer,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import SAEMetadata, TrainStepInput

from sae_fvu_plugin.experiments.methods.topk_gather import (
    gather_batchtopk_class,
    gather_matryoshka_class,
    gather_topk_class,
)

D, D_SAE, K, B = 32, 128, 4, 256


KINDS = {
    "topk": (TopKTrainingSAE, gather_topk_class, TopKTrainingSAEConfig),
    "batchtopk": (BatchTopKTrainingSAE, gather_batchtopk_class, BatchTopKTrainingSAEConfig),
    "matryoshka": (
        MatryoshkaBatchTopKTrainingSAE,
        gather_matryoshka_class,
        MatryoshkaBatchTopKTrainingSAEConfig,
    ),
}


def _make(kind: str, gathered: bool, **cfg: object) -> torch.nn.Module:
    ref, ours, config = KINDS[kind]
    cls = ours() if gathered else ref
    if kind == "matryoshka":
        cfg = {"matryoshka_widths": [16, 48, D_SAE], **cfg}
    torch.manual_seed(0)
    return cls(config(d_in=D, d_sae=D_SAE, k=K, metadata=SAEMetadata(), **cfg))


def _pair(kind: str = "topk", **cfg: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    made = [_make(kind, False, **cfg), _make(kind, True, **cfg)]
    with torch.no_grad():  # an encoder and a bias that differ from the decoder's transpose
        for sae in made:
            torch.manual_seed(1)
            sae.W_enc.add_(0.3 * torch.randn_like(sae.W_enc))
            sae.b_enc.copy_(0.1 * torch.randn(D_SAE))
            sae.b_dec.copy_(torch.randn(D))
            sae.W_dec.mul_(torch.rand(D_SAE, 1) + 0.5)  # decoder norms ≠ 1
    return made[0], made[1]


def _step(sae: torch.nn.Module, x: torch.Tensor, dead: torch.Tensor | None) -> object:
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
    return out


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("n_dead", [0, 3, 60, D_SAE])
@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("b_dec_in", [True, False])
def test_loss_and_gradients_equal_saelens(
    kind: str, n_dead: int, rescale: bool, b_dec_in: bool
) -> None:
    ref, ours = _pair(kind, rescale_acts_by_decoder_norm=rescale, apply_b_dec_to_input=b_dec_in)
    torch.manual_seed(2)
    x = torch.randn(B, D) * 3 + 5  # an offset, as residual streams have
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[torch.randperm(D_SAE)[:n_dead]] = True
    a, b = _step(ref, x, dead), _step(ours, x, dead)
    assert sorted(b.losses) == sorted(a.losses)  # (Matryoshka: one loss per inner width)
    for name in a.losses:
        torch.testing.assert_close(b.losses[name], a.losses[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)
    if n_dead:  # (the auxiliary loss ran)
        assert float(a.losses["auxiliary_reconstruction_loss"].detach()) > 0
    torch.testing.assert_close(b.sae_out, a.sae_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.feature_acts.to_dense(), a.feature_acts, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(ref.named_parameters(), ours.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        scale = float(p.grad.abs().max())
        assert scale > 0, name
        assert float((p.grad - q.grad).abs().max()) <= 1e-5 * scale, name
    if kind != "topk":  # the threshold moved, and by the same amount
        assert float(ours.topk_threshold) > 0
        torch.testing.assert_close(ours.topk_threshold, ref.topk_threshold)


def _trained(kind: str, gathered: bool, x: torch.Tensor, steps: int) -> tuple[Any, SAETrainer]:
    sae = _make(kind, gathered)

    def batches() -> object:
        while True:
            for s in range(0, len(x), 64):
                yield x[s : s + 64]

    trainer = SAETrainer(
        SAETrainerConfig(
            total_training_samples=64 * steps,
            train_batch_size_samples=64,
            lr=1e-3,
            lr_end=1e-3,
            lr_scheduler_name="constant",
            device="cpu",
            autocast=False,
            dead_feature_window=2,
            feature_sampling_window=2,
            logger=LoggingConfig(log_to_wandb=False),
        ),
        sae,
        batches(),
    )
    with contextlib.redirect_stderr(io.StringIO()):
        trainer.fit()
    return sae, trainer


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_saelens_trainer_statistics_and_weights_match(kind: str) -> None:
    """Under ``SAETrainer`` (dead-latent window, auxiliary loss, Adam, clipping) the two
    steps train the same SAE: firing counts equal, weights equal to float rounding."""
    torch.manual_seed(3)
    x = torch.randn(512, D) * 2 + 1
    ref, tr_ref = _trained(kind, False, x, 12)
    ours, tr_ours = _trained(kind, True, x, 12)
    assert bool(tr_ref.dead_neurons.any())  # the auxiliary loss was exercised
    torch.testing.assert_close(tr_ours.act_freq_scores, tr_ref.act_freq_scores)
    torch.testing.assert_close(
        tr_ours.n_forward_passes_since_fired, tr_ref.n_forward_passes_since_fired
    )
    for (name, p), q in zip(ref.named_parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)
    if kind != "topk":
        torch.testing.assert_close(ours.topk_threshold, ref.topk_threshold)


def test_hooked_sae_runs_saelens_step() -> None:
    """A hook on a hook point sees what SAELens's own step gives it (the gathered step
    would skip the dense latents the hook expects)."""
    _, ours = _pair()
    seen: list[tuple[int, ...]] = []

    def hook(t: torch.Tensor, hook: object) -> torch.Tensor:
        seen.append(tuple(t.shape))
        return t

    ours.hook_sae_acts_post.add_hook(hook)
    out = _step(ours, torch.randn(B, D), None)
    assert seen == [(B, D_SAE)]
    assert not out.feature_acts.is_sparse


@pytest.mark.parametrize("k", [2.5, 10.0])  # a pool of candidates / all values (4⌈k⌉ ≥ d_sae/4)
@pytest.mark.parametrize("dominant_row", [False, True])
def test_batch_topk_selection_is_the_whole_batch_top(dominant_row: bool, k: float) -> None:
    """BatchTopK's selection through each row's candidates equals the top ⌊k·B⌋ of the
    whole batch, also when one row holds more of them than its candidates (the fallback)."""
    from sae_fvu_plugin.experiments.methods.topk_gather import _select_batch_topk

    torch.manual_seed(4)
    h = torch.randn(B, D_SAE)
    if dominant_row:
        h[7] += 100.0  # row 7 holds far more than 4⌈k⌉ of the batch's largest values
    rows, cols, vals = _select_batch_topk(h, k)
    flat = h.relu().flatten()
    want = flat.topk(int(k * B)).indices.sort().values
    got = rows * D_SAE + cols
    assert torch.equal(got, want)
    assert torch.equal(vals, flat[got])
    assert bool((rows[1:] >= rows[:-1]).all())  # grouped by row (the decode's bags)
    if dominant_row:  # row 7 holds more than its 4⌈k⌉ candidates: its whole row was pooled
        assert int((rows == 7).sum()) > 4 * math.ceil(k)
