"""sae-fvu-plugin: selectable, exact explained-variance (1 − FVU) definitions for SAEBench
and SAELens, and clustering baselines as SAEs.

The FVU core is importable from here; the integrations are explicit opt-ins:
``sae_fvu_plugin.saebench.enable()``, ``sae_fvu_plugin.saelens.enable()``;
``import sae_fvu_plugin.clustering`` registers the clustering SAE architectures.

Names are resolved on first use, so ``import sae_fvu_plugin`` (and the ``sae-fvu``
command's ``--help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS = {
    "FVUAccumulator": ".accumulator",
    "DEFINITIONS": ".definitions",
    "SAEBENCH_0_6": ".definitions",
    "DefinitionRegistry": ".definitions",
    "FVUDefinition": ".definitions",
    "UnknownDefinitionError": ".definitions",
    "get_definition": ".definitions",
    "register_definition": ".definitions",
    "explained_variance": ".functional",
    "fvu": ".functional",
    "fvu_many": ".functional",
    "FVUWarning": ".stats",
}

__all__ = [
    "DEFINITIONS",
    "SAEBENCH_0_6",
    "DefinitionRegistry",
    "FVUAccumulator",
    "FVUDefinition",
    "FVUWarning",
    "UnknownDefinitionError",
    "__version__",
    "explained_variance",
    "fvu",
    "fvu_many",
    "get_definition",
    "register_definition",
]

if TYPE_CHECKING:
    from .accumulator import FVUAccumulator
    from .definitions import (
        DEFINITIONS,
        SAEBENCH_0_6,
        DefinitionRegistry,
        FVUDefinition,
        UnknownDefinitionError,
        get_definition,
        register_definition,
    )
    from .functional import explained_variance, fvu, fvu_many
    from .stats import FVUWarning


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sae_fvu_plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
