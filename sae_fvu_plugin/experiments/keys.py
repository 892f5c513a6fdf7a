"""The cache keys of an experiment's stages, each a pure function of the configuration.

A leaf (config and registry only): the runner, the fits, the evaluator and the row import
(:mod:`.row_import`) compute the same key from the same settings, so a row computed
elsewhere under identical settings lands where a fresh run would have written it.

* ``data_key(cfg, layer)``: the activation rows of a layer (model, text, context size,
  token counts, seed, layer); every fit and evaluation of that layer is keyed under it;
* ``fit_key(cfg, point)``: a fitted SAE (the data key, the method, its parameters, the
  config fields the method names, its version and its base fit's when ≠ 1: :func:`versions`);
* ``eval_key(cfg, layer)``: the evaluations (row format, data key, eval settings);
* ``row_file(cfg, point)``: the file of a point's rows, ``{name}-{fit key}-{eval key}.json``.
"""

from __future__ import annotations

from typing import Any

from . import registry
from .points import Point, key_of

ROWS_FORMAT = 2  # bump when a result row gains fields, so cached rows are recomputed


def data_key(cfg: Any, layer: int) -> str:
    """The key of ``layer``'s activation rows under ``cfg``."""
    parts: list[Any] = [cfg.model, cfg.dataset, cfg.context_size, cfg.fit_tokens, cfg.val_tokens]
    if cfg.train_tokens:  # (keys of runs without training rows stay as they were)
        parts.append(["train", cfg.train_tokens])
    return key_of(*parts, cfg.seed, [layer])


def versions(cfg: Any, point: Point) -> dict[str, int]:
    """The versions ``point``'s fit carries under ``cfg`` (:func:`.registry.version`): its
    method's (``method_version``) and, for a fit that starts from another one
    (:attr:`.points.Point.base`, e.g. a top-1 SAE's k-means), that one's (``base_version``,
    only when ≠ 1). Rows record them; an imported row must match them."""
    out = {"method_version": registry.version(point.method, point.param_dict, cfg)}
    base = point.base
    if base is not None:
        base_version = registry.version(base.method, base.param_dict, cfg)
        if base_version != 1:
            out["base_version"] = base_version
    return out


def fit_key(cfg: Any, point: Point) -> str:
    """The key of ``point``'s fitted SAE under ``cfg``."""
    m = registry.get(point.method)
    relevant = {name: getattr(cfg, name, None) for name in m.config_fields}
    # version 1 adds nothing, so the keys of fits that never changed stay as they were
    v = versions(cfg, point)
    later: list[Any] = [("version", v["method_version"])] if v["method_version"] != 1 else []
    if "base_version" in v:
        later.append(("base_version", v["base_version"]))
    return key_of(
        data_key(cfg, point.layer),
        point.method,
        point.params,
        point.layer,
        point.source,
        relevant,
        *later,
    )


def eval_settings(cfg: Any) -> list[Any]:
    """What changes an evaluation besides the data: batches, prompts, bootstrap, KL / CE."""
    return [
        cfg.eval_batches,
        cfg.batch_prompts,
        cfg.recon_batches,
        cfg.bootstrap,
        *([] if cfg.model_metrics else ["no-kl-ce"]),
    ]


def eval_key(cfg: Any, layer: int) -> str:
    """The key of ``layer``'s evaluations under ``cfg``."""
    return key_of(ROWS_FORMAT, data_key(cfg, layer), *eval_settings(cfg))


def row_file(cfg: Any, point: Point) -> str:
    """The file name of ``point``'s cached rows under ``cfg`` (in ``out/rows/``)."""
    return f"{point.name}-{fit_key(cfg, point)}-{eval_key(cfg, point.layer)}.json"
