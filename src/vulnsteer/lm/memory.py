"""Peak memory of this process, for results files: GPU memory on CUDA, resident set size on the CPU."""

from __future__ import annotations

import sys
from typing import Any

import torch

__all__ = ["peak_memory", "reset_peak_memory", "weights_bytes"]

_GIB = 1024**3


def _peak_rss_bytes() -> int | None:
    """Peak resident set size of this process (``getrusage``: KiB on Linux, bytes on macOS); None on Windows."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024


def _cuda_devices(device: torch.device | str | None) -> list[int]:
    if device is not None:
        dev = torch.device(device)
        if dev.type != "cuda":
            return []
        return [dev.index if dev.index is not None else torch.cuda.current_device()]
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def peak_memory(device: torch.device | str | None = None) -> dict[str, Any]:
    """Peak memory so far: ``torch.cuda.max_memory_allocated`` summed over the CUDA devices in use (all visible
    ones, or *device*'s), else the process's peak resident set size.

    Returns ``{"kind": "cuda_max_allocated" | "cpu_peak_rss", "bytes", "gib", "per_device"}`` (``per_device``:
    ``{"cuda:0": bytes, ...}`` on CUDA, empty on the CPU; ``bytes`` None where the platform cannot tell).

    >>> info = peak_memory("cpu")
    >>> info["kind"], info["bytes"] is None or info["bytes"] > 0
    ('cpu_peak_rss', True)
    """
    devices = _cuda_devices(device) if torch.cuda.is_available() else []
    if devices:
        per_device = {f"cuda:{i}": int(torch.cuda.max_memory_allocated(i)) for i in devices}
        total: int | None = sum(per_device.values())
        kind = "cuda_max_allocated"
    else:
        per_device, total, kind = {}, _peak_rss_bytes(), "cpu_peak_rss"
    return {
        "kind": kind,
        "bytes": total,
        "gib": None if total is None else round(total / _GIB, 3),
        "per_device": per_device,
    }


def reset_peak_memory(device: torch.device | str | None = None) -> None:
    """Start a new GPU peak (``torch.cuda.reset_peak_memory_stats``); the CPU's peak RSS cannot be reset.

    >>> reset_peak_memory("cpu")  # nothing to do on the CPU
    """
    for index in _cuda_devices(device) if torch.cuda.is_available() else []:
        torch.cuda.reset_peak_memory_stats(index)


def weights_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (what "the weights" cost in memory).

    >>> weights_bytes(torch.nn.Linear(4, 2))  # 8 weights + 2 biases, float32
    40
    """
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)
