"""Argument checks shared by every layer: each names the bad value, what was expected and
how to fix it. Imports nothing heavy (``--help`` stays fast).
"""

from __future__ import annotations

import difflib
import math
import operator
from typing import Any


class UsageError(ValueError):
    """A user error: the command line prints it as one line and exits with status 2."""


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an int (Python or numpy integers; bools and floats refused)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got the bool {value!r}.")
    try:
        out = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an integer, got {value!r} ({type(value).__name__})."
        ) from None
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {out}.")
    return int(out)


def check_float(name: str, value: Any, minimum: float | None = None) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        and not hasattr(value, "__float__")
    ):
        raise TypeError(f"{name} must be a number, got {value!r}.")
    out = float(value)
    if math.isnan(out) or (minimum is not None and out < minimum):
        raise ValueError(f"{name} must be a number ≥ {minimum}, got {value!r}.")
    return out


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}.{hint}")
    return str(value)


def resolve_device(device: str | None) -> str:
    """``device`` checked against what this torch reaches (one line naming the fix, not
    torch's assertion deep in the model load); None: CUDA where available, else CPU."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(
            f"--device {device!r} is not a torch device; pass cpu, cuda or cuda:N."
        ) from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UsageError(
                f"--device {device}: this torch ({torch.__version__}) sees no CUDA device; "
                "pass --device cpu, or leave --device out."
            )
        if dev.index is not None and dev.index >= n:
            raise UsageError(
                f"--device {device}: this machine has {n} CUDA device(s), cuda:0 … cuda:{n - 1}."
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available here; pass --device cpu.")
    return device


def is_tensor(value: Any) -> bool:
    """A torch tensor (checked without importing torch)."""
    return type(value).__name__ == "Tensor" and hasattr(value, "shape")
