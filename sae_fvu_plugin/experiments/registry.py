"""The method registry: a method is a name, a family, a fit function, its L0 and d_sae.

A leaf: it imports nothing of the package, so method plug-ins (``methods/``) and the runner
both import it and neither imports the other. Adding a method is one small module that
calls :func:`register` and is imported by ``methods/__init__.py`` (or by your own code
before the run)::

    register(Method(name="my_method", family="clustering", fit=my_fit,
                    l0=lambda p: 1, d_sae=lambda p: p["n_clusters"],
                    label=lambda p: f"k{p['n_clusters']}"))

``fit(inp: FitInput) -> SAE`` gets this point's parameters, the fit activations (and
held-out validation activations; a method with ``rows="train"`` gets the experiment's
SAE training rows instead, whose first rows are the fit rows), the shared k-means options and the provenance, and
returns any SAELens SAE whose ``cfg.metadata`` records ``tokens_seen`` and ``passes``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Method:
    name: str
    family: str  # "clustering" or "sae"
    fit: Callable[[Any], Any]
    l0: Callable[[dict[str, Any]], float | None]  # nominal L0 (None: measured only)
    d_sae: Callable[[dict[str, Any]], int]
    label: Callable[[dict[str, Any]], str]
    description: str = ""
    config_fields: tuple[str, ...] = field(default=("n_iter", "seed"))  # what changes its fit
    rows: str = "fit"  # "fit": the fit rows; "train": the (larger) SAE training rows
    version: int = 1  # raised when a fix changes what the fit returns: cached fits are redone
    # a version that depends on the point and the run (params, cfg) — a change that alters
    # some fits only (e.g. the seeding sample's floor) raises theirs and keeps the rest;
    # the larger of the two counts
    version_of: Callable[[dict[str, Any], Any], int] | None = None
    # the other method's fit this one starts from, (method, params) on the same layer and
    # source (e.g. the k-means codebook of a top-1 SAE): fitted first when not cached, and
    # costed with it by the time estimate
    reuses: Callable[[dict[str, Any]], tuple[str, dict[str, Any]]] | None = None


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS and METHODS[method.name] != method:
        raise ValueError(f"method {method.name!r} is already registered.")
    METHODS[method.name] = method
    return method


def version(name: str, params: dict[str, Any], cfg: Any) -> int:
    """The version of method ``name``'s fit of ``params`` under the run config ``cfg``:
    ``version``, or ``version_of(params, cfg)`` where larger. Cache keys and imported rows
    carry it, so a fit a fix changed is redone and the others are kept."""
    m = get(name)
    return max(m.version, m.version_of(params, cfg) if m.version_of is not None else 1)


def get(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; registered: {', '.join(METHODS) or 'none'} (import "
            "sae_fvu_plugin.experiments.methods to register the built-in ones)."
        ) from None
