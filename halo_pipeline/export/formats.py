"""One quant vocabulary across export formats, and how a model directory says what it is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORMATS = ("gguf", "mlx", "hf")
QUANTS = ("q4", "q8", "fp16", "bf16", "fp32")

# (format, quant) -> what the format's own tool is asked for. Anything missing is unsupported.
QUANT_TABLE: dict[str, dict[str, dict[str, Any]]] = {
    "gguf": {
        "q4": {"gguf_type": "Q4_K_M", "bits": 4.8},
        "q8": {"gguf_type": "Q8_0", "bits": 8.5},
        "fp16": {"gguf_type": "F16", "bits": 16},
        "bf16": {"gguf_type": "BF16", "bits": 16},
        "fp32": {"gguf_type": "F32", "bits": 32},
    },
    "mlx": {
        "q4": {"q_bits": 4, "q_group_size": 64, "bits": 4.5},
        "q8": {"q_bits": 8, "q_group_size": 64, "bits": 8.5},
        "fp16": {"dtype": "float16", "bits": 16},
        "bf16": {"dtype": "bfloat16", "bits": 16},
        "fp32": {"dtype": "float32", "bits": 32},
    },
    "hf": {
        "fp16": {"dtype": "float16", "bits": 16},
        "bf16": {"dtype": "bfloat16", "bits": 16},
        "fp32": {"dtype": "float32", "bits": 32},
    },
}
LOSSINESS = ("fp32", "fp16", "bf16", "q8", "q4")  # an export is as lossy as the lossiest step in its lineage
TORCH_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
EXPORT_FILE = "halo_export.json"  # written into every converted model: format, quant, source digest, converter


def pair_problem(fmt: str, quant: str) -> str | None:
    """None when the format supports the quant, else a message listing what it does support."""
    if fmt not in QUANT_TABLE:
        return f"unknown format '{fmt}'; formats: {', '.join(FORMATS)}"
    if quant not in QUANT_TABLE[fmt]:
        return f"format '{fmt}' does not support quant '{quant}'; it supports: {', '.join(QUANT_TABLE[fmt])}"
    return None


def table_rows() -> list[tuple[str, str, str]]:
    """(format, quant, what it becomes) for `convert --list` and the docs."""
    rows = []
    for fmt, quants in QUANT_TABLE.items():
        for quant, spec in quants.items():
            if "gguf_type" in spec:
                what = f"GGUF {spec['gguf_type']}"
            elif "q_bits" in spec:
                what = f"MLX {spec['q_bits']}-bit, group {spec['q_group_size']}"
            else:
                what = f"{'MLX' if fmt == 'mlx' else 'safetensors'} {spec['dtype']}"
            rows.append((fmt, quant, f"{what} (~{spec['bits']} bits/weight)"))
    return rows


def gguf_file(path: Path) -> Path | None:
    """The GGUF file a path is or holds (a converted model directory holds exactly one)."""
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
    return None


def export_info(path: Path) -> dict[str, Any]:
    """What a model path is: its halo_export.json when converted here, else inferred from its files."""
    if path.is_dir() and (path / EXPORT_FILE).is_file():
        return dict(json.loads((path / EXPORT_FILE).read_text()))
    beside = path.with_name(path.name + "." + EXPORT_FILE)  # a single-file GGUF export carries its record beside it
    if path.is_file() and path.suffix == ".gguf" and beside.is_file():
        return dict(json.loads(beside.read_text()))
    if gguf_file(path):
        return {"format": "gguf"}
    if path.is_dir() and (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        if "quantization" in config:  # mlx_lm's quantized checkpoints; transformers cannot load them
            return {"format": "mlx", "quant": f"q{config['quantization'].get('bits', 4)}"}
        return {"format": "hf"}
    return {"format": "unknown"}


def lossiest(*quants: str | None) -> str:
    return max((q for q in quants if q in LOSSINESS), key=LOSSINESS.index, default="fp32")


def gguf_context_length(path: Path) -> int | None:
    """The context length a GGUF model was trained with (its metadata), without loading the weights."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    arch_field = fields.get("general.architecture")
    if arch_field is None:
        return None
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
    field = fields.get(f"{arch}.context_length")
    return None if field is None else int(field.parts[field.data[0]][0])
