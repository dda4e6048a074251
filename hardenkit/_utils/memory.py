"""Peak memory of this process (for reports)."""

from __future__ import annotations

import sys

import torch

__all__ = ["peak_memory_mb"]


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (``process_rss``) and, on CUDA, the peak
    memory allocated by torch on ``device`` since the last reset (``cuda_allocated``), in MiB.

    Example:
        >>> peak_memory_mb(torch.device("cpu"))["process_rss"] > 0
        True
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        peak: dict[str, float] = {}
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB (bytes on macOS)
        peak = {"process_rss": rss / (2**20 if sys.platform == "darwin" else 1024)}
    if device.type == "cuda":  # pragma: no cover - GPU only
        peak["cuda_allocated"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak
