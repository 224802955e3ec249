"""Backend availability, checked at validate time without importing torch or mlx."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
from typing import Any


def available(backend: dict[str, Any]) -> str | None:
    """None when the backend can run here, else why not (with the fix)."""
    name = backend.get("name", "cpu")
    if name == "cpu":
        return None
    if name == "cuda":
        if os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi"):
            return None
        return "backend 'cuda' needs an NVIDIA GPU and driver, and none was found; use backend=cpu"
    if name == "rocm":
        return None if os.path.exists("/dev/kfd") else "backend 'rocm' needs an AMD GPU (/dev/kfd), and none was found; use backend=cpu"
    if name == "mps":
        ok = platform.system() == "Darwin" and platform.machine() == "arm64"
        return None if ok else "backend 'mps' needs Apple silicon (macOS arm64); use backend=cpu"
    if name == "mlx":
        return None if importlib.util.find_spec("mlx") else "backend 'mlx' needs the mlx package (pip install 'mlx[cpu]' mlx-lm on Linux)"
    return f"unknown backend '{name}'"
