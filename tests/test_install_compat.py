"""sae-bench 0.6.0 pins datasets < 4, whose formatters ask torchvision for ``VideoReader``;
torchvision ≥ 0.26 removed it, so a plain install next to SAEBench failed in SAELens's
``ActivationsStore``. The real ``datasets`` formatter is run against a torchvision module
as those releases ship it (``torchvision.io`` without ``VideoReader``): no matching CPU
torchvision is installable on this machine, so that one module is simulated."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import datasets.config
import pytest
import torch
from datasets.formatting.torch_formatter import TorchFormatter

from sae_fvu_plugin import _compat


def _torchvision_without_videoreader(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    tv = types.ModuleType("torchvision")
    tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    tv.__path__ = []
    io = types.ModuleType("torchvision.io")
    io.__spec__ = importlib.machinery.ModuleSpec("torchvision.io", None)
    tv.io = io  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.io", io)
    monkeypatch.setattr(datasets.config, "TORCHVISION_AVAILABLE", True)
    monkeypatch.setattr(_compat, "_done", False)
    return io


def test_datasets_formats_tokens_beside_a_torchvision_without_videoreader(monkeypatch):
    io = _torchvision_without_videoreader(monkeypatch)
    fmt = TorchFormatter()
    with pytest.raises(ImportError, match="VideoReader"):  # the bug, as a user met it
        fmt._tensorize([1, 2, 3])
    _compat.ensure_datasets_can_format()
    out = fmt._tensorize([1, 2, 3])
    assert torch.equal(out, torch.tensor([1, 2, 3]))
    assert not isinstance(out, io.VideoReader)
    with pytest.raises(RuntimeError, match="removed in torchvision 0.26"):
        io.VideoReader("clip.mp4")


def test_a_working_videoreader_is_left_alone(monkeypatch):
    io = _torchvision_without_videoreader(monkeypatch)

    class VideoReader:  # torchvision < 0.26 has its own
        pass

    io.VideoReader = VideoReader  # type: ignore[attr-defined]
    _compat.ensure_datasets_can_format()
    assert io.VideoReader is VideoReader


def test_without_torchvision_nothing_is_imported(monkeypatch):
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here")
    monkeypatch.setattr(_compat, "_done", False)
    _compat.ensure_datasets_can_format()
    assert "torchvision" not in sys.modules
