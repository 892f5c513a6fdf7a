"""Certified nearest-centroid assignment: every label equals the float64 argmin of the
direct distance ‖x − c‖², in every score precision, on data built to break a naive one
(a large offset, hundreds of rows within a hair of a tie, exact ties)."""

from __future__ import annotations

import pytest
import torch

from sae_fvu_plugin.clustering import fit_kmeans
from sae_fvu_plugin.clustering.lloyd import Assigner
from sae_fvu_plugin.clustering.precision import calibration, resolve_score_dtype

DTYPES = [torch.bfloat16, torch.float32, torch.float64]


def reference(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 direct distances (n, k): argmin (first index on ties) and the matrix."""
    dist = (x.double()[:, None, :] - c.double()[None]).square().sum(2)
    return dist.argmin(1), dist


def hard_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 rows at offset 1000: ordinary rows, 400 rows within ~1e-6 (relative) of
    the midpoint of two centroids, rows on a duplicated centroid pair (exact ties)."""
    g = torch.Generator().manual_seed(seed)
    k, d = 96, 48
    c = 1000.0 + torch.randn(k, d, generator=g, dtype=torch.float64)
    c[7] = c[3]  # an exact duplicate: rows nearest to it must get label 3
    plain = c[torch.randint(k, (600,), generator=g)] + 0.6 * torch.randn(
        600, d, generator=g, dtype=torch.float64
    )
    i, j = torch.randint(k, (400,), generator=g), torch.randint(k, (400,), generator=g)
    mid = (c[i] + c[j]) / 2 + 1e-4 * torch.randn(400, d, generator=g, dtype=torch.float64)
    on_dup = c[3] + 0.1 * torch.randn(50, d, generator=g, dtype=torch.float64)
    return torch.cat([plain, mid, on_dup]).float(), c


@pytest.mark.parametrize("score_dtype", DTYPES)
def test_labels_equal_the_float64_argmin_in_every_precision(score_dtype):
    x, c = hard_data()
    want, dist = reference(x, c)
    rows = Assigner(c, torch.float32, score_dtype).full(x)
    assert int((rows.labels != want).sum()) == 0
    assert bool((rows.labels[-50:] == 3).all())  # the tie goes to the lower index
    # Hamerly's bounds hold: upper ≥ own distance, lower ≤ distance to every other centroid
    own = dist.gather(1, want[:, None])[:, 0].sqrt()
    others = dist.scatter(1, want[:, None], float("inf")).min(1).values.sqrt()
    assert bool((rows.upper >= own * (1 - 1e-12)).all())
    assert bool((rows.lower <= others * (1 + 1e-12)).all())


def test_the_data_breaks_a_naive_low_precision_argmin():
    """Without the certificate, the same data gives wrong labels (the test above can fail)."""
    x, c = hard_data()
    want, _ = reference(x, c)
    for dt in (torch.bfloat16, torch.float32):
        naive = torch.addmm(c.square().sum(1).to(dt), x.to(dt), c.to(dt).T, alpha=-2).argmin(1)
        assert int((naive != want).sum()) > 10, dt


def test_rows_with_many_near_ties_are_rescored_a_level_up():
    """Every centroid within the bfloat16 bound of the row: candidates overflow the top-8
    and the row is settled in float32, then float64."""
    g = torch.Generator().manual_seed(1)
    d = 32
    base = torch.randn(d, generator=g, dtype=torch.float64)
    c = base + 1e-5 * torch.randn(
        40, d, generator=g, dtype=torch.float64
    )  # 40 near-equal centroids
    x = (base + 1e-5 * torch.randn(30, d, generator=g, dtype=torch.float64)).float()
    want, _ = reference(x, c)
    for dt in DTYPES:
        assigner = Assigner(c, torch.float32, dt)
        assert torch.equal(assigner.full(x).labels, want), dt
        # centroids 1e-5 apart: neither bfloat16 nor float32 resolves them, float64 does
        assert assigner.demoted == (dt != torch.float64)


def test_a_fit_is_identical_in_every_precision():
    """Certified labels make the whole fit independent of the score precision."""
    x, c = hard_data(2)
    fits = [
        fit_kmeans(x, 24, n_iter=6, seed=0, compute_dtype=name, progress=False)
        for name in ("bfloat16", "float32", "float64")
    ]
    for other in fits[1:]:
        assert torch.equal(other.W_enc, fits[0].W_enc)
        assert other.cfg.metadata.inertia == fits[0].cfg.metadata.inertia


def test_auto_precision_is_a_cached_measurement(tmp_path, monkeypatch):
    from sae_fvu_plugin.clustering import precision

    monkeypatch.setenv("SAE_FVU_CACHE", str(tmp_path))
    monkeypatch.setattr(precision, "_SEEN", {})  # forget this process's measurement
    cal = calibration("cpu")
    assert cal["choice"] in ("bfloat16", "float32")
    assert cal["float32"] > 0 and cal["bfloat16"] > 0
    assert (tmp_path / "calibration.json").is_file()
    precision._SEEN.clear()  # a new process reads the file instead of measuring again
    (tmp_path / "calibration.json").write_text(
        (tmp_path / "calibration.json").read_text().replace(f'"{cal["choice"]}"', '"float64"')
    )
    assert calibration("cpu")["choice"] == "float64"
    assert resolve_score_dtype("auto", "cpu") == torch.float64
    precision._SEEN.clear()
    assert resolve_score_dtype("float64", "cpu") == torch.float64
    with pytest.raises(ValueError, match="compute_dtype must be"):
        resolve_score_dtype("half", "cpu")
    with pytest.raises(ValueError, match="compute_dtype"):
        fit_kmeans(torch.randn(50, 4), 3, compute_dtype="fp8", progress=False)


def test_the_calibration_key_tells_cpus_of_one_model_name_apart(tmp_path):
    """Two "AMD EPYC"s, one AVX2-only and one with AVX-512-BF16, must not share a cached
    calibration (bfloat16 is 1.8× faster on one, 7× slower on the other)."""
    from sae_fvu_plugin.clustering.precision import cpu_name

    def info(name: str, flags: str) -> str:
        path = tmp_path / name
        block = f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu {flags} sse2\n\n"
        path.write_text(block + block.replace(": 0", ": 1"))
        return str(path)

    avx2 = cpu_name(info("a", "avx2 fma"))
    bf16 = cpu_name(info("b", "avx2 avx512f avx512_bf16"))
    assert avx2 == "AMD EPYC [avx2]"
    assert bf16 == "AMD EPYC [avx512_bf16 avx512f avx2]"
    assert cpu_name(info("c", "")) == "AMD EPYC [no amx_bf16/avx512_bf16/avx512f/avx2]"
    (tmp_path / "d").write_text("model name\t: Some CPU\n")  # no flags line: the name
    assert cpu_name(str(tmp_path / "d")) == "Some CPU"
    assert cpu_name(str(tmp_path / "missing"))  # not Linux: platform's name


@pytest.mark.parametrize("score_dtype", DTYPES)
def test_labels_and_bounds_hold_with_thousands_of_centroids(score_dtype):
    """At k ≥ 4,096 the top candidates come from group minima over padded centroid groups
    (4,200 is not a whole number of groups): the labels are still the float64 argmin,
    rows near a tie across two groups included, and the bounds hold."""
    from sae_fvu_plugin.clustering.lloyd import _group_size

    g = torch.Generator().manual_seed(5)
    k, d = 4200, 24
    assert _group_size(k) and k % _group_size(k)
    c = 50.0 + torch.randn(k, d, generator=g, dtype=torch.float64)
    plain = c[torch.randint(k, (300,), generator=g)] + 0.3 * torch.randn(
        300, d, generator=g, dtype=torch.float64
    )
    i, j = torch.randint(k, (300,), generator=g), torch.randint(k, (300,), generator=g)
    mid = (c[i] + c[j]) / 2 + 1e-5 * torch.randn(300, d, generator=g, dtype=torch.float64)
    x = torch.cat([plain, mid]).float()
    dist = torch.cdist(x.double(), c, compute_mode="donot_use_mm_for_euclid_dist").square()
    want = dist.argmin(1)
    rows = Assigner(c, torch.float32, score_dtype).full(x)
    assert int((rows.labels != want).sum()) == 0
    own = dist.gather(1, want[:, None])[:, 0].sqrt()
    others = dist.scatter(1, want[:, None], float("inf")).min(1).values.sqrt()
    assert bool((rows.upper >= own * (1 - 1e-12)).all())
    assert bool((rows.lower <= others * (1 + 1e-12)).all())


def test_the_grouped_top_candidates_equal_topk():
    from sae_fvu_plugin.clustering.lloyd import _smallest

    g = torch.Generator().manual_seed(0)
    s = torch.randn(300, 8192, generator=g).round(decimals=1)  # many exact ties
    for dt in (torch.bfloat16, torch.float32):
        v, i = _smallest(s.to(dt), 8, 128)
        w, _ = s.to(dt).topk(8, dim=1, largest=False)
        assert torch.equal(v, w)
        assert torch.equal(s.to(dt).gather(1, i), v)  # the columns hold those values


def test_the_reference_keeps_the_bfloat16_bound_tight_on_unclustered_data():
    """N(0, 1) rows against Lloyd centroids: with the scores taken less a per-row
    reference, the output's rounding no longer widens the bound, so few rows have more
    than 8 candidates (escalated) and fewer are rescored; with the bound that counted
    the output's rounding as u (‖c‖² + 2 ‖x‖ ‖c‖) 239 rows (1.5 %) escalated and 5,940
    (36 %) were rescored on these data."""
    g = torch.Generator().manual_seed(0)
    n, d, k = 16384, 128, 256
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    c = x[:k].clone()
    for _ in range(3):
        lab = torch.cdist(x, c).argmin(1)
        c = (
            torch.zeros_like(c).index_add_(0, lab, x)
            / torch.bincount(lab, minlength=k).clamp(min=1)[:, None]
        )
    a = Assigner(c, torch.float32, torch.bfloat16)
    rows = a.full(x.float())
    exact = torch.cdist(x.float().double(), c, compute_mode="donot_use_mm_for_euclid_dist")
    assert int((rows.labels != exact.argmin(1)).sum()) == 0
    assert not a.demoted
    assert a.counts["escalated"] <= 0.003 * n, a.counts  # 17 here
    assert a.counts["rescored"] <= 0.28 * n, a.counts  # 3,536 here
