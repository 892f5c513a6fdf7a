"""Independent references for the tests: textbook float64 two-pass numpy formulas, one per
preset, written from the definitions' docstrings (never from the plugin's code)."""

from __future__ import annotations

import numpy as np


def ref_fvu(x: np.ndarray, xh: np.ndarray, name: str, ids: np.ndarray | None = None) -> float:
    """Textbook float64 two-pass formulas, written from DESIGN §1, one per preset."""
    x = np.asarray(x, np.float64)
    xh = np.asarray(xh, np.float64)
    r = x - xh
    ids = np.zeros(len(x), int) if ids is None else ids
    batches = [np.flatnonzero(ids == b) for b in np.unique(ids)]
    if name == "fvu_a":
        return float((r**2).sum() / ((x - x.mean(0)) ** 2).sum())
    if name == "fvu_per_dim":
        return float(np.mean((r**2).sum(0) / ((x - x.mean(0)) ** 2).sum(0)))
    if name == "fvu_a_evs":
        return float(((r - r.mean(0)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    if name == "sklearn_evs":
        return float(np.mean(((r - r.mean(0)) ** 2).sum(0) / ((x - x.mean(0)) ** 2).sum(0)))
    if name == "fvu_uncentered":
        return float((r**2).sum() / (x**2).sum())
    if name == "openai_nmse":
        return float(np.mean((r**2).sum(1) / (x**2).sum(1)))
    if name == "fvu_b":
        ratios = [(r[b] ** 2).sum(1) / ((x[b] - x[b].mean(0)) ** 2).sum(1) for b in batches]
        return float(np.concatenate(ratios).mean())
    if name == "sparsify":
        return float(
            np.mean([(r[b] ** 2).sum() / ((x[b] - x[b].mean(0)) ** 2).sum() for b in batches])
        )
    if name == "dictionary_learning":
        return float(np.mean([r[b].var(0).sum() / x[b].var(0).sum() for b in batches]))
    if name == "saebench_0_6":
        d = x.shape[1]
        s = np.mean([(x[b] ** 2).sum(1).mean() for b in batches])
        rr = np.mean([(r[b] ** 2).sum(1).mean() for b in batches])
        return float(rr / (s - (s / d) ** 2))
    raise KeyError(name)
