"""Is an export broken? Its tensors against the source's, each within its own type's error bound.

Quantization moves every weight a little; a broken export (a zeroed, missing, truncated or foreign
tensor) moves one a lot. Every source tensor is looked up in the export (GGUF names through gguf's
tensor name map, MLX and HF by name), dequantized, and its relative error ||export - source|| / ||source||
held against the worst case its storage type allows. Where a converter changes a tensor's layout
(llama.cpp permutes Llama's q/k rows per head), the direct comparison is replaced by permutation-invariant
ones — the sorted row norms, the sorted column norms and the whole norm — which a bounded error also
bounds (sorting and taking norms never enlarge a difference).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from halo_pipeline.engine.groups import DTYPE_BOUNDS, GGUF_BOUNDS, UNKNOWN_TYPE_BOUND, quant

# Each storage type's worst-case relative error, and each quant's, come with the quants (engine/groups.py).
FLOOR = 1e-5  # float arithmetic of the comparison itself
Lookup = Callable[[str], "tuple[np.ndarray, str, str] | None"]  # source name -> (dequantized, storage type, export name)


def source_tensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 array) of an HF directory's safetensors, one tensor at a time."""
    from safetensors import safe_open

    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, f.get_tensor(name).float().numpy()


def compare(source: np.ndarray, export: np.ndarray, bound: float) -> dict[str, Any]:
    """One tensor: direct relative error, else (a changed layout) the permutation-invariant relative errors."""
    bound = max(bound, FLOOR)
    if source.shape != export.shape:
        return {"ok": False, "error": None, "bound": bound, "how": f"shape {list(export.shape)} != source {list(source.shape)}"}
    norm = float(np.linalg.norm(source)) or 1.0
    direct = float(np.linalg.norm(export - source)) / norm
    if direct <= bound:
        return {"ok": True, "error": direct, "bound": bound, "how": "direct"}
    if source.ndim == 2:  # the same weights in another row/column order (llama.cpp's q/k permutation)

        def spread(a: np.ndarray, b: np.ndarray) -> float:
            return float(np.linalg.norm(np.sort(a) - np.sort(b))) / norm

        invariant = max(
            spread(np.linalg.norm(export, axis=1), np.linalg.norm(source, axis=1)),
            spread(np.linalg.norm(export, axis=0), np.linalg.norm(source, axis=0)),
            abs(float(np.linalg.norm(export)) - norm) / norm,
        )
        if invariant <= bound:
            return {"ok": True, "error": invariant, "bound": bound, "how": "norms (layout permuted)"}
        return {"ok": False, "error": min(direct, invariant), "bound": bound, "how": "direct and norms"}
    return {"ok": False, "error": direct, "bound": bound, "how": "direct"}


def _gguf_lookup(path: Path) -> Lookup:
    from gguf import MODEL_ARCH_NAMES, GGUFReader, get_tensor_name_map
    from gguf.quants import dequantize

    reader = GGUFReader(path)

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.parts[f.data[0]]

    arch = bytes(field("general.architecture")).decode()
    by_name = {v: k for k, v in MODEL_ARCH_NAMES.items()}
    names = get_tensor_name_map(by_name[arch], int(field(f"{arch}.block_count")[0])) if arch in by_name else None
    tensors = {t.name: t for t in reader.tensors}

    def lookup(hf_name: str) -> tuple[np.ndarray, str, str] | None:
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias")) if names else None
        if gguf_name is None or gguf_name not in tensors:
            return None
        t = tensors[gguf_name]
        data = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
        if arch.startswith("gemma") and hf_name.endswith("norm.weight"):
            data = data - 1.0  # llama.cpp stores Gemma's RMSNorm weights as 1 + w (the model computes x * (1 + w))
        return data, t.tensor_type.name, gguf_name

    return lookup


