"""Which precision scores k-means distances: a short, cached calibration.

The labels do not depend on it — :class:`~sae_fvu_plugin.clustering.lloyd.Assigner`
certifies every label against the float64 argmin — only the speed does. bfloat16 matmuls
run 3.6–6× faster than float32 on CPUs with AMX and on GPUs with tensor cores, and slower
on CPUs without bfloat16 units; ``compute_dtype="auto"`` measures instead of guessing:
one (2048 × 577) · (577 × 1024) score matmul in each precision, best of 5, and bfloat16
is used where it is at least ``_MIN_GAIN`` × faster (the margin pays for rescoring the
rows near a tie). The result is kept per process and in ``calibration.json`` in the
package cache, per device, CPU or GPU model and torch version.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

_MIN_GAIN = 1.5
_NAMED = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
_SEEN: dict[str, dict[str, Any]] = {}


def unit_roundoff(dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    """The unit roundoff u of a matmul's inputs and output in ``dtype`` on ``device``: 2⁻⁸
    for bfloat16, 2⁻¹¹ for float16, 2⁻²⁴ for float32 (2⁻¹¹ when torch may run float32
    matmuls as TF32 / bfloat16: ``torch.get_float32_matmul_precision() != "highest"`` or,
    on CUDA, ``torch.backends.cuda.matmul.allow_tf32``), 2⁻⁵³ for float64."""
    if dtype == torch.float32:
        cuda = torch.device(device).type == "cuda"
        fast = torch.get_float32_matmul_precision() != "highest" or (
            cuda and torch.backends.cuda.matmul.allow_tf32
        )
        return 2.0**-8 if fast else 2.0**-24
    return float(torch.finfo(dtype).eps) / 2


def accumulation_roundoff(dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    """Unit roundoff of a matmul's accumulator: float32 for the half types (2⁻²⁴; on CUDA
    2⁻⁸ when ``allow_bf16/fp16_reduced_precision_reduction`` lets cuBLAS reduce in the
    half type), else the dtype's own."""
    if dtype in (torch.bfloat16, torch.float16):
        if torch.device(device).type == "cuda":
            m = torch.backends.cuda.matmul
            reduced = (
                m.allow_bf16_reduced_precision_reduction
                if dtype == torch.bfloat16
                else m.allow_fp16_reduced_precision_reduction
            )
            if reduced:
                return unit_roundoff(dtype)
        return 2.0**-24
    return unit_roundoff(dtype, device)


def resolve_score_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The score dtype for ``compute_dtype`` ``name`` on ``device`` ("auto": calibrated)."""
    if name in _NAMED:
        return _NAMED[name]
    if name != "auto":
        raise ValueError(f"compute_dtype must be 'auto' or one of {sorted(_NAMED)}, got {name!r}.")
    return _NAMED[calibration(device)["choice"]]


# the CPU features that decide float32 and bfloat16 matmul speed, strongest first
_MATMUL_FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name and, in brackets, which of the matmul features ``amx_bf16``,
    ``avx512_bf16``, ``avx512f`` and ``avx2`` it has (from ``/proc/cpuinfo``; the model
    name alone does not tell them apart: a cloud "AMD EPYC" may be AVX2-only or have
    AVX-512-BF16, and bfloat16 pays on one and not the other)."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for ln in f:  # the first processor's block is enough
                key, _, value = ln.partition(":")
                fields.setdefault(key.strip(), value.strip())
                if not ln.strip():
                    break
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "flags" not in fields:
        return name
    have = [f for f in _MATMUL_FLAGS if f in fields["flags"].split()]
    return f"{name} [{' '.join(have) or 'no ' + '/'.join(_MATMUL_FLAGS)}]"


def device_key(device: torch.device) -> str:
    """``"cpu|<CPU model> [<matmul features>] ×<threads> threads|torch <version>"`` (see
    :func:`cpu_name`) or ``"cuda|<GPU>|torch …"``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{cpu_name()} ×{torch.get_num_threads()} threads"
    return f"{device.type}|{name}|torch {torch.__version__}"


def time_best(fn: Callable[[], Any], device: torch.device, reps: int = 5) -> float:
    """Best of ``reps`` timings of ``fn()`` (after one warm-up call), in seconds."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return best


def measure(device: torch.device | str) -> dict[str, Any]:
    """Seconds of one score matmul (+ top-8) in float32 and bfloat16 on ``device``."""
    device = torch.device(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 577, generator=g).to(device)
    c = torch.randn(1024, 577, generator=g).to(device)
    bias = torch.randn(1024, generator=g).to(device)
    out: dict[str, Any] = {}
    for name, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        xd, cd, bd = x.to(dt), c.to(dt), bias.to(dt)  # the layout Assigner uses

        def score(xd: torch.Tensor = xd, cd: torch.Tensor = cd, bd: torch.Tensor = bd) -> Any:
            return torch.addmm(bd, xd, cd.T, alpha=-2).topk(8, dim=1, largest=False)

        try:
            out[name] = time_best(score, device)
        except RuntimeError:  # no bfloat16 matmul on this device
            out[name] = float("inf")
    out["gain"] = out["float32"] / out["bfloat16"]
    out["choice"] = "bfloat16" if out["gain"] >= _MIN_GAIN else "float32"
    return out


def calibration(device: torch.device | str) -> dict[str, Any]:
    """The cached calibration of ``device``'s k-means score matmul (measured on first use)."""
    return cached_calibration("", device, measure)


def cached_calibration(
    kind: str, device: torch.device | str, measure_fn: Callable[[torch.device], dict[str, Any]]
) -> dict[str, Any]:
    """``measure_fn(device)`` (a dict with a "choice" of "float32" or "bfloat16"), measured
    once per ``kind``, device, CPU or GPU model and torch version, kept per process and in
    ``calibration.json`` in the package cache."""
    device = torch.device(device)
    key = (f"{kind}|" if kind else "") + device_key(device)
    if key in _SEEN:
        return _SEEN[key]
    from ..data import cache_dir

    path = cache_dir() / "calibration.json"
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    stored = stored if isinstance(stored, dict) else {}
    entry = stored.get(key)
    if not (isinstance(entry, dict) and entry.get("choice") in _NAMED):
        entry = measure_fn(device)
        stored[key] = entry
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(stored, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache: measured again by the next process
    _SEEN[key] = entry
    return entry
