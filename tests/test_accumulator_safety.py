"""The accumulator against bad and adversarial use: constant data in every dtype, tampered
or inconsistent state dicts, double counting (self-merge, a second merge, a second
all_reduce), mismatched ranks, many threads, refused updates and invalid settings."""

from __future__ import annotations

import math
import socket
import threading

import numpy as np
import pytest
import torch

import sae_fvu_plugin as fp
from sae_fvu_plugin import FVUAccumulator, FVUDefinition, FVUWarning


@pytest.mark.parametrize("value", [0.1, 123.456])
def test_constant_float64_data_is_zero_variance_in_every_dtype(value):
    g = torch.Generator().manual_seed(0)
    const = torch.full((64, 4), value, dtype=torch.float64)
    noisy = const + 0.1 * torch.randn(64, 4, generator=g, dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        with pytest.warns(FVUWarning, match="Zero total variance"):
            assert math.isnan(fp.fvu(const.to(dtype), noisy.to(dtype), "fvu_a"))
    x = torch.randn(64, 4, generator=g, dtype=torch.float64)
    x[:, 2] = value  # one constant dimension
    xh = x + 0.1 * torch.randn(64, 4, generator=g, dtype=torch.float64)
    with pytest.warns(FVUWarning, match="1 of 4 dimensions have zero variance"):
        per_dim = fp.fvu(x, xh, "fvu_per_dim")
    dims = [
        float(((x[:, i] - xh[:, i]) ** 2).sum() / ((x[:, i] - x[:, i].mean()) ** 2).sum())
        for i in (0, 1, 3)
    ]
    assert per_dim == pytest.approx((sum(dims) + 1.0) / 4, rel=1e-12)  # sklearn's force_finite: 1


# ---------------------------------------------------------- 9. tampered state


def test_tampered_state_dicts_are_refused_and_nothing_changes():
    acc = FVUAccumulator(["fvu_a", "fvu_b"], bootstrap=8)
    acc.update(torch.randn(4, 5, 3), torch.randn(4, 5, 3))
    good = acc.state_dict()
    target = FVUAccumulator(["fvu_a", "fvu_b"], bootstrap=8)
    target.update(torch.randn(2, 5, 3), torch.randn(2, 5, 3))
    before = target.compute()

    def tampered(edit):
        s = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in good.items()}
        edit(s)
        return s

    cases = [
        (lambda s: s.pop("state"), "missing keys"),
        (lambda s: s.update(format=99), "format 99"),
        (lambda s: s["state"].__setitem__(0, -20.0), "token count"),
        (lambda s: s["state"].__setitem__(0, 20.5), "token count"),
        (lambda s: s["state"].__setitem__(5, float("nan")), "NaN/inf"),
        (lambda s: s.update(state=s["state"][:-1]), "float64 of"),
        (lambda s: s["replicates"].__setitem__(0, -3.0), "non-negative integers"),
        (lambda s: s.update(bootstrap=4), "bootstrap=4"),
        (lambda s: s.update(next_unit=-1), "next_unit"),
        (lambda s: s["state"].__setitem__(10, -5.0), "negative sums of squares"),
    ]
    for edit, match in cases:
        with pytest.raises(ValueError, match=match):
            target.load_state_dict(tampered(edit))
        assert target.compute() == before
    with pytest.raises(ValueError, match="expected a dict"):
        target.load_state_dict("nope")  # type: ignore[arg-type]


# ------------------------------------------------------- 10. merge / all_reduce


def test_merge_self_is_refused_and_all_reduce_without_group_is_a_no_op():
    acc = FVUAccumulator("fvu_a")
    acc.update(torch.randn(10, 3), torch.randn(10, 3))
    with pytest.raises(ValueError, match="count every token twice"):
        acc.merge(acc)
    before = acc.compute()
    acc.all_reduce()  # one process is a world of one
    acc.all_reduce()
    assert acc.compute() == before and acc.n_tokens == 10


