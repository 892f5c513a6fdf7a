"""SAELens's TopK training SAE with a training step that never materialises the dense
latents: the same function, its gradients and its trainer, in fewer passes over memory.

SAELens's ``TopKTrainingSAE.training_forward_pass`` (6.54) computes, for a batch X (B × d)
with d_sae latents, k active:

* pre-activations H = ((X − b_dec·a) W_enc + b_enc) ⊙ n, n_j = ‖W_dec[j]‖ (the
  ``rescale_acts_by_decoder_norm`` default; a = ``apply_b_dec_to_input``);
* the TopK latents F = scatter(top-k(H), relu'd) — a dense B × d_sae tensor;
* the reconstruction X̂ = (F ⊘ n) W_dec + b_dec — a dense B × d_sae × d GEMM, though only k
  of every row's d_sae entries are non-zero;
* the loss L = mean_b ‖X̂_b − X_b‖² + c·s·mean_b ‖A_b W_dec' − (X_b − X̂_b)‖², the auxiliary-k
  term over the dead latents' top-k_aux pre-activations A (k_aux = d/2, s = min(dead /
  k_aux, 1)), another dense B × d_sae scatter and GEMM.

Here the decodes are gathers: X̂_b = b_dec + Σ_{j ∈ top-k(H_b)} (relu(H_bj) / n_j)·W_dec[j]
(``embedding_bag`` with per-sample weights, B·k·d multiply-adds instead of B·d_sae·d), and
the auxiliary decode the same over the k_aux dead latents. The encoder GEMM and the top-k
over H stay dense (the selection needs every score); the trainer's firing statistics get
the latents as a sparse (COO) tensor, which ``SAETrainer`` accepts. The loss and every
gradient equal SAELens's up to the order of floating-point sums (tests: float32, with and
without dead latents); under bfloat16 autocast the gathered decode runs in float32 where
SAELens's GEMM runs in bfloat16, so this path is the more exact of the two.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _decode(idx: torch.Tensor, coef: torch.Tensor, w_dec: torch.Tensor) -> torch.Tensor:
    """Σ_j coef[b, j]·W_dec[idx[b, j]] for every row b (no bias)."""
    return F.embedding_bag(idx, w_dec, per_sample_weights=coef.to(w_dec.dtype), mode="sum")


def _sparse_latents(idx: torch.Tensor, vals: torch.Tensor, d_sae: int) -> torch.Tensor:
    """The B × d_sae latents as a COO tensor (for the trainer's firing statistics)."""
    b, k = idx.shape
    rows = torch.arange(b, device=idx.device).repeat_interleave(k)
    return torch.sparse_coo_tensor(
        torch.stack([rows, idx.reshape(-1)]),
        vals.detach().reshape(-1),
        (b, d_sae),
        check_invariants=False,
    )


def _plain(sae: Any) -> bool:
    """No hooks on the SAE's hook points, no reshaping or per-batch normalisation: the
    cases the gathered step computes (anything else runs SAELens's own step)."""
    cfg = sae.cfg
    if cfg.reshape_activations != "none" or cfg.normalize_activations in (
        "constant_norm_rescale",
        "layer_norm",
    ):
        return False
    return not any(hp._forward_hooks or hp._backward_hooks for hp in sae.hook_dict.values())


def gather_topk_class() -> type:
    """The subclass of SAELens's ``TopKTrainingSAE`` (built on first use: SAELens is
    imported lazily by the package)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from sae_lens import TopKTrainingSAE
    from sae_lens.saes.sae import TrainStepOutput

    class GatherTopKTrainingSAE(TopKTrainingSAE):  # type: ignore[misc]
        """``TopKTrainingSAE`` whose training step decodes by gathers (module docstring)."""

        def training_forward_pass(self, step_input: Any) -> Any:
            cfg = self.cfg
            if not _plain(self):
                return super().training_forward_pass(step_input)
            sae_in = self.process_sae_in(step_input.sae_in)
            w_enc, b_enc = self.W_enc, self.b_enc
            norms = self.W_dec.norm(dim=-1) if cfg.rescale_acts_by_decoder_norm else None
            if norms is not None:  # (x W + b) ⊙ n = x (W ⊙ n) + b ⊙ n: a d × d_sae scale
                w_enc, b_enc = w_enc * norms, b_enc * norms
            hidden_pre = torch.addmm(b_enc, sae_in, w_enc)
            top = hidden_pre.topk(cfg.k, dim=-1, sorted=False)
            vals = top.values.relu()
            coef = vals / norms[top.indices] if norms is not None else vals
            sae_out = _decode(top.indices, coef, self.W_dec) + self.b_dec
            sae_out = self.run_time_activation_norm_fn_out(sae_out)
            mse = self.mse_loss_fn(sae_out, step_input.sae_in).sum(dim=-1).mean()
            aux = self._aux(step_input, sae_out, hidden_pre, norms)
            return TrainStepOutput(
                sae_in=step_input.sae_in,
                sae_out=sae_out,
                feature_acts=_sparse_latents(top.indices, vals, cfg.d_sae),
                hidden_pre=hidden_pre,
                loss=mse + aux,
                losses={"mse_loss": mse, "auxiliary_reconstruction_loss": aux},
            )

        def _aux(
            self,
            step_input: Any,
            sae_out: torch.Tensor,
            hidden_pre: torch.Tensor,
            norms: torch.Tensor | None,
        ) -> torch.Tensor:
            """SAELens's auxiliary-k loss (``calculate_topk_aux_loss``) on the dead
            latents' columns only: the top-k_aux of the dead latents' pre-activations
            decoded by their decoder rows (SAELens masks the live ones to −∞ over all
            d_sae columns and decodes by the whole decoder; the selection and the sum
            are the same)."""
            dead = step_input.dead_neuron_mask
            if dead is None or (n_dead := int(dead.sum())) == 0:
                return sae_out.new_tensor(0.0)
            sae_in = step_input.sae_in
            residual = (sae_in - sae_out).detach()
            k_aux = sae_in.shape[-1] // 2
            scale = min(n_dead / k_aux, 1.0)
            k_aux = min(k_aux, n_dead)
            cols = dead.nonzero().squeeze(1)
            sub = hidden_pre.index_select(1, cols)
            top = sub.topk(k_aux, sorted=False)
            acts = torch.zeros_like(sub).scatter(1, top.indices, top.values)
            w_dec = self.W_dec[cols]
            if norms is not None:
                w_dec = w_dec / norms[cols, None]
            loss = (acts @ w_dec - residual).pow(2).sum(dim=-1).mean()
            return self.cfg.aux_loss_coefficient * scale * loss

    _CLASS = GatherTopKTrainingSAE
    return _CLASS


_CLASS: type | None = None
