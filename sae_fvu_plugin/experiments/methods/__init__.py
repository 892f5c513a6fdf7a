"""The built-in methods of the experiments, one plug-in module per kind: ``clustering``
(k-means, PCA + k-means, residual k-means, the k-means codebook as top-1 and matching
pursuit SAEs, k-lines) and ``saes`` (SAEs trained by SAELens). Each registers itself with
:mod:`sae_fvu_plugin.experiments.registry` on import; importing this package imports both.
A new method is one more module here (listed below) that calls ``register``."""

from . import clustering, saes

__all__ = ["clustering", "saes"]