def test_all_reduce_with_mismatched_ranks_raises_the_same_error_everywhere(tmp_path):
    import torch.multiprocessing as mp
    from _dist_worker import run_mismatch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run_mismatch, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"mm{r}.pt") for r in range(2))
    assert r0["msg"] == r1["msg"] and "ranks' accumulators differ" in r0["msg"]
    assert (
        "rank 0: definitions ['fvu_a']" in r0["msg"]
        and "rank 1: definitions ['fvu_b']" in r0["msg"]
    )
    assert "already called" in r0["twice"] and r0["n"] == 20


# ------------------------------------------------------ 11. definitions re-validated


def test_bypassed_validation_and_bad_names_are_caught():
    bogus = FVUDefinition.model_construct(
        reduce="pooled", center="bogus", center_residual=False, formula="standard", description=""
    )
    copied = fp.DEFINITIONS["fvu_a"].model_copy(update={"center": "bogus"})
    x = torch.randn(20, 3)
    for bad in (bogus, copied):
        with pytest.raises(ValueError, match="Invalid FVUDefinition"):
            fp.fvu(x, x, bad)
        with pytest.raises(ValueError, match="Invalid FVUDefinition"):
            fp.register_definition("bogus_def", bad)
        with pytest.raises(ValueError, match="Invalid FVUDefinition"):
            FVUAccumulator(bad)
    ok = FVUDefinition(reduce="pooled", center="batch")
    for name in ("a\n", "x" * 65, "9abc", "all"):
        with pytest.raises(ValueError, match="not valid"):
            fp.register_definition(name, ok)
    fp.register_definition("x" * 64, ok)
    fp.DEFINITIONS.unregister("x" * 64)


# ---------------------------------------------------- 12. one accumulator, threads


