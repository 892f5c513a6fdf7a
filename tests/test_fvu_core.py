"""The FVU core against independent references: float64 two-pass numpy, sklearn, and
hand-derived answers."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from refs import ref_fvu  # noqa: E402
from sklearn.metrics import explained_variance_score, r2_score

import sae_fvu_plugin as fp
from sae_fvu_plugin import FVUAccumulator, FVUDefinition, FVUWarning, fvu

PRESETS = list(fp.DEFINITIONS.presets)


def data(n: int = 512, d: int = 16, offset: float = 0.0, noise: float = 0.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = offset + torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, d)
    xh = x + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, xh


# ------------------------------------------------------------------------ presets / API


def test_every_preset_has_a_reference_and_description():
    assert set(PRESETS) == {
        "fvu_a",
        "fvu_a_evs",
        "fvu_b",
        "fvu_per_dim",
        "fvu_uncentered",
        "openai_nmse",
        "sklearn_evs",
        "sparsify",
        "dictionary_learning",
        "saebench_0_6",
    }
    for name in PRESETS:
        assert fp.DEFINITIONS[name].description


@pytest.mark.parametrize("name", PRESETS)
def test_functional_matches_float64_reference(name):
    x, xh = data(offset=3.0)
    ids = torch.arange(len(x)) // 100
    assert fvu(x, xh, name) == pytest.approx(ref_fvu(x.numpy(), xh.numpy(), name), rel=1e-12)
    got = fvu(x, xh, name, batch_ids=ids)
    assert got == pytest.approx(ref_fvu(x.numpy(), xh.numpy(), name, ids.numpy()), rel=1e-12)


def test_against_sklearn():
    x, xh = data(n=300, d=7, offset=5.0)
    xn, hn = x.numpy(), xh.numpy()
    assert 1 - fvu(x, xh, "fvu_a") == pytest.approx(
        r2_score(xn, hn, multioutput="variance_weighted"), rel=1e-12
    )
    assert 1 - fvu(x, xh, "fvu_per_dim") == pytest.approx(
        r2_score(xn, hn, multioutput="uniform_average"), rel=1e-12
    )
    assert 1 - fvu(x, xh, "sklearn_evs") == pytest.approx(
        explained_variance_score(xn, hn, multioutput="uniform_average"), rel=1e-12
    )
    assert fp.explained_variance(x, xh) == pytest.approx(1 - fvu(x, xh))


def test_known_answers():
    x, _ = data(offset=7.0)
    assert fvu(x, x) == 0.0
    mean = x.mean(0, keepdim=True).expand_as(x)
    assert fvu(x, mean) == pytest.approx(1.0, abs=1e-12)
    assert fp.explained_variance(x, mean) == pytest.approx(0.0, abs=1e-12)
    total = float(((x - x.mean(0)) ** 2).sum())
    assert fvu(x, torch.zeros_like(x)) == pytest.approx(float((x**2).sum()) / total, rel=1e-12)
    # hand-derived: x = [[0],[2]], x̂ = [[1],[1]]: Σr² = 2, Σ(x−μ)² = 2
    a = torch.tensor([[0.0], [2.0]])
    assert fvu(a, torch.ones_like(a), "fvu_a") == 1.0
    assert fvu(a, torch.ones_like(a), "fvu_uncentered") == pytest.approx(2 / 4)


def test_leading_dims_and_mask():
    x, xh = data(n=6 * 32, d=8, offset=1.0)
    x3, h3 = x.reshape(6, 32, 8), xh.reshape(6, 32, 8)
    mask = torch.rand(6, 32, generator=torch.Generator().manual_seed(1)) > 0.3
    keep = mask.reshape(-1)
    assert fvu(x3, h3, "fvu_a", mask=mask) == pytest.approx(
        ref_fvu(x[keep].numpy(), xh[keep].numpy(), "fvu_a"), rel=1e-12
    )
    ids = torch.arange(6)[:, None].expand(6, 32)
    assert fvu(x3, h3, "fvu_b", mask=mask, batch_ids=ids) == pytest.approx(
        ref_fvu(x[keep].numpy(), xh[keep].numpy(), "fvu_b", ids.reshape(-1)[keep].numpy()),
        rel=1e-12,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_exact_at_offset_1e4(dtype):
    """Low-precision input with a mean of 1e4 agrees with a float64 two-pass reference on
    the same (rounded) values to 1e-9 relative, for every preset, streamed in 7 batches."""
    g = torch.Generator().manual_seed(3)
    # spread well above bfloat16's grid step at 1e4 (64), so the rounded data still varies
    x = (1e4 + torch.randn(4096, 32, generator=g) * 300).to(dtype)
    xh = (x.double() + 150 * torch.randn(4096, 32, generator=g, dtype=torch.float64)).to(dtype)
    xn, hn = x.double().numpy(), xh.double().numpy()
    ids = torch.arange(4096) * 7 // 4096
    acc = FVUAccumulator("all")
    for b in range(7):
        acc.update(x[ids == b], xh[ids == b])
    streamed = acc.compute()
    for name in PRESETS:
        ref = ref_fvu(xn, hn, name, ids.numpy())
        assert abs(streamed[name] - ref) <= 1e-9 * abs(ref), (name, streamed[name], ref)
        whole = fvu(x, xh, name, batch_ids=ids)
        assert abs(whole - ref) <= 1e-9 * abs(ref), (name, whole, ref)


# ------------------------------------------------------------------------ accumulator


def _split(n: int, cuts: list[int]) -> list[slice]:
    edges = [0] + sorted(set(c for c in cuts if 0 < c < n)) + [n]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


@settings(max_examples=40, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 199), max_size=8),
    seed=st.integers(0, 10_000),
    offset=st.sampled_from([0.0, 10.0, 1000.0]),
)
def test_any_partition_equals_functional(cuts, seed, offset):
    x, xh = data(n=200, d=5, offset=offset, seed=seed)
    slices = _split(200, cuts)
    ids = torch.empty(200, dtype=torch.long)
    acc = FVUAccumulator("all")
    for i, sl in enumerate(slices):
        ids[sl] = i
        acc.update(x[sl], xh[sl])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FVUWarning)  # a 1-token batch: batch-centred NaN
        got = acc.compute()
        want = fp.fvu_many(x, xh, list(got), batch_ids=ids)
    for name in got:
        if any(sl.stop - sl.start == 1 for sl in slices) and name in (
            "fvu_b",
            "sparsify",
            "dictionary_learning",
        ):
            assert math.isnan(got[name]) and math.isnan(want[name]), name
            continue
        assert got[name] == pytest.approx(want[name], rel=1e-10, abs=1e-14), name
    # pooled / per-dim / global definitions do not depend on the split at all
    for name in ("fvu_a", "fvu_per_dim", "sklearn_evs", "fvu_uncentered", "openai_nmse"):
        assert got[name] == pytest.approx(fvu(x, xh, name), rel=1e-10), name


@settings(max_examples=30, deadline=None)
@given(perm=st.permutations(list(range(6))), seed=st.integers(0, 1000))
def test_merge_order_and_batch_permutation(perm, seed):
    x, xh = data(n=240, d=4, offset=50.0, seed=seed)
    parts = []
    for i in range(6):
        a = FVUAccumulator("all")
        a.update(x[40 * i : 40 * (i + 1)], xh[40 * i : 40 * (i + 1)])
        parts.append(a)
    left = FVUAccumulator("all")
    for i in range(6):
        left.merge(parts[i])
    # a tree merge in a permuted order
    shuffled = [parts[i] for i in perm]
    t1 = FVUAccumulator("all").merge(shuffled[0]).merge(shuffled[1]).merge(shuffled[2])
    t2 = FVUAccumulator("all").merge(shuffled[3]).merge(shuffled[4]).merge(shuffled[5])
    tree = t2.merge(t1)
    a, b = left.compute(), tree.compute()
    for name in a:
        assert a[name] == pytest.approx(b[name], rel=1e-10, abs=1e-14), name


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(2, 30), min_size=1, max_size=6), seed=st.integers(0, 999))
def test_fvu_b_is_legacy_token_for_token(sizes, seed):
    """fvu_b == mean over all tokens of SAEBench's per-token legacy ratio, computed the way
    SAEBench computes it (per-batch mean, torch.cat of per-token tensors, .mean())."""
    n = sum(sizes)
    x, xh = data(n=n, d=6, offset=2.0, seed=seed)
    per_token = []
    acc = FVUAccumulator("fvu_b")
    start = 0
    for s in sizes:
        bx, bh = x[start : start + s], xh[start : start + s]
        per_token.append(1 - (bx - bh).pow(2).sum(-1) / (bx - bx.mean(0)).pow(2).sum(-1))
        acc.update(bx, bh)
        start += s
    legacy = float(torch.cat(per_token).mean())
    assert 1 - acc.compute()["fvu_b"] == pytest.approx(legacy, rel=1e-12)


def test_state_dict_roundtrip_and_mismatch(tmp_path):
    x, xh = data(offset=4.0)
    acc = FVUAccumulator(["fvu_a", "fvu_b", "sparsify"])
    acc.update(x[:100], xh[:100])
    torch.save(acc.state_dict(), tmp_path / "s.pt")
    back = FVUAccumulator(["fvu_a", "fvu_b", "sparsify"])
    back.load_state_dict(torch.load(tmp_path / "s.pt"))
    back.update(x[100:], xh[100:])
    acc.update(x[100:], xh[100:])
    assert back.compute() == acc.compute()
    other = FVUAccumulator(["fvu_a"])
    with pytest.raises(ValueError, match="saved for definitions"):
        other.load_state_dict(acc.state_dict())
    bad = acc.state_dict()
    bad["state"] = bad["state"][:-3]
    with pytest.raises(ValueError, match="state vector must be float64"):
        FVUAccumulator(["fvu_a", "fvu_b", "sparsify"]).load_state_dict(bad)
    with pytest.raises(ValueError, match="Cannot merge accumulators tracking"):
        FVUAccumulator(["fvu_a", "fvu_b", "sparsify"]).merge(other)


# ------------------------------------------------------------------ degenerate / bad input


def test_zero_variance_gives_nan_with_warning():
    x = torch.ones(10, 3)
    with pytest.warns(FVUWarning, match="Zero"):
        assert math.isnan(fvu(x, x + 1, "fvu_a"))
    with pytest.warns(FVUWarning):
        assert math.isnan(fvu(x, x, "fvu_b"))


def test_per_dim_partial_zero_variance_follows_sklearn():
    x, xh = data(n=50, d=4)
    x[:, 1] = 3.0
    xh[:, 1] = 3.0  # perfectly reconstructed constant dim
    x[:, 2] = -1.0  # badly reconstructed constant dim
    with pytest.warns(FVUWarning, match="zero variance"):
        got = fvu(x, xh, "fvu_per_dim")
    assert 1 - got == pytest.approx(r2_score(x.numpy(), xh.numpy()), rel=1e-12)


def test_nan_inf_rejected_and_state_kept():
    x, xh = data(n=20, d=3)
    acc = FVUAccumulator("fvu_a")
    acc.update(x[:10], xh[:10])
    before = acc.compute()
    bad = x[10:].clone()
    bad[2, 1] = float("nan")
    bad[3, 0] = float("inf")
    with pytest.raises(ValueError, match="2 NaN/inf entries in x"):
        acc.update(bad, xh[10:])
    assert acc.compute() == before and acc.n_tokens == 10
    with pytest.raises(ValueError, match="NaN/inf"):
        fvu(bad, xh[10:])


def test_shape_dtype_mask_errors():
    x, xh = data(n=8, d=3)
    with pytest.raises(ValueError, match=r"x has shape \(8, 3\) but x_hat has shape \(8, 2\)"):
        fvu(x, xh[:, :2])
    with pytest.raises(TypeError, match="torch.int64"):
        fvu(x.long(), xh)
    with pytest.raises(ValueError, match="mask has shape"):
        fvu(x, xh, mask=torch.ones(7, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a bool"):
        fvu(x, xh, mask=torch.ones(8))
    with pytest.raises(ValueError, match="batch_ids has shape"):
        fvu(x, xh, "fvu_b", batch_ids=torch.zeros(3, dtype=torch.long))
    acc = FVUAccumulator()
    acc.update(x, xh)
    with pytest.raises(ValueError, match="width d=2 but this accumulator holds d=3"):
        acc.update(x[:, :2], xh[:, :2])


def test_empty_and_fully_masked_batches():
    x, xh = data(n=30, d=3, offset=2.0)
    acc = FVUAccumulator(["fvu_a", "sparsify"])
    with pytest.raises(ValueError, match="No tokens"):
        acc.compute()
    acc.update(x[:0], xh[:0])
    acc.update(x[:10], xh[:10], mask=torch.zeros(10, dtype=torch.bool))
    assert acc.n_batches == 0
    acc.update(x[10:], xh[10:])
    assert acc.n_batches == 1
    assert acc.compute()["sparsify"] == pytest.approx(ref_fvu(x[10:], xh[10:], "sparsify"))
    with pytest.raises(ValueError, match="No tokens"):
        fvu(x, xh, mask=torch.zeros(30, dtype=torch.bool))


def test_unknown_names_and_registry():
    with pytest.raises(fp.UnknownDefinitionError, match="fvu_a, fvu_b"):
        fp.get_definition("fvu_c")
    with pytest.raises(ValueError, match="Unknown explained-variance definition 'nope'"):
        FVUAccumulator(["fvu_a", "nope"])
    with pytest.raises(ValueError, match="built-in preset"):
        fp.register_definition("fvu_a", FVUDefinition(reduce="pooled", center="batch"))
    defn = FVUDefinition(reduce="pooled", center="batch")
    fp.register_definition("test_pooled_batch", defn)
    try:
        x, xh = data(n=90, d=3, offset=9.0)
        ids = torch.arange(90) // 30
        num = sum(float((x[ids == b] - xh[ids == b]).pow(2).sum()) for b in range(3))
        den = sum(float((x[ids == b] - x[ids == b].mean(0)).pow(2).sum()) for b in range(3))
        assert fvu(x, xh, "test_pooled_batch", batch_ids=ids) == pytest.approx(num / den)
        assert "test_pooled_batch" in FVUAccumulator("all").names
    finally:
        fp.DEFINITIONS.unregister("test_pooled_batch")
    with pytest.raises(ValueError, match="center_residual=True needs"):
        FVUDefinition(reduce="pooled", center="none", center_residual=True)


def test_non_streamable_refused_but_functional_works():
    fp.register_definition("test_tok_global", FVUDefinition(reduce="per_token", center="global"))
    try:
        with pytest.raises(ValueError, match="cannot be streamed"):
            FVUAccumulator(["test_tok_global"])
        assert "test_tok_global" not in FVUAccumulator("all").names
        x, xh = data(n=64, d=3, offset=1.0)
        ids = torch.arange(64) // 16
        want = float(((x - xh) ** 2).sum(1).div(((x - x.mean(0)) ** 2).sum(1)).mean())
        assert fvu(x, xh, "test_tok_global", batch_ids=ids) == pytest.approx(want, rel=1e-12)
    finally:
        fp.DEFINITIONS.unregister("test_tok_global")


def test_no_warning_on_clean_data():
    x, xh = data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fp.fvu_many(x, xh, "all")


def test_all_reduce_two_processes_gloo(tmp_path):
    import socket

    import torch.multiprocessing as mp
    from _dist_worker import run

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    g = torch.Generator().manual_seed(0)
    x = 100 + torch.randn(300, 6, generator=g, dtype=torch.float64)
    xh = x + torch.randn(300, 6, generator=g, dtype=torch.float64)
    ids = torch.tensor([0] * 50 + [1] * 150 + [2] * 100)
    results = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    assert results[0]["result"] == results[1]["result"]  # identical on every rank
    assert results[0]["n"] == 300
    for name, value in results[0]["result"].items():
        assert value == pytest.approx(
            ref_fvu(x.numpy(), xh.numpy(), name, ids.numpy()), rel=1e-12
        ), name
