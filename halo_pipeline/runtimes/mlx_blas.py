"""The BLAS MLX's matrix products run on, chosen before MLX is imported (its own module so that a worker
process can choose it without importing the runtime: MLX's CPU wheel on Linux links the reference BLAS;
see `halo_pipeline.runtimes.mlx`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

BLAS_ENV = "HALO_PIPELINE_MLX_BLAS"  # a BLAS library to load for MLX on Linux; "reference": keep MLX's own


@functools.cache
def use_fast_blas() -> str | None:
    """On Linux, before MLX is first imported: load an optimized BLAS (`$HALO_PIPELINE_MLX_BLAS`, else the
    system's OpenBLAS) with its symbols global, so MLX's matrix products bind to it rather than to the
    reference BLAS its wheel ships. Once per process; returns the library loaded (None: MLX keeps its own)."""
    if sys.platform != "linux":
        return None
    named = os.environ.get(BLAS_ENV)
    chosen = named or ctypes.util.find_library("openblas")
    if not chosen or chosen == "reference":
        return None
    if "mlx.core" in sys.modules:  # too late: MLX bound its BLAS when it was loaded
        logging.getLogger(__name__).warning("MLX was imported before %s could be loaded: it keeps its reference BLAS", chosen)
        return None
    try:
        ctypes.CDLL(chosen, mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        if named:
            raise RuntimeError(f"{BLAS_ENV}={chosen}: cannot load it ({e}); unset it, or set it to 'reference'") from e
        raise RuntimeError(
            f"the system's OpenBLAS ({chosen}): cannot load it ({e}); set {BLAS_ENV}=reference, or to another library"
        ) from e
    return chosen