def test_one_accumulator_updated_from_eight_threads_loses_nothing():
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)) for _ in range(200)
    ]
    shared = FVUAccumulator(["fvu_a", "fvu_b"])

    def work(part):
        for xb, hb in part:
            shared.update(xb, hb)

    threads = [threading.Thread(target=work, args=(batches[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shared.n_batches == 200 and shared.n_tokens == 6400
    x = torch.cat([b[0] for b in batches]).double().numpy()
    xh = torch.cat([b[1] for b in batches]).double().numpy()
    from refs import ref_fvu

    assert shared.compute()["fvu_a"] == pytest.approx(ref_fvu(x, xh, "fvu_a"), rel=1e-12)


# ------------------------------------------------------------- 13. clearer errors


def test_clear_errors_and_accepted_inputs():
    with pytest.raises(ValueError, match="x is a scalar"):
        fp.fvu(torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"1-D.*reshape\(1, -1\)"):
        fp.fvu(torch.randn(5), torch.randn(5))
    big = torch.full((4, 3), 1e200, dtype=torch.float64)
    big[0, 0] = -1e200
    with pytest.raises(ValueError, match=r"Values up to 1e\+200.*overflow float64"):
        fp.fvu(big, big * 0.5)
    x = torch.randn(50, 4)
    # mixed float dtypes are accepted: both are promoted to float64 exactly
    assert fp.fvu(x.half(), x.float(), "fvu_a") == pytest.approx(
        float(
            ((x.half().double() - x.double()) ** 2).sum()
            / ((x.half().double() - x.half().double().mean(0)) ** 2).sum()
        ),
        rel=1e-9,
    )
    acc = FVUAccumulator([fp.DEFINITIONS["fvu_b"], "fvu_a"])
    assert acc.names == ["fvu_b", "fvu_a"]
    streaming = [n for n in fp.DEFINITIONS if fp.DEFINITIONS[n].streamable]
    assert list(FVUAccumulator("all").names) == streaming == fp.DEFINITIONS.resolve("all")


# --------------------------------------------------------------- 14. new preset


def test_pooled_residual_centred_preset_matches_sklearn_and_torchmetrics_formula():
    from sklearn.metrics import explained_variance_score

    g = torch.Generator().manual_seed(1)
    x = 5 + torch.randn(300, 6, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, 6)
    xh = x + 0.3 + 0.4 * torch.randn(300, 6, generator=g, dtype=torch.float64)  # biased
    want = explained_variance_score(x.numpy(), xh.numpy(), multioutput="variance_weighted")
    assert fp.explained_variance(x, xh, "fvu_a_evs") == pytest.approx(want, rel=1e-12)
    assert fp.explained_variance(x, xh, "fvu_a") < want  # fvu_a charges the bias
    assert np.isfinite(want)


def test_a_refused_update_changes_nothing():
    """A NaN batch is refused and the unit numbering does not advance: the intervals and
    the pairing equal those of an accumulator that never saw it."""
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(4, 8, 6, generator=g) + 3 for _ in range(3)]
    h = [t + 0.5 * torch.randn(t.shape, generator=g) for t in x]
    a = FVUAccumulator(["fvu_a", "fvu_b"], bootstrap=50, seed=1)
    b = FVUAccumulator(["fvu_a", "fvu_b"], bootstrap=50, seed=1)
    bad = h[1].clone()
    bad[0, 0, 0] = float("nan")
    for i in range(3):
        if i == 1:
            with pytest.raises(ValueError, match="NaN"):
                a.update(x[i], bad)
        a.update(x[i], h[i])
        b.update(x[i], h[i])
    assert a.confidence_interval() == b.confidence_interval()
    assert a.pairing_problem(b) == ""
    assert a.state_dict()["next_unit"] == b.state_dict()["next_unit"] == 12


def test_a_second_merge_of_the_same_accumulator_is_refused():
    parts = [FVUAccumulator("fvu_a") for _ in range(2)]
    parts[0].update(torch.randn(1000, 4), torch.randn(1000, 4))
    parts[1].update(torch.randn(1000, 4), torch.randn(1000, 4))
    total = FVUAccumulator("fvu_a").merge(parts[0]).merge(parts[1])
    assert total.n_tokens == 2000
    with pytest.raises(ValueError, match="count every token twice"):
        total.merge(parts[1])
    assert total.n_tokens == 2000
    copy = FVUAccumulator("fvu_a")
    copy.load_state_dict(parts[0].state_dict())
    with pytest.raises(ValueError, match="count every token twice"):
        parts[0].merge(copy)  # the same tokens, restored from a state dict


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("batch_tokens", [1000, 5], "disagree with batch_tokens"),
        ("dtypes", "abc", "dtypes must be a list"),
        ("reduced", "no", "reduced must be True or False"),
        ("unit_hash", "zz", "unit_hash must be an int"),
        ("next_unit", -1, "next_unit must be an int"),
    ],
)
def test_inconsistent_state_fields_are_refused(field, value, match):
    acc = FVUAccumulator("fvu_a", bootstrap=10)
    acc.update(torch.randn(1000, 4), torch.randn(1000, 4))
    state = acc.state_dict()
    state[field] = value
    fresh = FVUAccumulator("fvu_a", bootstrap=10)
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(state)
    assert fresh.n_tokens == 0


def test_a_token_count_that_disagrees_with_the_batches_is_refused():
    acc = FVUAccumulator("fvu_a")
    acc.update(torch.randn(1000, 4), torch.randn(1000, 4))
    state = acc.state_dict()
    state["state"] = state["state"].clone()
    state["state"][0] = 1e9  # the token count
    with pytest.raises(ValueError, match="disagree with batch_tokens"):
        FVUAccumulator("fvu_a").load_state_dict(state)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bootstrap=1), "bootstrap=1 cannot give an interval"),
        (dict(seed=2**70), r"seed must be an int in \[0, 2\*\*63\)"),
        (dict(seed=-1), "seed must be an int"),
    ],
)
def test_settings_are_checked_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FVUAccumulator("fvu_a", **kwargs)
