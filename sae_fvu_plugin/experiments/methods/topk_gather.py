"""SAELens's TopK, BatchTopK and Matryoshka BatchTopK training SAEs with a training step
that never materialises the dense latents: the same function, its gradients and its
trainer, in fewer passes over memory (used where k / d_sae ≤ 1/32:
:func:`.saes.gathered_step`).

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
over H stay dense (the selection needs every score). BatchTopK (SAELens's
``BatchTopKTrainingSAE``) selects the top k·B of relu(H) over the whole batch instead of
k per row (from a pool of candidates: :func:`_select_batch_topk`), and updates its
threshold θ ← (1 − η)θ + η·min(selected positive values) from the same values; Matryoshka
adds one masked gather per inner width for its nested losses. The trainer's firing
statistics get the latents as a sparse (COO) tensor, which ``SAETrainer`` accepts. The
loss and every gradient equal SAELens's up to the order of floating-point sums (tests:
float32, with and without dead latents); under bfloat16 autocast the gathered decode runs
in float32 where SAELens's GEMM runs in bfloat16, so this path is the more exact of the
two.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F


def _sparse_latents(
    rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, batch: int, d_sae: int
) -> torch.Tensor:
    """The batch × d_sae latents as a COO tensor (for the trainer's firing statistics)."""
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), vals.detach(), (batch, d_sae), check_invariants=False
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


