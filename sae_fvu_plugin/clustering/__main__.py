"""Fit a clustering SAE on a model's activations, or evaluate a saved one with SAEBench.

    python -m sae_fvu_plugin.clustering fit --hook blocks.3.hook_resid_post \\
        --tokens 20000 --n-clusters 512 [--n-pca 50] --out out/km512
    python -m sae_fvu_plugin.clustering eval out/km512 [--eval-batches 8]

Defaults are the offline ones (SmolLM2-135M, Jane Austen). ``eval`` reads model, hook,
dataset and the fit/eval split from the SAE's metadata, so it scores held-out tokens, and
writes SAEBench's result JSON (plugin enabled: ``explained_variance_by_definition``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from ..data import AUSTEN, SMOLLM2, load_model, split_contexts
from .activations import collect_activations
from .fit import fit_kmeans, fit_pca_kmeans
from .sae import load_clustering_sae


def hook_width(model: Any, hook: str) -> int:
    """Width of the activations at ``hook`` (as SAEBench flattens hook_z / q / k / v)."""
    tokens = torch.zeros(1, 2, dtype=torch.long)
    _, cache = model.run_with_cache(tokens, names_filter=[hook], prepend_bos=False)
    if hook not in cache:
        raise ValueError(f"Hook {hook!r} does not exist in {model.cfg.model_name}.")
    act = cache[hook]
    return int(act.shape[-1] * (act.shape[-2] if act.ndim == 4 else 1))


def cmd_fit(a: argparse.Namespace) -> Path:
    out = Path(a.out)
    if (out / "cfg.json").exists() and not a.overwrite:
        raise SystemExit(f"{out} already holds a saved SAE; pass --overwrite to replace it.")
    model = load_model(a.model, device=a.device)
    n_fit = -(-a.tokens // (a.context_size - 1))
    split = split_contexts(
        a.dataset, model.tokenizer, context_size=a.context_size, n_fit=n_fit, n_eval=0, seed=a.seed
    )
    acts = collect_activations(
        model,
        split.dataset("fit"),
        a.hook,
        a.tokens,
        context_size=a.context_size,
        drop_first_position=True,
        device=a.device,
    )
    meta = dict(
        model_name=a.model,
        hook_name=a.hook,
        context_size=a.context_size,
        dataset=a.dataset,
        prepend_bos=True,
        split_seed=a.seed,
        fit_contexts=n_fit,
    )
    common: dict[str, Any] = dict(
        n_iter=a.n_iter,
        seed=a.seed,
        device=a.device,
        checkpoint=out.parent / f".{out.name}.ckpt",
        **meta,
    )
    if a.n_pca:
        sae = fit_pca_kmeans(acts, a.n_clusters, a.n_pca, **common)
    else:
        sae = fit_kmeans(acts, a.n_clusters, **common)
    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    sae.to("cpu").save_model(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    Path(common["checkpoint"]).unlink(missing_ok=True)
    m = sae.cfg.metadata
    print(
        f"saved {sae.cfg.architecture()} SAE to {out}: d_sae={sae.cfg.d_sae}, "
        f"fit explained variance (fvu_a) {m.fit_explained_variance_fvu_a:.4f} on {m.n_tokens} tokens"
    )
    return out


def cmd_eval(a: argparse.Namespace) -> dict[str, Any]:
    from ..saebench import core_eval_config, run_core_eval

    saved = (
        json.loads((Path(a.sae) / "cfg.json").read_text())
        if (Path(a.sae) / "cfg.json").is_file()
        else {}
    )
    meta = saved.get("metadata", {})
    model_name = a.model or meta.get("model_name") or SMOLLM2
    dataset = a.dataset or meta.get("dataset") or AUSTEN
    model = load_model(model_name, device=a.device)
    hook = meta.get("hook_name")
    width = hook_width(model, hook) if hook else None
    sae = load_clustering_sae(a.sae, device=a.device, expected_d_in=width)
    ctx = int(meta.get("context_size") or 128)
    n_rows = (a.eval_batches + a.recon_batches) * a.batch_prompts
    split = split_contexts(
        dataset,
        model.tokenizer,
        context_size=ctx,
        n_fit=int(meta.get("fit_contexts", 0)),
        n_eval=n_rows,
        seed=int(meta.get("split_seed", 0)),
    )
    config = core_eval_config(
        n_eval_batches=a.eval_batches,
        n_reconstruction_batches=a.recon_batches,
        batch_size_prompts=a.batch_prompts,
        model_name=model_name,
        dataset=dataset,
        context_size=ctx,
        explained_variance_definition=a.definition,
        explained_variance_report=a.report,
    )
    out_json = Path(a.output_json or Path(a.sae) / "eval_results.json")
    res = run_core_eval(
        sae,
        model,
        split.dataset("eval"),
        config,
        out_json=out_json,
        sae_release="clustering",
        sae_id=Path(a.sae).name,
        device=a.device,
    )
    rq = res["metrics"]["reconstruction_quality"]
    print(json.dumps(rq, indent=1))
    print(f"SAEBench result JSON: {out_json}")
    return res


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sae_fvu_plugin.clustering",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    f = sub.add_parser("fit", help="fit k-means / PCA + k-means on a hook's activations")
    f.add_argument("--model", default=SMOLLM2)
    f.add_argument("--hook", required=True, help="e.g. blocks.3.hook_resid_post")
    f.add_argument("--dataset", default=AUSTEN)
    f.add_argument("--tokens", type=int, default=20_000)
    f.add_argument("--n-clusters", type=int, required=True)
    f.add_argument("--n-pca", type=int, default=0)
    f.add_argument("--out", required=True)
    f.add_argument("--context-size", type=int, default=128)
    f.add_argument("--n-iter", type=int, default=20)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--device", default=dev)
    f.add_argument("--overwrite", action="store_true")
    e = sub.add_parser("eval", help="SAEBench core eval of a saved clustering SAE")
    e.add_argument("sae", help="folder written by `fit` (cfg.json + sae_weights.safetensors)")
    e.add_argument("--model", default=None, help="default: the SAE's metadata")
    e.add_argument("--dataset", default=None, help="default: the SAE's metadata")
    e.add_argument("--eval-batches", type=int, default=8)
    e.add_argument("--recon-batches", type=int, default=2)
    e.add_argument("--batch-prompts", type=int, default=8)
    e.add_argument("--definition", default="fvu_a")
    e.add_argument("--report", nargs="*", default=["all"])
    e.add_argument("--output-json", default=None)
    e.add_argument("--device", default=dev)
    return p


def main(argv: list[str] | None = None) -> Any:
    warnings.filterwarnings("ignore", category=UserWarning)
    a = parser().parse_args(argv)
    return cmd_fit(a) if a.cmd == "fit" else cmd_eval(a)


if __name__ == "__main__":
    main(sys.argv[1:])
