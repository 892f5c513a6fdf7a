"""The shared vocabulary of the runner and the method plug-ins: a :class:`Point` (one model
of an experiment), what its fit gets (:class:`FitInput`) and cache keys."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import registry


def key_of(*parts: Any) -> str:
    """A short, stable hash of JSON-serialisable parts (cache keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Point:
    """One model of an experiment: a method with its parameters, on a layer and a source."""

    method: str
    params: tuple[tuple[str, Any], ...]
    layer: int
    source: str = "real"  # "real" or "gaussian"

    @classmethod
    def of(cls, method: str, layer: int, source: str = "real", **params: Any) -> Point:
        return cls(method, tuple(sorted(params.items())), layer, source)

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def name(self) -> str:
        label = registry.get(self.method).label(self.param_dict)
        return f"L{self.layer}-{self.source}-{self.method}-{label}"

    def sibling(self, method: str, **params: Any) -> Point:
        """Another method's point on the same layer and source."""
        return Point.of(method, self.layer, self.source, **params)

    @property
    def base(self) -> Point | None:
        """The point whose fit this one starts from (its method's ``reuses``: the k-means
        codebook of a top-1 SAE), or None."""
        reuses = registry.get(self.method).reuses
        if reuses is None:
            return None
        method, params = reuses(self.param_dict)
        return self.sibling(method, **params)


@dataclass
class FitInput:
    """What a method's fit function gets. ``fitted(point)`` returns another point's SAE
    (fitted once per experiment and cached), e.g. the k-means codebook a top-1 SAE uses."""

    point: Point
    params: dict[str, Any]
    acts: Any  # (N, d) fit activations
    val: Any  # (M, d) held-out validation activations, or None
    cfg: Any  # the experiment's config
    options: Any  # KMeansOptions shared by every k-means fit
    provenance: Any  # Provenance, or None for the Gaussian control
    metadata: dict[str, Any]
    device: str
    fitted: Callable[[Point], Any]
    progress: bool


def select_methods(pts: list[Point], methods: list[str]) -> list[Point]:
    """The points of ``methods`` only (all of them when it is empty, as ``--methods``
    says); an unknown name is an error that lists the registered methods."""
    if not methods:
        return pts

    unknown = [name for name in methods if name not in registry.METHODS]
    if unknown:
        raise ValueError(
            f"--methods {' '.join(unknown)}: no such method; choose from "
            f"{', '.join(registry.METHODS)}."
        )
    kept = [p for p in pts if p.method in set(methods)]
    if not kept:
        raise ValueError(
            f"--methods {' '.join(methods)} selects none of this grid's points (their "
            f"methods: {', '.join(sorted({p.method for p in pts}))})."
        )
    return kept
