"""LoRA adapters of the tiny model for the serving tests, one per engine format, all the same weights."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

TARGETS = ["q_proj", "v_proj", "o_proj"]


def make_loras(base: Path, root: Path) -> dict[str, dict[str, Path]]:
    """{"a1": {"hf": peft_dir, "gguf": file, "mlx": dir}, "a2": {...}}: random (non-zero) LoRA weights, so
    each adapter visibly changes the greedy output."""
    out: dict[str, dict[str, Path]] = {}
    for seed, name in enumerate(("a1", "a2"), start=1):
        peft_dir = root / name / "peft"
        if not (peft_dir / "adapter_config.json").is_file():
            _peft(base, peft_dir, seed)
        gguf = root / name / "adapter.gguf"
        if not gguf.is_file():
            _gguf(peft_dir, base, gguf, root / "converter")
        mlx = root / name / "mlx"
        if not (mlx / "adapters.safetensors").is_file():
            _mlx(peft_dir, mlx)
        out[name] = {"hf": peft_dir, "gguf": gguf, "mlx": mlx}
    return out


def _peft(base: Path, out: Path, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)  # random B: not a no-op
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), config).save_pretrained(out)


def _gguf(peft_dir: Path, base: Path, out: Path, work: Path) -> None:
    """llama.cpp's convert_lora_to_gguf.py (from the llama-cpp-python sdist, next to the model converter)."""
    from halo_pipeline.export.gguf import ensure_converter, llama_version, sdist_dir

    script = work / "convert_lora_to_gguf.py"
    if not script.is_file():
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(ensure_converter(), work)
        version = llama_version()
        with tarfile.open(sdist_dir() / f"llama_cpp_python-{version}.tar.gz") as tar:
            member = tar.getmember(f"llama_cpp_python-{version}/vendor/llama.cpp/convert_lora_to_gguf.py")
            member.name = script.name
            tar.extract(member, work, filter="data")
    cmd = [sys.executable, str(script), str(peft_dir), "--base", str(base), "--outfile", str(out), "--outtype", "f32"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def _mlx(peft_dir: Path, out: Path) -> None:
    """The same weights as mlx-lm's LoRA layers: y = W x + scale * (x @ lora_a) @ lora_b, lora_a = A^T, lora_b = B^T."""
    import mlx.core as mx
    from safetensors.numpy import load_file

    config = json.loads((peft_dir / "adapter_config.json").read_text())
    weights = load_file(str(peft_dir / "adapter_model.safetensors"))
    converted = {}
    for key, value in weights.items():  # base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
        module = key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
        which = "lora_a" if ".lora_A." in key else "lora_b"
        converted[f"{module}.{which}"] = mx.array(value.T.copy())
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), converted)
    layers = 1 + max(int(k.split(".layers.")[1].split(".")[0]) for k in converted)
    lora = {"rank": config["r"], "scale": config["lora_alpha"] / config["r"], "dropout": 0.0, "keys": [f"self_attn.{t}" for t in TARGETS]}
    (out / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "lora", "num_layers": layers, "lora_parameters": lora}))