def _safetensors_lookup(path: Path) -> Lookup:
    """HF and MLX exports keep the source's tensor names; MLX's quantized ones are unpacked and dequantized."""
    from safetensors import safe_open

    config = json.loads((path / "config.json").read_text())
    quant = config.get("quantization") or {}
    handles = {}
    for file in sorted(path.glob("*.safetensors")):
        f = safe_open(str(file), framework="pt")
        handles.update(dict.fromkeys(f.keys(), f))

    def get(name: str) -> Any:
        return handles[name].get_tensor(name)

    def lookup(hf_name: str) -> tuple[np.ndarray, str, str] | None:
        if hf_name not in handles:
            return None
        stem = hf_name.removesuffix(".weight")
        if f"{stem}.scales" not in handles:
            tensor = get(hf_name)
            return tensor.float().numpy(), str(tensor.dtype).removeprefix("torch."), hf_name
        own: dict[str, Any] = quant[stem] if isinstance(quant.get(stem), dict) else {}
        bits, group = int(own.get("bits", quant["bits"])), int(own.get("group_size", quant["group_size"]))
        packed = get(hf_name).numpy().view(np.uint32)  # mlx packs 32 / bits values per uint32, lowest bits first
        shifts = np.arange(32 // bits, dtype=np.uint32) * np.uint32(bits)
        values = ((packed[..., None] >> shifts) & np.uint32((1 << bits) - 1)).reshape(packed.shape[0], -1).astype(np.float32)
        scales, biases = get(f"{stem}.scales").float().numpy(), get(f"{stem}.biases").float().numpy()
        values = values.reshape(values.shape[0], -1, group) * scales[..., None] + biases[..., None]
        return values.reshape(values.shape[0], -1), f"mlx {bits}-bit group {group}", hf_name

    return lookup


def _bound_of(kind: str, lineage: str) -> float:
    if kind.startswith("mlx "):
        bits, group = int(kind.split()[1].split("-")[0]), int(kind.split()[-1])
        return 1.25 * math.sqrt(group) / (2**bits - 1)
    own = GGUF_BOUNDS.get(kind, DTYPE_BOUNDS.get(kind, UNKNOWN_TYPE_BOUND))
    return max(own, _lineage_bound(lineage))


def _lineage_bound(lineage: str) -> float:
    """An HF export made from a lossy lineage (GGUF -> HF) carries that lineage's error: its quant's bound."""
    try:
        return quant(lineage).bound
    except KeyError:
        return 0.0


def check_tensors(source: Path, exported: Path, fmt: str, lineage: str) -> dict[str, Any]:
    """Every source tensor against its counterpart in the export: {ok, compared, failed: [...], worst, tensors: [...]}."""
    from halo_pipeline.runtimes.formats import export_info, gguf_file

    if export_info(source)["format"] != "hf" or not any(source.glob("*.safetensors")):
        return {"ok": None, "reason": "the source is not an HF safetensors directory: its tensors are not compared"}
    if fmt == "gguf":
        lookup = _gguf_lookup(gguf_file(exported))  # type: ignore[arg-type]
    elif fmt in ("mlx", "hf"):
        lookup = _safetensors_lookup(exported)
    else:
        return {"ok": None, "reason": f"tensors of a {fmt} export are not compared"}
    config = json.loads((source / "config.json").read_text())
    tied = bool(config.get("tie_word_embeddings", False))
    rows: list[dict[str, Any]] = []
    for name, src in source_tensors(source):
        found = lookup(name)
        if found is None:
            if tied and name == "lm_head.weight":
                continue  # the tied output head is the embedding, compared as such
            rows.append({"tensor": name, "ok": False, "how": "missing from the export", "error": None, "bound": None})
            continue
        data, kind, export_name = found
        rows.append({"tensor": name, "export_tensor": export_name, "type": kind, **compare(src, data, _bound_of(kind, lineage))})
    failed = [r for r in rows if not r["ok"]]
    measured = [r for r in rows if r["error"] is not None]
    worst = max(measured, key=lambda r: r["error"] / r["bound"], default=None)
    return {"ok": not failed and bool(rows), "compared": len(rows), "failed": failed, "worst": worst, "tensors": rows}
