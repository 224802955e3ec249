"""What a model path is: an HF directory, a GGUF file (or a directory holding one), or an MLX directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EXPORT_FILE = "halo_export.json"  # written into every converted model: format, quant, source digest, converter


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


def model_format(path: Path) -> str:
    """hf | gguf | mlx | unknown."""
    return str(export_info(path)["format"])


def is_adapter(path: Path) -> bool:
    """A PEFT adapter directory (its base model is needed to run it)."""
    return path.is_dir() and (path / "adapter_config.json").is_file()


def adapter_base_ref(adapter: Path) -> Any:
    """The base model an adapter was trained on, as it records it: the model reference in its provenance (a
    train step's), else PEFT's base_model_name_or_path; None when it records neither."""
    provenance = adapter / "halo_provenance.json"
    if provenance.is_file() and (base := json.loads(provenance.read_text()).get("base")):
        return base
    config = adapter / "adapter_config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("base_model_name_or_path") or None
    return None


def recorded_base_fingerprint(adapter: Path) -> Any:
    """The base model's fingerprint a train step recorded with its adapter (None: it recorded none)."""
    provenance = adapter / "halo_provenance.json"
    return json.loads(provenance.read_text()).get("base_fingerprint") if provenance.is_file() else None


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


def context_length(path: Path, default: int = 2048) -> int:
    """The context length a model was trained with, for any format."""
    gguf = gguf_file(path)
    if gguf is not None:
        return gguf_context_length(gguf) or default
    config = path / "config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_position_embeddings") or default)
    return default
