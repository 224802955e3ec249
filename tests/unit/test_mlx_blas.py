"""MLX on Linux computes its matrix products with the BLAS the process loaded first: ours loads OpenBLAS (or
the library named in HALO_PIPELINE_MLX_BLAS) before MLX, since the wheel's own reference BLAS gains nothing
from batching. Each case in a fresh interpreter: the choice is made once, before MLX is imported."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="MLX's reference-BLAS CPU wheel is Linux's"), pytest.mark.integration]

PROBE = """
import sys
from pathlib import Path
from halo_pipeline.runtimes.mlx import MLXRuntime
from halo_pipeline.runtimes import Sampling
rt = MLXRuntime(Path(sys.argv[1]))
texts, _ = rt.generate([[{"role": "user", "content": "Say hello."}]] * 3, Sampling(n=2, temperature=0, max_new_tokens=6))
maps = Path("/proc/self/maps").read_text()
print("openblas" if "/libopenblas" in maps else "reference", texts[0][0] == texts[2][1])
"""


@pytest.fixture(scope="module")
def tiny_mlx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from halo_pipeline.export.converting import convert
    from halo_pipeline.runtimes.catalog import build_tiny

    out = tmp_path_factory.mktemp("tiny-mlx")
    convert(build_tiny(), "mlx", "fp32", out)
    return out


def probe(model: Path, blas: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HALO_PIPELINE_MLX_BLAS"}
    if blas is not None:
        env["HALO_PIPELINE_MLX_BLAS"] = blas
    return subprocess.run([sys.executable, "-c", PROBE, str(model)], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(ctypes.util.find_library("openblas") is None, reason="no system OpenBLAS (apt: libopenblas0-pthread)")
def test_openblas_is_loaded_before_mlx_and_generation_still_agrees(tiny_mlx: Path) -> None:
    res = probe(tiny_mlx, None)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["openblas", "True"]  # and a prompt's greedy samples agree across the batch


def test_reference_keeps_mlx_own_blas(tiny_mlx: Path) -> None:
    res = probe(tiny_mlx, "reference")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["reference", "True"]


def test_a_blas_that_cannot_load_is_named_with_the_fix(tiny_mlx: Path) -> None:
    res = probe(tiny_mlx, "/nonexistent/libblas.so")
    assert res.returncode != 0
    assert "HALO_PIPELINE_MLX_BLAS=/nonexistent/libblas.so: cannot load it" in res.stderr
    assert "set it to 'reference'" in res.stderr
