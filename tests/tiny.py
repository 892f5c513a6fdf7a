"""Tiny, offline SAEBench / SAELens set-ups: a random-weight HookedTransformer, an
in-memory token dataset, a few SAEs, and an independent way to collect the activations
an eval sees."""

from __future__ import annotations

import torch
from datasets import Dataset
from sae_bench.custom_saes.base_sae import BaseSAE
from sae_bench.custom_saes.identity_sae import IdentitySAE
from sae_bench.sae_bench_utils.general_utils import _standardize_sae_cfg
from sae_lens import ActivationsStore, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer, HookedTransformerConfig

D, V, CTX = 64, 500, 32
HOOK = "blocks.0.hook_resid_post"
SPECIAL = (0, 1)  # token ids the evals ignore (like BOS/PAD)
CPU = torch.device("cpu")


def tiny_model(d: int = D, offset: float = 0.0, seed: int = 0) -> HookedTransformer:
    """Random weights; ``offset`` adds a constant (varying per dim) to every token
    embedding, so the residual stream has a mean, as real models' does."""
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=d,
        n_heads=4,
        d_head=d // 4,
        d_mlp=4 * d,
        d_vocab=V,
        n_ctx=CTX,
        act_fn="gelu",
        tokenizer_name=None,
        device="cpu",
        seed=seed,
    )
    model = HookedTransformer(cfg).eval()
    if offset:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            model.embed.W_E.add_(offset * (1 + torch.rand(d, generator=g)))
    return model


def tiny_dataset(n: int = 48, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, V, (n, CTX), generator=g)
    ids[:, 0] = 1  # a BOS-like token at the start of each row
    ids[torch.rand(n, CTX, generator=g) < 0.05] = 0  # scattered PAD-like tokens
    return Dataset.from_dict({"input_ids": ids.tolist()})


def make_store(model: HookedTransformer, sae, ds: Dataset, batch_prompts: int = 4):
    return ActivationsStore.from_sae(
        model,
        sae,
        dataset=ds,
        context_size=CTX,
        streaming=False,
        store_batch_size_prompts=batch_prompts,
        n_batches_in_buffer=2,
        train_batch_size_tokens=256,
        total_tokens=len(ds) * CTX,
        device="cpu",
    )


def standard_sae(
    d_in: int = D, d_sae: int = 128, hook: str = HOOK, seed: int = 0, head_index: int | None = None
) -> StandardSAE:
    torch.manual_seed(seed)
    sae = StandardSAE(
        StandardSAEConfig(
            d_in=d_in,
            d_sae=d_sae,
            dtype="float32",
            device="cpu",
            metadata=SAEMetadata(
                model_name="tiny-random",
                hook_name=hook,
                prepend_bos=False,
                context_size=CTX,
                hook_head_index=head_index,
            ),
        )
    )
    _standardize_sae_cfg(sae.cfg)
    return sae


def identity_sae(d_in: int = D, hook: str = HOOK) -> IdentitySAE:
    sae = IdentitySAE(d_in, "tiny-random", 0, CPU, torch.float32, hook_name=hook)
    _standardize_sae_cfg(sae.cfg)
    return sae


class ConstantSAE(BaseSAE):
    """Outputs a fixed vector (``b_dec``) whatever the input: one dead latent."""

    def __init__(self, value: torch.Tensor, hook: str = HOOK):
        super().__init__(value.numel(), 1, "tiny-random", 0, CPU, torch.float32, hook_name=hook)
        with torch.no_grad():
            self.b_dec.copy_(value)
            self.W_dec.fill_(1.0 / value.numel() ** 0.5)

    def encode(self, x):
        return torch.relu(x @ self.W_enc + self.b_enc)

    def decode(self, f):
        return f @ self.W_dec + self.b_dec

    def forward(self, x):
        return self.decode(self.encode(x))


def collect(
    model, sae, ds, n_batches: int, batch_prompts: int = 4, ignore_tokens=SPECIAL, skip: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The activations an eval of ``n_batches`` sees, drawn from a fresh store:
    x (B, ctx, d), keep-mask (B, ctx), batch id (B, ctx). ``skip``: batches drawn before
    (SAEBench's KL/CE batches: ``reset_input_dataset`` does not rewind the store's token
    stream, so the variance batches follow them)."""
    store = make_store(model, sae, ds, batch_prompts)
    for _ in range(skip):
        store.get_batch_tokens(batch_prompts)
    hook, head = sae.cfg.hook_name, getattr(sae.cfg, "hook_head_index", None)
    xs, masks, ids = [], [], []
    for b in range(n_batches):
        tokens = store.get_batch_tokens(batch_prompts)
        _, cache = model.run_with_cache(tokens, prepend_bos=False, names_filter=[hook])
        act = cache[hook]
        if head is not None:
            act = act[:, :, head]
        elif act.ndim == 4:
            act = act.flatten(-2, -1)
        keep = torch.ones_like(tokens, dtype=torch.bool)
        for t in ignore_tokens:
            keep &= tokens != t
        xs.append(act)
        masks.append(keep)
        ids.append(torch.full_like(tokens, b))
    return torch.cat(xs), torch.cat(masks), torch.cat(ids)
