"""The seed experiment: how much variance k-means and PCA + k-means explain, under
``fvu_a``, ``fvu_b`` and ``fvu_per_dim`` side by side, scored by SAEBench's own core eval.

For each layer's ``hook_resid_post``: k-means for several k, and PCA + k-means with
n_pca ∈ {1, 2, 5, ..., 500} at fixed d_sae (n_clusters = d_sae − n_pca); the same fits on
Gaussian data with the activations' mean and covariance (the random-data baseline). Fit
on one slice of the text, evaluate on a disjoint held-out slice. Each fitted model is a
saved ``ClusteringSAE`` evaluated by SAEBench's ``run_evals`` with the plugin enabled and
``explained_variance_report=["all"]`` — once on every token, and once with the top
0.1 % of tokens by activation norm excluded from explained variance (the explicit,
recorded ``explained_variance_exclude_norm_above`` option).

    python -m sae_fvu_plugin.experiments.clustering_sweep               # offline default
    python -m sae_fvu_plugin.experiments.clustering_sweep --model pythia-70m-deduped \\
        --dataset Skylion007/openwebtext --layers 3 4                  # the seed's setting
    python -m sae_fvu_plugin.experiments.clustering_sweep --full        # seed scale (GPU)

Re-runs reuse cached activations, fits and evaluations (keyed by their settings) and
compute only what is missing; an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import fvu_many
from ..clustering import ClusteringSAE, collect_activations, fit_kmeans, fit_pca_kmeans
from ..clustering.sae import load_clustering_sae
from ..data import AUSTEN, SMOLLM2, load_model, split_contexts

DEFS = ("fvu_a", "fvu_b", "fvu_per_dim", "saebench_0_6")


@dataclass
class SweepConfig:
    model: str = SMOLLM2
    dataset: str = AUSTEN
    layers: list[int] = field(default_factory=lambda: [3, 15])
    context_size: int = 128
    fit_tokens: int = 16_384
    eval_batches: int = 8
    batch_prompts: int = 4
    recon_batches: int = 1
    ks: list[int] = field(default_factory=lambda: [16, 64, 256])
    d_sae: int = 512
    n_pca: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 50, 100, 200, 500])
    n_iter: int = 15
    seed: int = 0
    gaussian: bool = True
    massive_fraction: float = 0.001
    out: str = "out/clustering_sweep"
    device: str = "cpu"

    @classmethod
    def full(cls, **kw: Any) -> SweepConfig:
        """The seed's scale: 1M fit tokens, k up to 16384 (meant for a GPU)."""
        base: dict[str, Any] = dict(
            fit_tokens=1_000_000,
            eval_batches=64,
            batch_prompts=16,
            recon_batches=8,
            ks=[1024, 4096, 16384],
            d_sae=4096,
            n_iter=30,
            device="cuda" if torch.cuda.is_available() else "cpu",
        )
        return cls(**(base | kw))

    @property
    def eval_tokens(self) -> int:
        return self.eval_batches * self.batch_prompts * self.context_size

    def hook(self, layer: int) -> str:
        return f"blocks.{layer}.hook_resid_post"

    def fits(self) -> list[tuple[int, int]]:
        """(n_clusters, n_pca) of every model: k-means for each k, then PCA + k-means."""
        out = [(k, 0) for k in self.ks]
        out += [(self.d_sae - p, p) for p in self.n_pca if p < self.d_sae]
        return out


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def estimate_minutes(cfg: SweepConfig) -> float:
    """Rough wall time on 2 CPU cores, from rates measured on SmolLM2-135M: the forward
    pass runs ≈ 200 tokens/s through all 30 layers (≈ 200·30/(L+1) stopping after layer L),
    k-means ≈ 45e9 multiply-adds/s."""
    fit_s = 0.0
    for k, p in cfg.fits():
        fit_s += (cfg.n_iter + 3) * cfg.fit_tokens * 576 * (k + p) * 2 / 45e9 + 0.5
    fit_s *= len(cfg.layers) * (2 if cfg.gaussian else 1)
    act_s = cfg.fit_tokens / (200 * 30 / (max(cfg.layers) + 1))
    kl_s = 3 * cfg.recon_batches * cfg.batch_prompts * cfg.context_size / 200
    eval_s = sum(
        len(cfg.fits()) * (kl_s + 2 * cfg.eval_tokens / (200 * 30 / (layer + 1)))
        for layer in cfg.layers
    )
    return (fit_s + act_s + eval_s + 15) / 60