def _select_topk(hidden_pre: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """Per row, the k largest pre-activations, relu'd: (rows, cols, values)."""
    top = hidden_pre.topk(k, dim=-1, sorted=False)
    rows = torch.arange(len(hidden_pre), device=hidden_pre.device).repeat_interleave(k)
    return rows, top.indices.reshape(-1), top.values.relu().reshape(-1)


def _select_batch_topk(hidden_pre: torch.Tensor, k: float) -> tuple[torch.Tensor, ...]:
    """The ⌊k·B⌋ largest of relu(pre-activations) over the whole batch, grouped by row.

    Taken from a pool instead of all B × d_sae values: each row's c = 4⌈k⌉ largest, and
    the whole row for the rows whose c candidates were all among the pool's top (only
    they can hold more of the batch's largest: a row whose c-th largest is below the
    candidates' ⌊k·B⌋-th largest, itself at most the batch's, has all of its selected
    values among its candidates). Exact; the few large-norm rows of real activations that
    hold hundreds of the batch's largest values are the whole rows."""
    n, d_sae = hidden_pre.shape
    total = int(k * n)
    per_row = 4 * math.ceil(k)
    if per_row >= d_sae // 4:
        top = hidden_pre.relu().flatten().topk(total, sorted=False)
        rows, cols, vals = top.indices // d_sae, top.indices % d_sae, top.values
    else:
        cand = hidden_pre.topk(per_row, dim=-1, sorted=False)
        top = cand.values.relu().flatten().topk(total, sorted=False)
        full = torch.bincount(top.indices // per_row, minlength=n) >= per_row
        if bool(full.any()):
            keep = ~full
            whole = full.nonzero().squeeze(1)
            cand_rows = torch.arange(n, device=hidden_pre.device)[keep]
            pool = torch.cat(
                [cand.values[keep].relu().flatten(), hidden_pre[whole].relu().flatten()]
            )
            pool_rows = torch.cat(
                [cand_rows.repeat_interleave(per_row), whole.repeat_interleave(d_sae)]
            )
            cols_all = torch.arange(d_sae, device=hidden_pre.device).repeat(len(whole))
            pool_cols = torch.cat([cand.indices[keep].flatten(), cols_all])
            top = pool.topk(total, sorted=False)
            rows, cols = pool_rows[top.indices], pool_cols[top.indices]
        else:
            rows = top.indices // per_row
            cols = cand.indices.flatten()[top.indices]
        vals = top.values
    flat, order = (rows * d_sae + cols).sort()
    return flat // d_sae, flat % d_sae, vals[order]


def _decode(
    rows: torch.Tensor, cols: torch.Tensor, coef: torch.Tensor, w_dec: torch.Tensor, n: int
) -> torch.Tensor:
    """x̂_b = Σ_{(b, j) selected} coef·W_dec[j] for every row b (no bias); ``rows`` sorted."""
    offsets = torch.zeros(n, dtype=torch.long, device=rows.device)
    offsets[1:] = torch.bincount(rows, minlength=n)[:-1].cumsum(0)
    return F.embedding_bag(
        cols, w_dec, offsets, per_sample_weights=coef.to(w_dec.dtype), mode="sum"
    )


class _Selected(NamedTuple):
    """The selected latents of a batch: row, latent, value, value ⊘ decoder norm."""

    rows: torch.Tensor
    cols: torch.Tensor
    vals: torch.Tensor
    coef: torch.Tensor


def _gathered_step(sae: Any, step_input: Any, select: Any, output: type) -> tuple[Any, _Selected]:
    """SAELens's TopK training step (module docstring) with gathered decodes; ``select``
    maps the pre-activations to the selected (rows, cols, values)."""
    cfg = sae.cfg
    x = step_input.sae_in
    sae_in = sae.process_sae_in(x)
    w_enc, b_enc = sae.W_enc, sae.b_enc
    norms = sae.W_dec.norm(dim=-1) if cfg.rescale_acts_by_decoder_norm else None
    if norms is not None:  # (x W + b) ⊙ n = x (W ⊙ n) + b ⊙ n: a d × d_sae scale
        w_enc, b_enc = w_enc * norms, b_enc * norms
    hidden_pre = torch.addmm(b_enc, sae_in, w_enc)
    rows, cols, vals = select(hidden_pre)
    coef = vals / norms[cols] if norms is not None else vals
    sae_out = _decode(rows, cols, coef, sae.W_dec, len(x)) + sae.b_dec
    sae_out = sae.run_time_activation_norm_fn_out(sae_out)
    mse = sae.mse_loss_fn(sae_out, x).sum(dim=-1).mean()
    aux = _aux(sae, step_input, sae_out, hidden_pre, norms)
    return output(
        sae_in=x,
        sae_out=sae_out,
        feature_acts=_sparse_latents(rows, cols, vals, len(x), cfg.d_sae),
        hidden_pre=hidden_pre,
        loss=mse + aux,
        losses={"mse_loss": mse, "auxiliary_reconstruction_loss": aux},
    ), _Selected(rows, cols, vals, coef)


def _aux(
    sae: Any,
    step_input: Any,
    sae_out: torch.Tensor,
    hidden_pre: torch.Tensor,
    norms: torch.Tensor | None,
) -> torch.Tensor:
    """SAELens's auxiliary-k loss (``calculate_topk_aux_loss``) on the dead latents'
    columns only: the top-k_aux of the dead latents' pre-activations decoded by their
    decoder rows (SAELens masks the live ones to −∞ over all d_sae columns and decodes by
    the whole decoder; the selection and the sum are the same)."""
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
    w_dec = sae.W_dec[cols]
    if norms is not None:
        w_dec = w_dec / norms[cols, None]
    loss = (acts @ w_dec - residual).pow(2).sum(dim=-1).mean()
    return sae.cfg.aux_loss_coefficient * scale * loss


@torch.no_grad()
def _update_threshold(sae: Any, out: Any, vals: torch.Tensor) -> None:
    """SAELens's BatchTopK ``update_topk_threshold`` on the selected values:
    θ ← (1 − η)θ + η·min(positive values), in float64 (and θ in the step's metrics)."""
    positive = vals[vals > 0]
    if len(positive):
        lr = sae.cfg.topk_threshold_lr
        now = sae.topk_threshold
        sae.topk_threshold = (1 - lr) * now + lr * positive.min().to(now.dtype)
    out.metrics["topk_threshold"] = sae.topk_threshold


def gather_topk_class() -> type:
    """The subclass of SAELens's ``TopKTrainingSAE`` (built on first use: SAELens is
    imported lazily by the package)."""
    if "topk" not in _CLASSES:
        from sae_lens import TopKTrainingSAE
        from sae_lens.saes.sae import TrainStepOutput

        class GatherTopKTrainingSAE(TopKTrainingSAE):  # type: ignore[misc]
            """``TopKTrainingSAE`` whose training step decodes by gathers."""

            def training_forward_pass(self, step_input: Any) -> Any:
                if not _plain(self):
                    return super().training_forward_pass(step_input)
                k = self.cfg.k
                out, _ = _gathered_step(
                    self, step_input, lambda h: _select_topk(h, k), TrainStepOutput
                )
                return out

        _CLASSES["topk"] = GatherTopKTrainingSAE
    return _CLASSES["topk"]


def gather_batchtopk_class() -> type:
    """The subclass of SAELens's ``BatchTopKTrainingSAE`` (built on first use)."""
    if "batchtopk" not in _CLASSES:
        from sae_lens import BatchTopKTrainingSAE
        from sae_lens.saes.sae import TrainStepOutput

        class GatherBatchTopKTrainingSAE(BatchTopKTrainingSAE):  # type: ignore[misc]
            """``BatchTopKTrainingSAE`` whose training step decodes by gathers."""

            def training_forward_pass(self, step_input: Any) -> Any:
                if not _plain(self):
                    return super().training_forward_pass(step_input)
                k = self.cfg.k
                out, sel = _gathered_step(
                    self, step_input, lambda h: _select_batch_topk(h, k), TrainStepOutput
                )
                _update_threshold(self, out, sel.vals)
                return out

        _CLASSES["batchtopk"] = GatherBatchTopKTrainingSAE
    return _CLASSES["batchtopk"]


def gather_matryoshka_class() -> type:
    """The subclass of SAELens's ``MatryoshkaBatchTopKTrainingSAE`` (built on first use):
    BatchTopK's gathered step plus, per inner width w, the loss ‖b_dec + Σ_{j < w}
    (selected) (v_j / n_j)·W_dec[j] − x‖² (SAELens's nested losses; with
    ``use_matryoshka_aux_loss`` SAELens's own step runs)."""
    if "matryoshka" not in _CLASSES:
        from sae_lens import MatryoshkaBatchTopKTrainingSAE
        from sae_lens.saes.sae import TrainStepOutput

        class GatherMatryoshkaTrainingSAE(MatryoshkaBatchTopKTrainingSAE):  # type: ignore[misc]
            """``MatryoshkaBatchTopKTrainingSAE`` whose training step decodes by gathers."""

            def training_forward_pass(self, step_input: Any) -> Any:
                if not _plain(self) or self.cfg.use_matryoshka_aux_loss:
                    return super().training_forward_pass(step_input)
                k, x = self.cfg.k, step_input.sae_in
                out, sel = _gathered_step(
                    self, step_input, lambda h: _select_batch_topk(h, k), TrainStepOutput
                )
                _update_threshold(self, out, sel.vals)
                for width in self.cfg.matryoshka_widths[:-1]:  # (the outer one is the SAE)
                    coef = sel.coef * (sel.cols < width)
                    inner = _decode(sel.rows, sel.cols, coef, self.W_dec, len(x)) + self.b_dec
                    inner = self.run_time_activation_norm_fn_out(inner)
                    loss = self.mse_loss_fn(inner, x).sum(dim=-1).mean()
                    out.losses[f"inner_mse_loss_{width}"] = loss
                    out.loss = out.loss + loss
                return out

        _CLASSES["matryoshka"] = GatherMatryoshkaTrainingSAE
    return _CLASSES["matryoshka"]


_CLASSES: dict[str, type] = {}


def is_gathered(sae: Any) -> bool:
    """Whether ``sae`` trains with one of this module's gathered steps."""
    return any(isinstance(sae, cls) for cls in _CLASSES.values())
