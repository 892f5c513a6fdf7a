"""Every figure in the README's Results section is read from the committed results of one
`make demo` run (docs/clustering_sweep/, docs/frontier/): the section is re-rendered from them and must be equal."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("readme_results", ROOT / "scripts/readme_results.py")
assert _spec is not None and _spec.loader is not None
rr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rr)


def test_readme_results_are_rendered_from_the_committed_results():
    sweep, frontier = rr.load()
    assert rr.current_section() == rr.render(sweep, frontier), (
        "README.md's Results differ from docs/*/results.json: run "
        "`python scripts/readme_results.py collect` after `make demo`"
    )


def test_a_changed_result_changes_the_readme():
    sweep, frontier = rr.load()
    row = rr._row(sweep, 15, "real", False, 16, 0)
    assert f"{row['ev_fvu_a']:.3f} ± " in rr.render(sweep, frontier)
    changed = copy.deepcopy(sweep)
    rr._row(changed, 15, "real", False, 16, 0)["ev_fvu_a"] += 0.01
    assert rr.render(changed, frontier) != rr.render(sweep, frontier)
    f2 = copy.deepcopy(frontier)
    f2["summary"]["3"]["vs_kmeans_at_equal_d_sae"][0]["paired_ci"][0] -= 0.01
    assert rr.render(sweep, f2) != rr.render(sweep, frontier)


def test_the_committed_plots_and_results_are_those_the_readme_names():
    text = (ROOT / "README.md").read_text()
    for exp, plots in rr.PLOTS.items():
        assert (ROOT / "docs" / exp / "results.json").is_file()
        for plot in plots:
            assert (ROOT / "docs" / exp / plot).is_file(), plot
            assert f"docs/{exp}/{plot}" in text, plot


def test_the_committed_frontier_carries_the_floor_with_its_replicates():
    """docs/frontier/results.json is the demo's whole file: summary.floor pairs each TopK
    k = 1 with the top-1 SAE on the centroids, and each interval is recomputed from the rows'
    bootstrap replicates."""
    from sae_fvu_plugin.experiments.frontier_summary import rows_paired_interval

    _, frontier = rr.load()
    rows = {r["name"]: r for r in frontier["rows"]}
    floor = frontier["summary"]["floor"]
    assert {f["sae"].split("-")[2] for f in floor} == {"topk", "topk_kmeans_init"}
    for f in floor:
        sae, rep = rows[f["sae"]], rows[f["representable"]]
        d = f["definition"]
        assert f["difference"] == sae[f"ev_{d}"] - rep[f"ev_{d}"]
        assert (f["ci_low"], f["ci_high"]) == rows_paired_interval(sae, rep, d)


def test_a_cached_rerun_keeps_the_minutes_of_the_run_that_computed(tmp_path):
    import json

    from sae_fvu_plugin.experiments.runner import _minutes_computed

    prev = tmp_path / "results.json"
    assert _minutes_computed(prev, 0.1, []) == 0.1  # nothing recorded before
    prev.write_text(json.dumps({"minutes": 5.7}))
    assert _minutes_computed(prev, 0.1, []) == 5.7  # everything cached: carried forward
    prev.write_text(json.dumps({"minutes": 0.1, "minutes_computed": 5.7}))
    assert _minutes_computed(prev, 0.1, []) == 5.7
    assert _minutes_computed(prev, 3.0, ["a point"]) == 3.0  # computed now


def _speedup(result):
    return result.get("machine", {}).get("sae_speedup", 1.0)


def test_the_printed_estimates_match_the_committed_run():
    """The estimates' rates were calibrated on a demo run on 2 AMD EPYC cores; scaled by the
    machine factor the committed run recorded (its machine's matmul timing against those
    cores), SAE training by its recorded bfloat16-autocast speedup, each is within 25 % of
    the minutes that run took."""
    from sae_fvu_plugin.experiments import frontier, sweep

    sw, fr = rr.load()
    for est, result in (
        (sweep.estimate_minutes(sweep.SweepConfig()), sw),
        (frontier.estimate_minutes(frontier.FrontierConfig(), None, (), _speedup(fr)), fr),
    ):
        took = rr._minutes(result)
        est *= result["machine"]["factor"]
        assert abs(est - took) <= 0.25 * took, (est, took)


def test_the_original_scale_section_is_rendered_from_its_committed_results():
    """README's "At the original experiment's scale" is rendered from
    docs/original-scale/results.json (a `sae-fvu reproduce` run), the original's numbers
    beside ours, and a changed number changes it."""
    result = rr.load_original()
    sweep, frontier = rr.load()
    text = rr.render_original(result, sweep, frontier)
    assert rr.current_section(rr.ORIGINAL_BEGIN, rr.ORIGINAL_END) == text, (
        "README.md's original-scale section differs from docs/original-scale/: run "
        "`python scripts/readme_results.py collect-original` after `make reproduce`"
    )
    for name in rr.ORIGINAL_FILES:
        assert (rr.ORIGINAL_DIR / name).is_file(), name
    ran = [t for t in result["original"] if t["fvu_a"] is not None]
    assert ran, "no model of the original's table has run"
    for t in ran:
        assert f"{t['original']:.4f}" in text and f"{t['fvu_a']:.4f}" in text
    changed = copy.deepcopy(result)
    changed["rows"][0]["ev_fvu_a"] += 0.01
    assert rr.render_original(changed, sweep, frontier) != text


def test_the_original_scale_saes_and_their_floor_are_in_its_section():
    """Each SAE of docs/original-scale/ appears with its `fvu_a` ± and `fvu_b`, and each
    floor comparison (SAE minus the top-1 SAE on the centroids, paired) with its difference,
    recomputed from the rows' bootstrap replicates."""
    from sae_fvu_plugin.experiments.frontier_summary import rows_paired_interval

    result = rr.load_original()
    text = " ".join(rr.render_original(result, *rr.load()).split())
    saes = [r for r in result["rows"] if r["family"] == "sae" and r["source"] == "real"]
    assert saes, "docs/original-scale/ holds no SAE"
    for r in saes:
        assert f"{rr.f(r['ev_fvu_a'])} ± {rr.f(rr.half(r))} / {rr.f(r['ev_fvu_b'])}" in text
    rows = {r["name"]: r for r in result["rows"]}
    floor = [x for x in result["summary"]["floor"] if x["definition"] == "fvu_a"]
    assert floor
    for x in floor:
        assert rr.sig(x["difference"], 4) in text
        sae, rep = rows[x["sae"]], rows[x["representable"]]
        assert (x["ci_low"], x["ci_high"]) == rows_paired_interval(sae, rep, "fvu_a")


