"""The frontier's summary: the original experiment's questions answered from result rows
(pure functions over rows: no model, no SAE)."""

from __future__ import annotations

import math
from typing import Any

from ..bootstrap import paired_interval
from .report import DEFS, aligned, half_width

Rows = list[dict[str, Any]]


def _curve(
    rows: list[dict[str, Any]], method: str, layer: int, defn: str
) -> list[tuple[float, float]]:
    pts = [
        (float(r["l0"]), float(r[f"ev_{defn}"]))
        for r in rows
        if r["method"] == method and r["layer"] == layer and r["source"] == "real" and r["l0"]
    ]
    return sorted(pts)


def l0_to_match(curve: list[tuple[float, float]], target: float) -> float | None:
    """Smallest L0 where the curve (explained variance vs L0, interpolated linearly in
    log L0) reaches ``target``; None if it never does."""
    prev: tuple[float, float] | None = None
    for l0, ev in curve:
        if ev >= target:
            if prev is None or prev[1] >= target:
                return l0
            f = (target - prev[1]) / (ev - prev[1])
            return float(math.exp(math.log(prev[0]) + f * (math.log(l0) - math.log(prev[0]))))
        prev = (l0, ev)
    return None


def _at(curve: list[tuple[float, float]], l0: float) -> float | None:
    """Explained variance at ``l0`` (log-linear interpolation inside the curve only)."""
    for (a, va), (b, vb) in zip(curve, curve[1:], strict=False):
        if a <= l0 <= b and b > a:
            f = (math.log(l0) - math.log(a)) / (math.log(b) - math.log(a))
            return va + f * (vb - va)
    for a, va in curve:
        if abs(a - l0) < 1e-9:
            return va
    return None


SAE_FAMILIES = ("topk", "batchtopk", "standard", "jumprelu", "matryoshka", "topk_kmeans_init")
# An SAE method and the clustering model it can represent exactly at the same d_sae: TopK
# with k = 1 (from any init) contains the top-1 SAE on the k-means centroids (encoder and
# decoder rows on the unit centroid directions, b_dec on the mean).
REPRESENTABLE = {("topk", 1): "kmeans_top1", ("topk_kmeans_init", 1): "kmeans_top1"}
RANKING_L0 = (1.0, 2.0, 4.0, 8.0, 16.0)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The original experiment's questions, per layer (real data, all tokens): per
    definition, the L0 at which each SAE family matches k-means and PCA + k-means, the
    ranking of methods at common L0, one line EV ≈ a + b·log2 L0 through every point; the
    ranking changes between fvu_a and fvu_b; each method against k-means at equal d_sae
    (paired interval)."""
    out: dict[str, Any] = {}
    floors = floor(rows)
    for layer in sorted({r["layer"] for r in rows if r["source"] == "real"}):
        real = [r for r in rows if r["layer"] == layer and r["source"] == "real"]
        by_def = {defn: by_definition(rows, real, layer, defn) for defn in DEFS}
        out[str(layer)] = {
            "by_definition": by_def,
            "ranking_changes_fvu_a_vs_fvu_b": ranking_changes(by_def),
            "vs_kmeans_at_equal_d_sae": vs_kmeans(real),
            "saes_plateaued": {r["name"]: r.get("plateaued") for r in real if r["family"] == "sae"},
        }
    if floors:
        out["floor"] = floors
    return out


def floor(rows: Rows) -> list[dict[str, Any]]:
    """Every SAE against the clustering model it can represent exactly (``REPRESENTABLE``),
    per layer and definition, on real data: the SAE's explained variance minus the
    clustering model's, with the paired 95 % interval (same tokens, same bootstrap
    weights). A trained SAE below its floor is undertrained, not a finding about SAEs."""
    out = []
    real = [r for r in rows if r["source"] == "real"]
    for r in real:
        rep = REPRESENTABLE.get((r["method"], r["params"].get("k")))
        if rep is None:
            continue
        other = next(
            (
                o
                for o in real
                if o["method"] == rep and o["layer"] == r["layer"] and o["d_sae"] == r["d_sae"]
            ),
            None,
        )
        if other is None:
            continue
        for defn in DEFS:
            lo, hi = rows_paired_interval(r, other, defn)
            out.append(
                {
                    "layer": r["layer"],
                    "definition": defn,
                    "sae": r["name"],
                    "representable": other["name"],
                    "difference": r[f"ev_{defn}"] - other[f"ev_{defn}"],
                    "ci_low": lo,
                    "ci_high": hi,
                }
            )
    return out


def by_definition(
    rows: list[dict[str, Any]], real: list[dict[str, Any]], layer: int, defn: str
) -> dict[str, Any]:
    """One layer's answers under one definition."""
    km = next((r[f"ev_{defn}"] for r in real if r["method"] == "kmeans"), None)
    pk = sorted(
        (r["params"]["n_pca"] + 1, r[f"ev_{defn}"]) for r in real if r["method"] == "pca_kmeans"
    )
    match = {}
    for fam in SAE_FAMILIES:
        curve = _curve(rows, fam, layer, defn)
        if curve:
            match[fam] = {
                "l0_to_match_kmeans": None if km is None else l0_to_match(curve, km),
                "l0_to_match_pca_kmeans": {str(l0): l0_to_match(curve, ev) for l0, ev in pk},
                "smallest_l0_tried": curve[0][0],
            }
    ranking = {}
    for g in RANKING_L0:
        vals = {}
        for method in {r["method"] for r in real}:
            v = _at(_curve(rows, method, layer, defn), g)
            if v is not None:
                vals[method] = v
        ranking[str(int(g))] = sorted(vals, key=lambda m: -vals[m])
    line, residuals = _line_with_residuals(real, defn)
    return {
        "kmeans": km,
        "match": match,
        "ranking": ranking,
        "line": line,
        "mean_residual_by_family": residuals,
    }


