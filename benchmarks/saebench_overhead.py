"""Stock SAEBench run_evals vs plugin-enabled run_evals, same model, SAE and tokens.

Model d_model 512 (random weights, hook blocks.1.hook_resid_post), SAELens StandardSAE
d_sae 4096, batches of 16 × 128 tokens, variance + sparsity + L2 metrics. Runs alternate
in pairs, the order flipping every pair, and the median of the per-pair ratios is printed.
Configurations: the default report (``fvu_a``) and ``["all"]``, each without bootstrap
intervals (B = 0) and with the default B = 100. Targets: ≤ 1.03 on CPU, ≤ 1.01 on GPU
without intervals; ≤ 1.05 on CPU with B = 100 (else intervals would be off by default).

    python benchmarks/saebench_overhead.py [--reps 7] [--batches 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from sae_bench.evals.core import main as core  # noqa: E402
from sae_bench.sae_bench_utils.general_utils import _standardize_sae_cfg  # noqa: E402
from sae_lens import ActivationsStore, StandardSAE, StandardSAEConfig  # noqa: E402
from sae_lens.saes.sae import SAEMetadata  # noqa: E402
from transformer_lens import HookedTransformer, HookedTransformerConfig  # noqa: E402

from sae_fvu_plugin import saebench as fsb  # noqa: E402

D, D_SAE, CTX, BATCH, VOCAB = 512, 4096, 128, 16, 2000
HOOK = "blocks.1.hook_resid_post"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.manual_seed(0)
    model = HookedTransformer(
        HookedTransformerConfig(
            n_layers=2,
            d_model=D,
            n_heads=8,
            d_head=64,
            d_mlp=4 * D,
            d_vocab=VOCAB,
            n_ctx=CTX,
            act_fn="gelu",
            tokenizer_name=None,
            device=args.device,
            seed=0,
        )
    ).eval()
    sae = StandardSAE(
        StandardSAEConfig(
            d_in=D,
            d_sae=D_SAE,
            dtype="float32",
            device=args.device,
            metadata=SAEMetadata(
                model_name="bench", hook_name=HOOK, prepend_bos=False, context_size=CTX
            ),
        )
    )
    _standardize_sae_cfg(sae.cfg)
    n_rows = BATCH * args.batches
    ds = Dataset.from_dict({"input_ids": torch.randint(0, VOCAB, (n_rows, CTX)).tolist()})

    def once(config) -> float:
        store = ActivationsStore.from_sae(
            model,
            sae,
            dataset=ds,
            context_size=CTX,
            streaming=False,
            store_batch_size_prompts=BATCH,
            n_batches_in_buffer=2,
            train_batch_size_tokens=4096,
            total_tokens=n_rows * CTX,
            device=args.device,
        )
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        core.run_evals(sae, store, model, config, ignore_tokens={0})
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t

    common = dict(
        batch_size_prompts=BATCH,
        n_eval_sparsity_variance_batches=args.batches,
        compute_variance_metrics=True,
        compute_sparsity_metrics=True,
        compute_l2_norms=True,
        context_size=CTX,
    )
    print(
        f"device={args.device} d_model={D} d_sae={D_SAE} batch={BATCH}x{CTX} "
        f"batches={args.batches} reps={args.reps} threads={torch.get_num_threads()}"
    )
    for label, report, boot in (
        ("fvu_a, B=0", [], 0),
        ("fvu_a, B=100", [], 100),
        ("all, B=0", ["all"], 0),
        ("all, B=100", ["all"], 100),
    ):
        config = fsb.FVUCoreEvalConfig(
            explained_variance_report=report, explained_variance_bootstrap=boot, **common
        )
        once(config)  # warm-up
        ratios, stock_t, plug_t = [], [], []
        for rep in range(args.reps):
            if rep % 2:  # alternate the order (ABBA) so drift does not favour either side
                with fsb.enabled():
                    q = once(config)
                s = once(config)
            else:
                s = once(config)
                with fsb.enabled():
                    q = once(config)
            stock_t.append(s)
            plug_t.append(q)
            ratios.append(q / s)
        print(
            f"{label:>13}: stock median {statistics.median(stock_t):.3f}s, plugin median "
            f"{statistics.median(plug_t):.3f}s, median ratio plugin/stock = "
            f"{statistics.median(ratios):.4f}"
        )


if __name__ == "__main__":
    main()
