"""sae-fvu-plugin: selectable, exact explained-variance (1 − FVU) definitions for SAEBench
and SAELens, and clustering baselines as SAEs.

The FVU core is importable from here; the integrations are explicit opt-ins:
``sae_fvu_plugin.saebench.enable()``, ``sae_fvu_plugin.saelens.enable()`` and
``sae_fvu_plugin.clustering.register()``.
"""

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

__version__ = "0.1.0"

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
