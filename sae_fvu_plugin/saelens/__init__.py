"""``explained_variance_definition`` inside SAELens's own ``sae_lens.evals.run_evals``
(and every name SAELens binds it to: ``sae_lens.run_evals``, the training runners).

    from sae_lens import evals
    from sae_fvu_plugin import saelens as fvu_saelens

    fvu_saelens.enable()
    cfg = fvu_saelens.FVUEvalConfig(explained_variance_definition="fvu_b",
                                    compute_variance_metrics=True)
    metrics, _ = evals.run_evals(sae, activation_store, model, scaler, cfg)

SAELens's own ``explained_variance`` is ``fvu_a`` (float32 per-batch sums) and its
``explained_variance_legacy`` is ``fvu_b``. Modules: ``config``, ``patch``.
"""

from __future__ import annotations

from .._integration import UnsupportedVersionError
from .config import FVUEvalConfig
from .patch import SAELENS, FVUExplainedVarianceCalculator, check_upstream

__all__ = [
    "FVUEvalConfig",
    "FVUExplainedVarianceCalculator",
    "UnsupportedVersionError",
    "check_upstream",
    "disable",
    "enable",
    "enabled",
    "is_enabled",
]


# The opt-in itself: the same four functions for SAEBench and SAELens (one implementation,
# :class:`sae_fvu_plugin._integration.Integration`), bound to this library's patch.
enable = SAELENS.enable
disable = SAELENS.disable
is_enabled = SAELENS.is_enabled
enabled = SAELENS.enabled