# ------------------------------------------------------------------------------ steps


def massive_stats(x: torch.Tensor, fraction: float) -> dict[str, float]:
    """Share of total variance Σ‖x_n − μ‖² carried by the top ``fraction`` of tokens by
    norm ‖x_n‖, and the norm quantiles."""
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
    cov = torch.cov(x64.T)
    evals, evecs = torch.linalg.eigh(cov)
    root = evecs * evals.clamp(min=0).sqrt()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, x.shape[1], generator=g, dtype=torch.float64)
    return (mu + z @ root.T).float()


def fit_one(
    acts: torch.Tensor,
    n_clusters: int,
    n_pca: int,
    cfg: SweepConfig,
    folder: Path,
    meta: dict[str, Any],
) -> ClusteringSAE:
    """Fit (or reuse the saved fit with the same key)."""
    fit_key = _key(meta, n_clusters, n_pca, cfg.n_iter, cfg.seed)
    if (folder / "cfg.json").is_file():
        saved = json.loads((folder / "cfg.json").read_text())
        if saved.get("metadata", {}).get("fit_key") == fit_key:
            return load_clustering_sae(folder, device="cpu")
    common: dict[str, Any] = dict(
        n_iter=cfg.n_iter,
        seed=cfg.seed,
        device=cfg.device,
        progress=False,
        checkpoint=folder.parent / f".{folder.name}.ckpt",
        fit_key=fit_key,
        **meta,
    )
    if n_pca:
        sae = fit_pca_kmeans(acts, n_clusters, n_pca, **common)
    else:
        sae = fit_kmeans(acts, n_clusters, **common)
    sae = sae.to("cpu")
    tmp = folder.parent / f".{folder.name}.tmp"
    sae.save_model(tmp)
    if folder.exists():
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    os.replace(tmp, folder)
    ckpt = Path(common["checkpoint"])
    if ckpt.exists():
        ckpt.unlink()
    return sae


def eval_real(
    sae: ClusteringSAE,
    model: Any,
    dataset: Any,
    cfg: SweepConfig,
    exclude: float | None,
    out_json: Path | None,
) -> dict[str, Any]:
    from ..saebench import core_eval_config, run_core_eval

    config = core_eval_config(
        all_metrics=out_json is not None,
        n_eval_batches=cfg.eval_batches,
        n_reconstruction_batches=cfg.recon_batches,
        batch_size_prompts=cfg.batch_prompts,
        model_name=cfg.model,
        dataset=cfg.dataset,
        context_size=cfg.context_size,
        explained_variance_report=["all"],
        explained_variance_exclude_norm_above=exclude,
    )
    res = run_core_eval(
        sae,
        model,
        dataset,
        config,
        out_json=out_json,
        sae_release="clustering_sweep",
        sae_id=sae.cfg.metadata.get("name", "sae"),
        device=cfg.device,
    )
    return res["metrics"]


def row_from_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    rq = metrics["reconstruction_quality"]
    ev = rq["explained_variance_by_definition"]
    row = {f"ev_{d}": ev[d] for d in DEFS}
    row["ev_all"] = ev
    row["excluded_tokens"] = rq["explained_variance_excluded_tokens"]
    row["l0"] = metrics.get("sparsity", {}).get("l0")
    row["kl_div_score"] = metrics.get("model_behavior_preservation", {}).get("kl_div_score")
    row["ce_loss_score"] = metrics.get("model_performance_preservation", {}).get("ce_loss_score")
    return row


