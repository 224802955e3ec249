"""One quant vocabulary across export formats, read from the quant group (`conf/quant/<name>.yaml`).

Each quant file says what the quant becomes in each format (GGUF tensor type, MLX bits and group,
dtype) and how far an export may drift from its source: convert, verify, `convert --list` and the
docs read the same table.
"""

from __future__ import annotations

from halo_pipeline.engine.groups import QuantFormat, quant, quant_names

FORMATS = ("gguf", "mlx", "hf")


def spec(fmt: str, quant_name: str) -> QuantFormat:
    """What `quant_name` becomes in `fmt` (raises ValueError when the format does not support it)."""
    if problem := pair_problem(fmt, quant_name):
        raise ValueError(problem)
    return quant(quant_name).formats[fmt]  # type: ignore[index]


def pairs() -> list[tuple[str, str]]:
    """Every supported (format, quant)."""
    return [(fmt, q) for fmt in FORMATS for q in quant_names() if fmt in quant(q).formats]


def pair_problem(fmt: str, quant_name: str) -> str | None:
    """None when the format supports the quant, else a message listing what it does support."""
    if fmt not in FORMATS:
        return f"unknown format '{fmt}'; formats: {', '.join(FORMATS)}"
    if quant_name not in quant_names():
        return f"unknown quant '{quant_name}'; quants: {', '.join(quant_names())}"
    if fmt not in quant(quant_name).formats:
        supported = [q for f, q in pairs() if f == fmt]
        return f"format '{fmt}' does not support quant '{quant_name}'; it supports: {', '.join(supported)}"
    return None


def table_rows() -> list[tuple[str, str, str]]:
    """(format, quant, what it becomes) for `convert --list` and the docs."""
    rows = []
    for fmt, q in pairs():
        s = quant(q).formats[fmt]  # type: ignore[index]
        if s.gguf_type:
            what = f"GGUF {s.gguf_type}"
        elif s.q_bits:
            what = f"MLX {s.q_bits}-bit, group {s.q_group_size}"
        else:
            what = f"{'MLX' if fmt == 'mlx' else 'safetensors'} {s.dtype}"
        rows.append((fmt, q, f"{what} (~{s.bits:g} bits/weight)"))
    return rows


def lossiest(*quants: str | None) -> str:
    """An export is as lossy as the lossiest step in its lineage (the quant whose bound is widest)."""
    known = set(quant_names())
    return max((q for q in quants if q in known), key=lambda q: quant(q).bound, default="fp32")


def torch_dtypes() -> dict[str, str]:
    """quant -> torch dtype name, for the quants with an HF form (fp16: float16, bf16: bfloat16, fp32: float32)."""
    return {q: dtype for q in quant_names() if (dtype := quant(q).torch_dtype)}