def test_the_pca_grid_bullet_lists_every_n_pca_and_where_fvu_b_peaks():
    def row(method, n_pca, a, b):
        params = {"n_clusters": 4096 - n_pca} | ({"n_pca": n_pca} if n_pca else {})
        return {
            "method": method, "layer": 3, "d_sae": 4096, "params": params,
            "ev_fvu_a": a, "ev_fvu_b": b,
        }  # fmt: skip

    rows = [row("kmeans", 0, 0.94, 0.86), row("pca_kmeans", 10, 0.95, 0.90)]
    assert rr._pca_bullets(rows) == []  # one PCA + k-means model is no grid
    rows.append(row("pca_kmeans", 100, 0.96, 0.88))
    (text,) = rr._pca_bullets(rows)
    assert "layer 3, 4,096 latents" in text
    assert "0: 0.940 / 0.860; 10: 0.950 / 0.900; 100: 0.960 / 0.880" in text
    assert "peaks at n_pca 10 (0.900)" in text


def test_the_not_run_list_names_each_method_and_the_gaussian_control():
    from sae_fvu_plugin.experiments.points import Point

    todo = [
        Point.of("kmeans", 3, "real", n_clusters=16_384),
        Point.of("topk", 3, "real", d_sae=4096, k=2),
        Point.of("topk", 15, "real", d_sae=4096, k=2),
        Point.of("kmeans", 3, "gaussian", n_clusters=4096),
    ]
    assert rr._not_run(todo) == "TopK ×2, k-means at 16,384 ×1, the Gaussian control ×1"