def _line_with_residuals(
    real: list[dict[str, Any]], defn: str
) -> tuple[dict[str, float] | None, dict[str, float]]:
    """One straight-ish line of explained variance against log2 L0 through every point, and
    each family's mean residual from it."""
    pts = [r for r in real if r["l0"] and r["l0"] > 0]
    line = _line([math.log2(float(r["l0"])) for r in pts], [float(r[f"ev_{defn}"]) for r in pts])
    residuals: dict[str, float] = {}
    if line is not None:
        for fam in ("clustering", "sae"):
            res = [
                float(r[f"ev_{defn}"])
                - (line["intercept"] + line["slope"] * math.log2(float(r["l0"])))
                for r in pts
                if r["family"] == fam
            ]
            if res:
                residuals[fam] = sum(res) / len(res)
    return line, residuals


def ranking_changes(by_def: dict[str, Any]) -> dict[str, Any]:
    """The common L0 values where fvu_a and fvu_b rank the methods differently."""
    changes = {}
    for g in by_def["fvu_a"]["ranking"]:
        a, b = by_def["fvu_a"]["ranking"][g], by_def["fvu_b"]["ranking"][g]
        if a != b:
            changes[g] = {"fvu_a": a, "fvu_b": b}
    return changes


def vs_kmeans(real: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every other method against k-means (L0 = 1) at equal d_sae, under fvu_a, with the
    paired interval of the difference (the same eval tokens and bootstrap weights)."""
    km_rows = [r for r in real if r["method"] == "kmeans"]
    if not km_rows:
        return []
    km_row = km_rows[0]
    out = []
    for r in real:
        if r["method"] != "kmeans" and r["d_sae"] == km_row["d_sae"]:
            diff = r["ev_fvu_a"] - km_row["ev_fvu_a"]
            lo, hi = rows_paired_interval(r, km_row, "fvu_a")
            out.append(
                {
                    "method": r["method"],
                    "family": r["family"],
                    "params": r["params"],
                    "l0": r["l0"],
                    "ev_fvu_a_minus_kmeans": diff,
                    "paired_ci": [lo, hi],
                    "beats_kmeans": lo > 0 if math.isfinite(lo) else diff > 0,
                }
            )
    return out


def rows_paired_interval(
    a: dict[str, Any], b: dict[str, Any], defn: str, level: float = 0.95
) -> tuple[float, float]:
    """Interval of EV(a) − EV(b) from two rows' paired bootstrap replicates
    (:func:`sae_fvu_plugin.bootstrap.paired_interval`); NaN without replicates."""
    ra = (a.get("ev_replicates") or {}).get(defn)
    rb = (b.get("ev_replicates") or {}).get(defn)
    if not ra or not rb or len(ra) != len(rb):
        return math.nan, math.nan
    ra, rb = ([math.nan if v is None else v for v in r] for r in (ra, rb))
    return paired_interval(a[f"ev_{defn}"] - b[f"ev_{defn}"], ra, rb, level)


def _line(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    n = len(xs)
    if n < 3:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    icpt = my - slope * mx
    ss_res = sum((y - icpt - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return {
        "intercept": icpt,
        "slope": slope,
        "r2": 1 - ss_res / ss_tot if ss_tot else math.nan,
        "n": n,
    }


def format_summary(summary: dict[str, Any]) -> str:
    lines = ["\nSummary (real data, held-out tokens):"]
    for layer, s in summary.items():
        if layer == "floor":
            continue
        lines.append(f" layer {layer}:")
        for defn in ("fvu_a", "fvu_b"):
            d = s["by_definition"][defn]
            km = d["kmeans"]
            lines.append(
                f"  {defn}: k-means (L0 = 1) explains {km:.4f}" if km is not None else f"  {defn}:"
            )
            for fam, m in d["match"].items():
                first = m.get("smallest_l0_tried")

                def said(v: float | None, first: float | None = first) -> str:
                    if v is None:
                        return "never (in range)"
                    return f"≤ {v:.1f}" if first is not None and v <= first else f"≈ {v:.1f}"

                pk = ", ".join(
                    f"PCA+k-means L0={k}: {said(v)}" for k, v in m["l0_to_match_pca_kmeans"].items()
                )
                lines.append(
                    f"    {fam:>9} matches k-means at L0 {said(m['l0_to_match_kmeans'])}; {pk}"
                )
            line = d["line"]
            if line:
                res = ", ".join(f"{k} {v:+.3f}" for k, v in d["mean_residual_by_family"].items())
                lines.append(
                    f"    line EV = {line['intercept']:.3f} + {line['slope']:.3f}·log2(L0) (R² {line['r2']:.2f}); "
                    f"mean residual: {res}"
                )
        ch = s["ranking_changes_fvu_a_vs_fvu_b"]
        lines.append(
            "  ranking of methods at L0 "
            + (
                ", ".join(ch) + " changes between fvu_a and fvu_b"
                if ch
                else "1–16: the same under fvu_a and fvu_b"
            )
        )
        lines.append(
            "  fvu_a minus k-means (L0 = 1) at equal d_sae, paired 95 % interval (same tokens):"
        )
        for b in s["vs_kmeans_at_equal_d_sae"]:
            lo, hi = b["paired_ci"]
            params = ",".join(
                f"{k}={v:g}" for k, v in b["params"].items() if k not in ("d_sae", "n_clusters")
            )
            lines.append(
                f"    {b['method']:<16} {params:<12} L0 {b['l0']:5.1f}: {b['ev_fvu_a_minus_kmeans']:+.4f} "
                f"[{lo:+.4f}, {hi:+.4f}]" + ("  better" if b["beats_kmeans"] else "")
            )
    if summary.get("floor"):
        lines.append(
            " SAE minus the clustering model it can represent (paired 95 % interval; below "
            "−0.002 = undertrained):"
        )
        for f in summary["floor"]:
            lines.append(
                f"  {f['definition']:<11} {f['sae']:<34} − {f['representable']:<28} "
                f"{f['difference']:+.4f} [{f['ci_low']:+.4f}, {f['ci_high']:+.4f}]"
            )
    return "\n".join(lines)


def format_table(rows: Rows) -> str:
    head = ["layer", "data", "method", "params", "L0", "fvu_a", "±", "fvu_b", "fvu_per_dim"]
    table = [head + ["SAEBench 0.6.0", "passes"]]

    def order(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["layer"], r["source"] != "real", r["family"], r["method"], r["l0"] or 0)

    for r in sorted(rows, key=order):
        params = ",".join(
            f"{k}={v:g}"
            for k, v in r["params"].items()
            if k not in ("d_sae", "n_clusters") or r["method"] == "residual_kmeans"
        )
        table.append(
            [
                str(r["layer"]),
                r["source"],
                r["method"],
                params,
                f"{r['l0']:.1f}" if r["l0"] is not None else "-",
                f"{r['ev_fvu_a']:.4f}",
                half_width(r, "fvu_a"),
                *(f"{r[f'ev_{d}']:.4f}" for d in DEFS[1:]),
                "-" if r.get("passes") is None else f"{r['passes']:.1f}",
            ]
        )
    return aligned(
        "\nExplained variance (1 − FVU) on held-out tokens, SAEBench core eval + plugin "
        "(± = half the 95 % interval)",
        table,
    )


CSV_COLUMNS = (
    "layer",
    "source",
    "method",
    "family",
    "params",
    "d_sae",
    "l0_nominal",
    "l0",
    "n_tokens",
    "tokens_seen",
    "passes",
    "fit_seconds",
    *(f"ev_{d}" for d in DEFS),
    "kl_div_score",
    "ce_loss_score",
    "cossim",
    "mse",
    "plateaued",
    "converged",
    "continuation_gain",
    "lr",
    "dead_latents",
    "dead_fraction",
    "dense_latents",
)
