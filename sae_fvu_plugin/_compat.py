"""Install-level compatibility between the releases SAEBench 0.6 pins and today's torch.

``sae-bench`` 0.6.0 requires ``datasets`` < 4 and ``torchvision``. ``datasets`` 3.x formats
every value it hands out (SAELens's ``ActivationsStore`` reads tokens through it) with::

    if config.TORCHVISION_AVAILABLE and "torchvision" in sys.modules:
        from torchvision.io import VideoReader

``torchvision`` ≥ 0.26 (torch ≥ 2.11) no longer has ``torchvision.io.VideoReader`` outside
Meta's own build, so a plain ``pip install sae-bench==0.6.0`` today (torchvision 0.29) fails
in SAEBench's own core eval: ``ImportError: cannot import name 'VideoReader'``. The check
is only an ``isinstance`` test against a class that no longer exists; no value can be an
instance of it. :func:`ensure_datasets_can_format` gives ``torchvision.io`` a placeholder
class of that name (nothing is an instance of it), so the test answers "no" as it would
have. It touches nothing when torchvision is absent or still has ``VideoReader``, or when
``datasets`` ≥ 4 (which no longer asks).

A torchvision built for another torch (PyPI's CUDA build beside a CPU torch from a file)
fails to import at all (``operator torchvision::nms does not exist``) and takes
``transformers`` — hence TransformerLens — down with it; that is a broken install the
plugin cannot mend: :func:`ensure_datasets_can_format` warns once, naming the fix.
"""

from __future__ import annotations

import importlib.util
import warnings

_done = False


class InstallWarning(UserWarning):
    """The environment has a known problem (named, with its fix, in the message)."""


class _RemovedVideoReader:
    """Placeholder for ``torchvision.io.VideoReader`` (removed in torchvision 0.26): no
    object is an instance of it, which is the answer ``datasets`` 3.x needs."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError(
            "torchvision.io.VideoReader was removed in torchvision 0.26; sae_fvu_plugin "
            "only gives the name back so datasets < 4 can format values (see "
            "sae_fvu_plugin._compat). Decode video with torchcodec."
        )


def _datasets_major() -> int | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("datasets").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return None


def ensure_datasets_can_format() -> None:
    """Make ``datasets`` < 4 work beside ``torchvision`` ≥ 0.26 (see the module docstring).
    Idempotent and cheap after the first call; imports torchvision only when it is installed
    and ``datasets`` < 4 is (then ``transformers`` imports it anyway)."""
    global _done
    if _done:
        return
    _done = True
    if importlib.util.find_spec("torchvision") is None:
        return
    major = _datasets_major()
    if major is None or major >= 4:
        return
    try:
        import torchvision.io as tv_io
    except Exception as exc:  # a build for another torch raises RuntimeError, not ImportError
        import torch

        warnings.warn(
            f"torchvision is installed but fails to import beside torch {torch.__version__} "
            f"({type(exc).__name__}: {exc}); transformers, hence TransformerLens and SAELens, "
            "will fail too. Install the torchvision built for this torch (CPU: pip install "
            "torchvision --index-url https://download.pytorch.org/whl/cpu), or remove it "
            "(pip uninstall torchvision): nothing on SAEBench's core path needs it.",
            InstallWarning,
            stacklevel=2,
        )
        return
    if not hasattr(tv_io, "VideoReader"):
        tv_io.VideoReader = _RemovedVideoReader  # type: ignore[attr-defined]
