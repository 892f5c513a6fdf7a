"""SAE training throughput side by side in one run: the same SAE (same initialisation,
same token order, same learning rate) trained by SAELens's ``SAETrainer`` on the same
real SmolLM2 activations with SAELens's own training step and with the plugin's gathered
step (``experiments/methods/topk_gather.py``: the same loss and gradients without the
dense latents), each in float32 and under bfloat16 autocast, then scored on held-out
tokens.

Printed per run: tokens per second (whole ``SAETrainer.fit``, data included), the ratio to
SAELens's step in float32, and the held-out explained variance (fvu_a) with its 95 %
bootstrap interval (Poisson weights per token), plus the calibration's choice for
``sae_precision="auto"`` on this machine (``methods/saes.py``: one training step timed
each way).

    python benchmarks/sae_training.py [--family topk|batchtopk|matryoshka] [--tokens 65536]
        [--layer 3] [--d-sae 4096] [--k 16] [--batch 4096]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import time
from typing import Any

import torch


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=65_536, help="training tokens (one pass)")
    p.add_argument("--held-out", type=int, default=8192)
    p.add_argument("--layer", type=int, default=3)
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    p.add_argument("--family", default="topk", choices=["topk", "batchtopk", "matryoshka"])
    a = p.parse_args()
    import sae_lens
    from kmeans import real_activations
    from sae_lens import LoggingConfig, SAETrainer
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata

    from sae_fvu_plugin import explained_variance
    from sae_fvu_plugin.bootstrap import percentile_interval, poisson_weights
    from sae_fvu_plugin.clustering.precision import cached_calibration
    from sae_fvu_plugin.experiments.methods import topk_gather
    from sae_fvu_plugin.experiments.methods.saes import measure_autocast

    dev = torch.device(a.device)
    print(
        f"calibration (sae_precision='auto'): {cached_calibration('sae-train', dev, measure_autocast)}"
    )
    x = real_activations(a.tokens + a.held_out, layer=a.layer).float()
    scale = math.sqrt(x.shape[1]) / float(x.norm(dim=1).mean())
    fit, test = (x[: a.tokens] * scale).to(dev), (x[a.tokens :] * scale).to(dev)
    w = poisson_weights(0, torch.arange(len(test)), 200).T.to(dev)  # (replicates, tokens)
    print(
        f"{a.family} k={a.k}, d_sae {a.d_sae}, SmolLM2 layer {a.layer}: {a.tokens:,} training tokens "
        f"(one pass, batch {a.batch}, lr {a.lr:g}), {len(test):,} held-out tokens, "
        f"{torch.get_num_threads()} threads"
    )
    saelens_cls, gathered_cls, config = {
        "topk": ("TopKTrainingSAE", topk_gather.gather_topk_class, "TopKTrainingSAEConfig"),
        "batchtopk": (
            "BatchTopKTrainingSAE",
            topk_gather.gather_batchtopk_class,
            "BatchTopKTrainingSAEConfig",
        ),
        "matryoshka": (
            "MatryoshkaBatchTopKTrainingSAE",
            topk_gather.gather_matryoshka_class,
            "MatryoshkaBatchTopKTrainingSAEConfig",
        ),
    }[a.family]
    extra = {}
    if a.family == "matryoshka":
        extra["matryoshka_widths"] = [a.d_sae // 8, a.d_sae // 4, a.d_sae // 2, a.d_sae]
    print(f"{'step, precision':<32}{'tokens/s':>10}{'ratio':>8}   held-out EV (fvu_a) [95 %]")
    base = None
    runs = [
        (f"{step}, {precision}", cls, precision != "float32")
        for step, cls in (
            ("SAELens", getattr(sae_lens, saelens_cls)),
            ("gathered", gathered_cls()),
        )
        for precision in ("float32", "bfloat16 autocast")
    ]

    def train(cls: type, autocast: bool, tokens: int) -> tuple[Any, float]:
        """The SAE after SAELens's trainer saw ``tokens`` rows, and its tokens/s."""
        torch.manual_seed(0)
        sae = cls(
            getattr(sae_lens, config)(
                d_in=x.shape[1],
                d_sae=a.d_sae,
                k=a.k,
                device=str(dev),
                metadata=SAEMetadata(),
                **extra,
            )
        )
        with torch.no_grad():
            sae.b_dec.copy_(fit.mean(0))

        def batches() -> object:
            g = torch.Generator().manual_seed(0)
            order = torch.randperm(len(fit), generator=g)
            for s in range(0, len(order) - a.batch + 1, a.batch):
                yield fit[order[s : s + a.batch]]

        trainer = SAETrainer(
            SAETrainerConfig(
                total_training_samples=tokens // a.batch * a.batch,
                train_batch_size_samples=a.batch,
                lr=a.lr,
                lr_end=a.lr,
                device=str(dev),
                autocast=autocast,
                logger=LoggingConfig(log_to_wandb=False),
            ),
            sae,
            batches(),
        )
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            trainer.fit()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return sae, trainer.n_training_samples / (time.perf_counter() - t)

    for _, cls, autocast in runs:  # warm-up: first calls of each kernel, untimed
        train(cls, autocast, 2 * a.batch)
    for name, cls, autocast in runs:
        sae, rate = train(cls, autocast, len(fit))
        base = base or rate
        sae.eval()
        with torch.no_grad():
            recon = sae.decode(sae.encode(test))
            err = (test - recon).double().square().sum(1)
        ev = explained_variance(test, recon, "fvu_a")
        # the replicate's fvu_a: Σ w·err / Σ w·‖x − x̄_w‖² (weighted mean per replicate)
        wd = w.double()
        mean_w = (wd @ test.double()) / wd.sum(1, keepdim=True)
        tot = wd @ test.double().square().sum(1) - wd.sum(1) * mean_w.square().sum(1)
        reps = 1 - (wd @ err) / tot
        lo, hi = percentile_interval(reps, 0.95)
        print(f"{name:<32}{rate:>10,.0f}{rate / base:>7.2f}×   {ev:.4f} [{lo:.4f}, {hi:.4f}]")


if __name__ == "__main__":
    main()
