"""Names of the hardware a measurement ran on (``cpu:<model name>``, ``cuda:<device name>``)."""

from __future__ import annotations

import platform
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_device() -> str:
    """Device string of this CPU, as measured profilers report it: ``cpu:<model name>``."""
    return f"cpu:{cpu_name()}"


def cuda_device(index: int | None = None) -> str:
    """Device string of a CUDA GPU: ``cuda:<device name>``."""
    idx = torch.cuda.current_device() if index is None else index
    return f"cuda:{torch.cuda.get_device_name(idx)}"


__all__ = ["cpu_device", "cpu_name", "cuda_device"]