def test_matching_pursuit_is_set_against_topk_at_the_same_l0():
    """Each L0 > 1 codebook model of the committed original-scale run is compared with the
    TopK SAE of the same L0, paired over the same tokens (the interval from both rows'
    bootstrap replicates)."""
    from sae_fvu_plugin.experiments.frontier_summary import rows_paired_interval

    rows = [r for r in rr.load_original()["rows"] if r["source"] == "real"]
    text = "\n".join(rr._clustering_vs_topk(rows))
    pairs = 0
    for r in rows:
        if r["method"] != "kmeans_mp":
            continue
        m = r["params"]["steps"]
        (t,) = [
            t for t in rows
            if t["layer"] == r["layer"] and t["method"] == "topk" and t["params"]["k"] == m
        ]  # fmt: skip
        lo, hi = rows_paired_interval(r, t, "fvu_a")
        assert lo <= r["ev_fvu_a"] - t["ev_fvu_a"] <= hi
        assert f"{m} steps against TopK k = {m}: {rr.sig(r['ev_fvu_a'] - t['ev_fvu_a'], 4)} " in (
            text.replace("\n  ", " ")
        )
        pairs += 1
    assert pairs == 6


def test_the_gaussian_control_is_one_clause_per_family_and_layer():
    """The Gaussian-control rows of the committed original-scale run: a family's several
    models (TopK k 1–128) in one clause in the order of L0, a single model by its name,
    each against the same model on the real activations."""
    result = rr.load_original()
    rows = [r for r in result["rows"] if r["source"] == "real"]
    gauss = [r for r in result["rows"] if r["source"] == "gaussian"]
    text = rr._gaussian_words(gauss, rows)
    topk = sorted(
        (g for g in gauss if g["method"] == "topk" and g["layer"] == 3), key=lambda g: g["l0"]
    )
    # (BatchTopK and Matryoshka BatchTopK have clauses of their own)
    assert len(topk) >= 2 and len(re.findall(r"(?<![A-Za-z])TopK at layer 3", text)) == 1
    assert " / ".join(rr.f(g["ev_fvu_a"]) for g in topk) in text
    km = next(g for g in gauss if g["method"] == "kmeans")
    assert f"k-means at layer 3: {rr.f(km['ev_fvu_a'])}" in text
    assert rr._gaussian_words([], rows) == ""


def test_collecting_a_part_of_the_grid_cannot_drop_committed_models(tmp_path):
    """`collect-original` after a run of one part of the grid (its results.json holds only
    that part) is refused before anything is copied: the committed models would vanish
    from docs/original-scale/ and the README."""
    committed = rr.load_original()
    part = dict(committed, rows=committed["rows"][:1])
    (tmp_path / "results.json").write_text(json.dumps(part))
    for name in rr.ORIGINAL_FILES[1:]:
        (tmp_path / name).write_text("x")
    before = (rr.ORIGINAL_DIR / "results.json").read_bytes()
    with pytest.raises(SystemExit, match=f"lacks {len(committed['rows']) - 1} of the committed"):
        rr.collect_original(tmp_path)
    assert (rr.ORIGINAL_DIR / "results.json").read_bytes() == before


def test_rows_computed_on_another_machine_are_named_with_it():
    """A gathered grid whose parts ran on different machines says which models were
    computed elsewhere (their ``fit_seconds`` are that machine's), and counts imported rows
    whose machine no results.json recorded."""
    result = copy.deepcopy(rr.load_original())
    main = result["machine"]["name"]
    for r in result["rows"]:
        r["computed_on"] = main
    assert "except" not in rr._machine_words(result)
    result["rows"][0]["computed_on"] = "cpu|AMD EPYC ×2 threads|torch 2.13.0+cpu"
    said = rr._machine_words(result)
    assert (
        f"(except 1 model computed on AMD EPYC (2 threads): `{result['rows'][0]['name']}`)" in said
    )
    for r in result["rows"][:9]:
        r["computed_on"] = "cpu|AMD EPYC ×2 threads|torch 2.13.0+cpu"
    said = rr._machine_words(result)
    assert "(except 9 models computed on AMD EPYC (2 threads) (each row's `computed_on`" in said
    result["rows"][9]["computed_on"] = "cpu|AMD EPYC [avx512_bf16 avx512f avx2] ×2 threads|t"
    said = rr._machine_words(result)  # one model name, two CPUs: the features tell them apart
    assert (
        "(except 1 model computed on AMD EPYC (avx512_bf16, avx512f, avx2; 2 threads): "
        f"`{result['rows'][9]['name']}`; 9 models computed on AMD EPYC (2 threads) (each row's "
        in said
    )
    result["rows"][1]["imported_from"] = "earlier.json"
    assert "machine no results.json recorded" not in rr._imported(result)
    del result["rows"][1]["computed_on"]
    assert "(1 of them on a machine no results.json recorded)" in rr._imported(result)
