"""Resource measurements reported in metrics.json."""

from __future__ import annotations

import resource
import sys

import torch


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process and, on GPU, peak allocated device memory."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux
    peaks = {"cpu_rss": round(rss_mb, 1)}
    if torch.cuda.is_available():
        peaks["cuda_allocated"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peaks