def eval_direct(sae: ClusteringSAE, x: torch.Tensor, cfg: SweepConfig) -> dict[str, Any]:
    """Explained variance on raw vectors (the Gaussian baseline has no model), with the
    eval-batch structure of the real runs."""
    per_batch = cfg.batch_prompts * (cfg.context_size - 1)
    ids = torch.arange(len(x)) // per_batch
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    fv = fvu_many(x, x_hat, list(DEFS), batch_ids=ids)
    row: dict[str, Any] = {f"ev_{d}": 1 - fv[d] for d in DEFS}
    row["ev_all"] = {d: 1 - v for d, v in fv.items()}
    row["excluded_tokens"] = 0
    row["l0"] = float((sae.encode(x) != 0).sum(-1).float().mean())
    return row


# ------------------------------------------------------------------------------- run


def run(cfg: SweepConfig, *, progress: bool = True) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    fits = cfg.fits()
    n_models = len(fits) * len(cfg.layers)
    print(
        f"[sweep] {cfg.model} on {cfg.dataset}: layers {cfg.layers} (hook_resid_post); "
        f"fit on {cfg.fit_tokens:,} tokens, evaluate on {cfg.eval_tokens:,} held-out tokens.\n"
        f"[sweep] {n_models} models (k-means k={cfg.ks}; PCA+k-means d_sae={cfg.d_sae}, "
        f"n_pca={[p for _, p in fits if p]})"
        + (f" + the same {n_models} on Gaussian data" if cfg.gaussian else "")
        + f"; each scored by SAEBench run_evals twice (all tokens / top {cfg.massive_fraction:.1%} "
        f"by norm excluded).\n[sweep] estimated {estimate_minutes(cfg):.0f} min on 2 CPU cores "
        f"(less when cached); output in {out}/"
    )
    t0 = time.time()
    model = load_model(cfg.model, device=cfg.device, n_ctx=max(cfg.context_size, 128))
    n_fit_ctx = -(-cfg.fit_tokens // (cfg.context_size - 1))
    # SAEBench draws its KL/CE batches first and the variance batches after them (its
    # reset_input_dataset does not rewind the token stream): the eval slice holds both, and
    # the variance-only run (massive tokens excluded) reads the same variance contexts.
    n_var_ctx = cfg.eval_batches * cfg.batch_prompts
    n_eval_ctx = n_var_ctx + cfg.recon_batches * cfg.batch_prompts
    split = split_contexts(
        cfg.dataset,
        model.tokenizer,
        context_size=cfg.context_size,
        n_fit=n_fit_ctx,
        n_eval=n_eval_ctx,
        seed=cfg.seed,
    )
    assert not set(split.fit_index.tolist()) & set(split.eval_index.tolist())
    from datasets import Dataset

    eval_ds = split.dataset("eval")
    variance_ds = Dataset.from_dict({"input_ids": split.eval[-n_var_ctx:].tolist()})

    data_key = _key(cfg.model, cfg.dataset, cfg.context_size, cfg.fit_tokens, cfg.seed, cfg.layers)
    act_path = out / "cache" / f"fit-acts-{data_key}.pt"
    hooks = [cfg.hook(layer) for layer in cfg.layers]
    if act_path.is_file():
        acts = torch.load(act_path, weights_only=True)
    else:
        acts = collect_activations(
            model,
            split.dataset("fit"),
            hooks,
            cfg.fit_tokens,
            context_size=cfg.context_size,
            batch_prompts=cfg.batch_prompts,
            drop_first_position=True,
            device=cfg.device,
            progress=progress,
        )
        act_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(acts, act_path)

    rows: list[dict[str, Any]] = []
    massive: dict[int, dict[str, float]] = {}
    jobs = [
        (layer, src, k, p)
        for layer in cfg.layers
        for src in (["real", "gaussian"] if cfg.gaussian else ["real"])
        for k, p in fits
    ]
    bar = tqdm(jobs, desc="fit + eval", unit="model", disable=not progress)
    gauss_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for layer, src, k, p in bar:
        hook = cfg.hook(layer)
        x_fit = acts[hook]
        if layer not in massive:
            massive[layer] = massive_stats(x_fit, cfg.massive_fraction)
        threshold = massive[layer]["threshold"]
        name = f"L{layer}-{src}-{'kmeans' if p == 0 else 'pca_kmeans'}-k{k}-p{p}"
        bar.set_postfix_str(name)
        row_path = (
            out
            / "rows"
            / f"{name}-{_key(data_key, cfg.n_iter, cfg.eval_batches, cfg.batch_prompts, cfg.recon_batches)}.json"
        )
        if row_path.is_file():
            rows += json.loads(row_path.read_text())
            continue
        meta = dict(
            model_name=cfg.model,
            hook_name=hook,
            context_size=cfg.context_size,
            dataset=cfg.dataset if src == "real" else f"gaussian({cfg.dataset} moments)",
            prepend_bos=True,
            name=name,
            data_key=data_key,
        )
        if src == "gaussian":
            if layer not in gauss_cache:
                gauss_cache[layer] = (
                    gaussian_like(x_fit, len(x_fit), cfg.seed + 1),
                    gaussian_like(x_fit, n_var_ctx * (cfg.context_size - 1), cfg.seed + 2),
                )
            x_fit = gauss_cache[layer][0]
        sae = fit_one(x_fit, k, p, cfg, out / "saes" / name, meta)
        base = dict(
            layer=layer,
            hook=hook,
            source=src,
            n_tokens=len(x_fit),
            n_clusters=k,
            n_pca=p,
            d_sae=k + p,
            fit_inertia=sae.cfg.metadata.inertia,
        )
        new_rows = []
        if src == "real":
            for excl in (None, threshold):
                json_path = out / "results" / f"{name}_eval_results.json" if excl is None else None
                ds = eval_ds if excl is None else variance_ds
                metrics = eval_real(sae, model, ds, cfg, excl, json_path)
                new_rows.append(
                    base
                    | row_from_metrics(metrics)
                    | {
                        "massive_excluded": excl is not None,
                        "exclude_norm_above": excl,
                        "n_eval_tokens": n_var_ctx * cfg.context_size,
                    }
                )
        else:
            x_eval = gauss_cache[layer][1]
            new_rows.append(
                base
                | eval_direct(sae, x_eval, cfg)
                | {
                    "massive_excluded": False,
                    "exclude_norm_above": None,
                    "n_eval_tokens": len(x_eval),
                }
            )
        row_path.parent.mkdir(parents=True, exist_ok=True)
        row_path.write_text(json.dumps(new_rows))
        rows += new_rows
    bar.close()

    ratios = proportionality(rows)
    summary: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "massive_tokens": {str(k): v for k, v in massive.items()},
        "ratios_fvu_b_over_fvu_a": ratios,
        "rows": rows,
        "minutes": (time.time() - t0) / 60,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    write_csv(rows, out / "results.csv")
    print(format_massive(massive, cfg))
    print(format_table(rows))
    print(format_ratios(ratios))
    try:
        plots(rows, ratios, out)
        print(f"[sweep] plots: {out}/ev_vs_npca.png, fvu_a_vs_fvu_b.png, real_vs_gaussian.png")
    except ImportError as err:  # matplotlib is an optional (demo) dependency
        print(f"[sweep] plots skipped: {err}")
    print(
        f"[sweep] done in {summary['minutes']:.1f} min; results.csv, results.json, "
        f"SAEBench result JSONs in {out}/results/"
    )
    return summary


def proportionality(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per layer, FVU_b ≈ r · FVU_a fitted through the origin on every real model (all
    tokens): r = Σ ab / Σ a², with R² of that fit."""
    out: dict[str, dict[str, float]] = {}
    for layer in sorted({r["layer"] for r in rows}):
        pts = [
            (1 - r["ev_fvu_a"], 1 - r["ev_fvu_b"])
            for r in rows
            if r["layer"] == layer and r["source"] == "real" and not r["massive_excluded"]
        ]
        if not pts:
            continue
        a = torch.tensor([p[0] for p in pts], dtype=torch.float64)
        b = torch.tensor([p[1] for p in pts], dtype=torch.float64)
        ratio = float((a * b).sum() / (a * a).sum())
        ss_res = float(((b - ratio * a) ** 2).sum())
        ss_tot = float(((b - b.mean()) ** 2).sum())
        out[str(layer)] = {
            "ratio": ratio,
            "r2": 1 - ss_res / ss_tot if ss_tot > 0 else math.nan,
            "n_models": len(pts),
        }
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    cols = [
        "layer",
        "source",
        "massive_excluded",
        "n_tokens",
        "n_clusters",
        "n_pca",
        "d_sae",
        *[f"ev_{d}" for d in DEFS],
        "excluded_tokens",
        "exclude_norm_above",
        "l0",
        "kl_div_score",
        "ce_loss_score",
        "fit_inertia",
    ]
    names = sorted({n for r in rows for n in r["ev_all"]})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols + [f"ev_all_{n}" for n in names])
        for r in rows:
            w.writerow([r.get(c) for c in cols] + [r["ev_all"].get(n) for n in names])


def format_massive(massive: dict[int, dict[str, float]], cfg: SweepConfig) -> str:
    lines = [
        f"\nMassive activations (fit tokens): share of total variance carried by the top "
        f"{cfg.massive_fraction:.1%} of tokens by norm"
    ]
    for layer, m in massive.items():
        lines.append(
            f"  layer {layer:>2}: top {m['top_tokens']} of {m['n_tokens']} tokens carry "
            f"{m['top_variance_share']:.1%} of the variance; token norm median "
            f"{m['norm_median']:.1f}, p99 {m['norm_p99']:.1f}, max {m['norm_max']:.1f}; "
            f"excluded above {m['threshold']:.1f}"
        )
    return "\n".join(lines)


def format_table(rows: list[dict[str, Any]]) -> str:
    head = [
        "layer",
        "data",
        "tokens",
        "n_tokens",
        "n_clusters",
        "n_pca",
        "fvu_a",
        "fvu_b",
        "fvu_per_dim",
        "SAEBench 0.6.0",
    ]
    lines = ["\nExplained variance (1 - FVU) on held-out tokens, SAEBench core eval + plugin"]
    table = [head]
    for r in sorted(
        rows,
        key=lambda r: (
            r["layer"],
            r["source"] != "real",
            r["massive_excluded"],
            r["n_pca"],
            r["n_clusters"],
        ),
    ):
        table.append(
            [
                str(r["layer"]),
                r["source"],
                f"-{r['excluded_tokens']} massive" if r["massive_excluded"] else "all",
                str(r["n_tokens"]),
                str(r["n_clusters"]),
                str(r["n_pca"]),
                *(f"{r[f'ev_{d}']:.4f}" for d in DEFS),
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(lines)


def format_ratios(ratios: dict[str, dict[str, float]]) -> str:
    lines = ["\nFVU_b ≈ r · FVU_a across all fitted models (real data, all tokens):"]
    for layer, v in ratios.items():
        lines.append(
            f"  layer {layer}: r = {v['ratio']:.3f}, R² = {v['r2']:.3f} ({v['n_models']} models)"
        )
    return "\n".join(lines)


def plots(rows: list[dict[str, Any]], ratios: dict[str, dict[str, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted({r["layer"] for r in rows})
    real = [r for r in rows if r["source"] == "real" and not r["massive_excluded"]]

    def pca_curve(layer: int, source: str) -> list[dict[str, Any]]:
        pts = (
            r
            for r in rows
            if r["layer"] == layer
            and r["source"] == source
            and not r["massive_excluded"]
            and r["n_pca"] > 0
        )
        return sorted(pts, key=lambda r: r["n_pca"])

    def per_layer(name: str, title: str, ylabel: str, draw: Any) -> None:
        fig, axes = plt.subplots(1, len(layers), figsize=(5.5 * len(layers), 4), squeeze=False)
        for ax, layer in zip(axes[0], layers, strict=True):
            draw(ax, layer)
            ax.set_xscale("log")
            ax.set_title(title.format(layer=layer))
            ax.set_xlabel("n_pca")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)

    def by_definition(ax: Any, layer: int) -> None:
        pts = pca_curve(layer, "real")
        for d in DEFS:
            ax.plot([r["n_pca"] for r in pts], [r[f"ev_{d}"] for r in pts], marker="o", label=d)

    def real_vs_gaussian(ax: Any, layer: int) -> None:
        for src, style in (("real", "-o"), ("gaussian", "--s")):
            pts = pca_curve(layer, src)
            if pts:
                ax.plot([r["n_pca"] for r in pts], [r["ev_fvu_a"] for r in pts], style, label=src)

    per_layer(
        "ev_vs_npca.png",
        "layer {layer}: PCA + k-means, d_sae fixed",
        "explained variance",
        by_definition,
    )
    per_layer(
        "real_vs_gaussian.png",
        "layer {layer}: fvu_a, real vs Gaussian baseline",
        "explained variance (fvu_a)",
        real_vs_gaussian,
    )

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for layer in layers:
        pts = [r for r in real if r["layer"] == layer]
        a = [1 - r["ev_fvu_a"] for r in pts]
        b = [1 - r["ev_fvu_b"] for r in pts]
        r_ = ratios[str(layer)]["ratio"]
        sc = ax.scatter(a, b, label=f"layer {layer}: FVU_b ≈ {r_:.2f}·FVU_a")
        grid = torch.linspace(0, max(a) * 1.05, 20)
        ax.plot(grid, r_ * grid, color=sc.get_facecolor()[0], alpha=0.6)
    ax.set_xlabel("FVU_a (pooled, global mean)")
    ax.set_ylabel("FVU_b (per-token, batch mean)")
    ax.set_title("fvu_a vs fvu_b, every fitted model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fvu_a_vs_fvu_b.png", dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> SweepConfig:
    d = SweepConfig()
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model", default=d.model, help="smollm2-135m (offline) or a TransformerLens name"
    )
    p.add_argument(
        "--dataset", default=d.dataset, help="austen (offline) or a Hugging Face dataset"
    )
    p.add_argument("--layers", type=int, nargs="+")
    p.add_argument("--context-size", type=int)
    p.add_argument("--fit-tokens", type=int)
    p.add_argument("--eval-batches", type=int)
    p.add_argument("--batch-prompts", type=int)
    p.add_argument("--recon-batches", type=int, help="KL/CE batches per model")
    p.add_argument("--ks", type=int, nargs="+", help="k of the plain k-means models")
    p.add_argument("--d-sae", type=int, help="total latents of the PCA + k-means models")
    p.add_argument("--n-pca", type=int, nargs="+")
    p.add_argument("--n-iter", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-gaussian", action="store_true", help="skip the Gaussian baseline")
    p.add_argument("--out")
    p.add_argument("--device")
    p.add_argument(
        "--full", action="store_true", help="the seed's scale (1M tokens, k ≤ 16384; GPU)"
    )
    a = p.parse_args(argv)
    given = {k: v for k, v in vars(a).items() if v is not None and k not in ("full", "no_gaussian")}
    given["gaussian"] = not a.no_gaussian
    return SweepConfig.full(**given) if a.full else SweepConfig(**given)


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore", category=UserWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run(parse_args(argv))


if __name__ == "__main__":
    main()
