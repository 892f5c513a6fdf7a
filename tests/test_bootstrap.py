"""Bootstrap intervals: the Poisson weights, invariance to batching and merge order,
calibration by simulation against hand-derived population values, paired comparisons,
persistence, and the intervals through SAEBench, SAELens and ``sae-fvu compare``."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch

from sae_fvu_plugin import FVUAccumulator
from sae_fvu_plugin.accumulator import NotPairedError
from sae_fvu_plugin.bootstrap import poisson_weights


def test_poisson_weights_are_poisson_1_and_keyed_by_unit():
    units = torch.arange(20_000)
    w = poisson_weights(7, units, 50)
    assert w.shape == (20_000, 50)
    assert float(w.mean()) == pytest.approx(1.0, abs=0.01)
    assert float(w.var()) == pytest.approx(1.0, abs=0.02)
    p0 = float((w == 0).double().mean())
    assert p0 == pytest.approx(np.exp(-1), abs=0.005)
    # a unit's weights depend only on (seed, unit): any subset, any order
    sub = torch.tensor([19_999, 3, 11_000])
    assert torch.equal(poisson_weights(7, sub, 50), w[sub])
    assert not torch.equal(poisson_weights(8, sub, 50), w[sub])
    # replicates are uncorrelated
    c = np.corrcoef(w[:, 0].numpy(), w[:, 1].numpy())[0, 1]
    assert abs(c) < 0.03


def rows_data(n_rows=64, seq=8, d=6, seed=0, noise=0.5, iso=False):
    g = torch.Generator().manual_seed(seed)
    sigma = torch.ones(d) if iso else torch.linspace(0.5, 2.0, d)
    x = 50 + torch.randn(n_rows, seq, d, generator=g, dtype=torch.float64) * sigma
    x_hat = x + noise * torch.randn(n_rows, seq, d, generator=g, dtype=torch.float64)
    return x, x_hat, sigma


NAMES = ["fvu_a", "fvu_per_dim", "fvu_b", "sparsify", "openai_nmse", "saebench_0_6"]


def test_intervals_do_not_depend_on_batch_split_or_merge_order():
    x, x_hat, _ = rows_data()
    whole = FVUAccumulator(NAMES, bootstrap=64, seed=3)
    whole.update(x, x_hat)
    split = FVUAccumulator(NAMES, bootstrap=64, seed=3)
    for lo, hi in ((0, 10), (10, 37), (37, 64)):
        split.update(x[lo:hi], x_hat[lo:hi])
    a, b = whole.confidence_interval(), split.confidence_interval()
    assert a == whole.confidence_interval(method="normal")
    for name in ("fvu_a", "fvu_per_dim", "openai_nmse"):  # batch-independent definitions
        assert a[name] == pytest.approx(b[name], rel=1e-12, abs=1e-15), name
    # merge order: the same batches merged in any order give the same replicates
    parts = []
    for lo, hi in ((0, 10), (10, 37), (37, 64)):
        acc = FVUAccumulator(NAMES, bootstrap=64, seed=3)
        acc.update(x[lo:hi], x_hat[lo:hi], units=torch.arange(lo, hi))
        parts.append(acc)
    fwd = FVUAccumulator(NAMES, bootstrap=64, seed=3)
    for p in parts:
        fwd.merge(p)
    back = FVUAccumulator(NAMES, bootstrap=64, seed=3)
    for p in reversed(parts):
        back.merge(p)
    rf, rb = fwd.bootstrap_replicates(), back.bootstrap_replicates()
    rs = split.bootstrap_replicates()
    for name in NAMES:
        torch.testing.assert_close(rf[name], rb[name], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(rf[name], rs[name], rtol=1e-12, atol=1e-15)
    assert fwd.compute() == pytest.approx(split.compute(), rel=1e-12)


def test_replicate_one_with_unit_weights_is_the_point_estimate():
    """With every weight 1 a replicate is the ordinary estimate (same formula path)."""
    from sae_fvu_plugin.bootstrap import batch_replicates
    from sae_fvu_plugin.stats import compute_fvu, ratio_key

    x, x_hat, _ = rows_data(n_rows=8)
    acc = FVUAccumulator(NAMES)
    acc.update(x, x_hat)
    keys = sorted({k for k in (ratio_key(d) for d in acc.definitions.values()) if k})
    xs, hs = x.reshape(-1, x.shape[-1]), x_hat.reshape(-1, x.shape[-1])
    reps = batch_replicates(
        xs,
        xs - hs,
        torch.arange(len(xs)),
        lambda u: torch.ones(len(u), 2, dtype=torch.float64),
        keys,
        2,
    )
    point = acc.compute()
    for name, defn in acc.definitions.items():
        assert compute_fvu(defn, reps.state(0)) == pytest.approx(point[name], rel=1e-12), name


def coverage(name, population, make, n_sims=400, level=0.95, B=200):
    hits = 0
    for s in range(n_sims):
        x, x_hat = make(s)
        acc = FVUAccumulator(name, bootstrap=B, seed=s)
        for lo in range(0, x.shape[0], 8):  # SAEBench-like batches of 8 contexts
            acc.update(x[lo : lo + 8], x_hat[lo : lo + 8])
        lo_, hi_ = acc.confidence_interval(level)[name]
        hits += lo_ <= population <= hi_
    return hits / n_sims


def test_calibration_fvu_a_and_per_dim():
    """x ~ N(μ, diag σ²), x̂ = x + e, e ~ N(0, s² I): FVU_a = d s² / Σσ², FVU_per_dim =
    mean_i s² / σ_i² (ratios of expectations)."""
    d, s = 6, 0.5

    def make(seed):
        x, x_hat, _ = rows_data(n_rows=48, seq=8, d=d, seed=seed, noise=s)
        return x, x_hat

    sigma = torch.linspace(0.5, 2.0, d)
    pop_a = d * s**2 / float(sigma.square().sum())
    pop_dim = float((s**2 / sigma.square()).mean())
    cov_a = coverage("fvu_a", pop_a, make)
    cov_dim = coverage("fvu_per_dim", pop_dim, make)
    print(
        f"\ncoverage of the nominal 95 % interval (400 datasets): fvu_a {cov_a:.3f}, fvu_per_dim {cov_dim:.3f}"
    )
    assert 0.92 <= cov_a <= 0.97
    assert 0.92 <= cov_dim <= 0.97


def test_calibration_fvu_b():
    """Isotropic x (σ = 1) in batches of n_b = 64 tokens: x_n − μ_b ~ N(0, (1 − 1/n_b) I),
    independent of e_n, so FVU_b = E‖e‖² E[1/‖x − μ_b‖²] = d s² / ((1 − 1/n_b)(d − 2))."""
    d, s, n_b = 12, 0.5, 64

    def make(seed):
        x, x_hat, _ = rows_data(n_rows=48, seq=8, d=d, seed=seed, noise=s, iso=True)
        return x, x_hat

    pop = d * s**2 / ((1 - 1 / n_b) * (d - 2))
    cov = coverage("fvu_b", pop, make)
    print(f"\ncoverage of the nominal 95 % interval (400 datasets): fvu_b {cov:.3f}")
    assert 0.92 <= cov <= 0.97


def test_paired_comparison_is_much_narrower_than_unpaired():
    x, x_hat, _ = rows_data(n_rows=64, seed=5)
    g = torch.Generator().manual_seed(9)
    other = x_hat + 0.01 * torch.randn(x_hat.shape, generator=g, dtype=torch.float64)
    a = FVUAccumulator(["fvu_a", "fvu_b"], bootstrap=200, seed=1)
    b = FVUAccumulator(["fvu_a", "fvu_b"], bootstrap=200, seed=1)
    a.update(x, x_hat)
    b.update(x, other)
    diff = a.compare(b)
    ca, cb = a.confidence_interval(), b.confidence_interval()
    for name in ("fvu_a", "fvu_b"):
        lo, hi, est = diff[name]
        assert est == pytest.approx(a.compute()[name] - b.compute()[name], rel=1e-12)
        assert lo <= est <= hi
        unpaired = np.hypot(ca[name][1] - ca[name][0], cb[name][1] - cb[name][0])
        assert (hi - lo) < 0.2 * unpaired, name


def test_unpaired_comparisons_are_refused():
    x, x_hat, _ = rows_data(n_rows=16)
    a = FVUAccumulator("fvu_a", bootstrap=20, seed=1)
    a.update(x, x_hat)
    for other, match in (
        (FVUAccumulator("fvu_a", bootstrap=20, seed=2), "seed differs"),
        (FVUAccumulator("fvu_a", bootstrap=30, seed=1), "B differs"),
    ):
        other.update(x, x_hat)
        with pytest.raises(NotPairedError, match=match):
            a.compare(other)
    shifted = FVUAccumulator("fvu_a", bootstrap=20, seed=1)
    shifted.update(x, x_hat, units=torch.arange(100, 116))
    with pytest.raises(NotPairedError, match="different units"):
        a.compare(shifted)
    with pytest.raises(ValueError, match="bootstrap=B > 0"):
        FVUAccumulator("fvu_a").confidence_interval()


def test_replicates_survive_state_dict(tmp_path):
    x, x_hat, _ = rows_data(n_rows=16)
    a = FVUAccumulator(NAMES, bootstrap=32, seed=4)
    a.update(x[:8], x_hat[:8])
    torch.save(a.state_dict(), tmp_path / "s.pt")
    b = FVUAccumulator(NAMES, bootstrap=32, seed=4)
    b.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    a.update(x[8:], x_hat[8:])
    b.update(x[8:], x_hat[8:])  # default unit numbering continues where it stopped
    ra, rb = a.bootstrap_replicates(), b.bootstrap_replicates()
    for name in NAMES:
        torch.testing.assert_close(ra[name], rb[name], rtol=0, atol=0)


def test_all_reduce_with_replicates_two_processes(tmp_path):
    import torch.multiprocessing as mp
    from _dist_worker import run_bootstrap

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run_bootstrap, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    x, x_hat, _ = rows_data(n_rows=30)
    single = FVUAccumulator(NAMES, bootstrap=40, seed=2)
    single.update(x, x_hat, units=torch.arange(30))
    want = single.bootstrap_replicates()
    got = [torch.load(tmp_path / f"boot{r}.pt") for r in range(2)]
    for name in NAMES:
        torch.testing.assert_close(got[0][name], got[1][name], rtol=0, atol=0)
        if name in ("fvu_a", "fvu_per_dim", "openai_nmse"):
            torch.testing.assert_close(got[0][name], want[name], rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------- through the libraries


def test_saebench_intervals_and_paired_compare_cli(tmp_path, capsys):
    from sae_bench.evals.core import main as core
    from tiny import CTX, SPECIAL, make_store, standard_sae, tiny_dataset, tiny_model

    from sae_fvu_plugin import saebench as fsb
    from sae_fvu_plugin.cli import run as sae_fvu

    model, ds = tiny_model(offset=2.0, seed=3), tiny_dataset(seed=3)
    cfg = fsb.core_eval_config(
        n_eval_batches=3,
        n_reconstruction_batches=1,
        batch_size_prompts=4,
        context_size=CTX,
        explained_variance_report=["fvu_b", "fvu_per_dim"],
        explained_variance_bootstrap=50,
    )
    paths = []
    for i, sae in enumerate((standard_sae(seed=1), standard_sae(seed=2))):
        res = fsb.run_core_eval(
            sae, model, ds, cfg, ignore_tokens=set(SPECIAL), out_json=tmp_path / f"{i}.json"
        )
        rq = res["metrics"]["reconstruction_quality"]
        for name, (lo, hi) in rq["explained_variance_ci"].items():
            assert lo <= rq["explained_variance_by_definition"][name] <= hi or abs(hi - lo) < 1e-9
            assert len(rq["explained_variance_replicates"][name]) == 50
        prov = rq["explained_variance_provenance"]["fvu_b"]
        assert (
            prov["depends_on_eval_batch"]
            and prov["batches"] == 3
            and prov["input_dtypes"] == ["float32"]
        )
        assert prov["tokens"] == rq["explained_variance_provenance"]["fvu_a"]["tokens"]
        paths.append(str(tmp_path / f"{i}.json"))
    saved = json.loads((tmp_path / "0.json").read_text())
    srq = saved["eval_result_metrics"]["reconstruction_quality"]
    assert saved["eval_config"]["explained_variance_bootstrap"] == 50
    assert srq["explained_variance_ci_level"] == 0.95 and srq["explained_variance_bootstrap"] == 50
    out = sae_fvu(["compare", *paths])
    assert set(out) == {"fvu_a", "fvu_b", "fvu_per_dim"}
    lo, hi, est = out["fvu_a"]
    a = srq["explained_variance_by_definition"]["fvu_a"]
    b = json.loads((tmp_path / "1.json").read_text())["eval_result_metrics"][
        "reconstruction_quality"
    ]["explained_variance_by_definition"]["fvu_a"]
    assert est == pytest.approx(a - b, rel=1e-12) and lo <= est <= hi
    printed = capsys.readouterr().out
    assert "paired difference" in printed and "fvu_b" in printed
    # results on other tokens are not paired: say why
    cfg2 = fsb.core_eval_config(
        n_eval_batches=2,
        n_reconstruction_batches=1,
        batch_size_prompts=4,
        context_size=CTX,
        explained_variance_bootstrap=50,
    )
    fsb.run_core_eval(
        standard_sae(seed=1),
        model,
        ds,
        cfg2,
        ignore_tokens=set(SPECIAL),
        out_json=tmp_path / "2.json",
    )
    with pytest.raises(SystemExit) as err:
        sae_fvu(["compare", paths[0], str(tmp_path / "2.json")])
    assert err.value.code == 2
    assert "not paired" in capsys.readouterr().err
    del core, make_store


def test_saelens_intervals():
    from sae_lens import evals
    from sae_lens.training.activation_scaler import ActivationScaler
    from tiny import SPECIAL, make_store, standard_sae, tiny_dataset, tiny_model

    from sae_fvu_plugin import saelens as fsl

    model, ds = tiny_model(offset=2.0, seed=1), tiny_dataset(seed=1)
    sae = standard_sae(seed=9)
    cfg = fsl.FVUEvalConfig(
        batch_size_prompts=4,
        n_eval_sparsity_variance_batches=3,
        compute_variance_metrics=True,
        explained_variance_report=["fvu_b"],
        explained_variance_bootstrap=40,
    )
    with fsl.enabled():
        m, _ = evals.run_evals(
            sae,
            make_store(model, sae, ds),
            model,
            ActivationScaler(),
            cfg,
            exclude_special_tokens=list(SPECIAL),
        )
    rq = m["reconstruction_quality"]
    assert set(rq["explained_variance_ci"]) == {"fvu_a", "fvu_b"}
    assert len(rq["explained_variance_replicates"]["fvu_b"]) == 40
    # the unit is the eval context: 3 batches × 4 contexts
    assert rq["explained_variance_provenance"]["fvu_a"]["batches"] == 3
