"""convert: any supported model -> GGUF, MLX or HF at one of the normalized quants."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from halo_pipeline.export.formats import lossiest, pair_problem, spec, torch_dtypes
from halo_pipeline.runtimes.formats import EXPORT_FILE, export_info, gguf_file
from halo_pipeline.runtimes.hf import gguf_to_hf
from halo_pipeline.runtimes.mlx import mlx_rope_compat

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json")
# Facts about one conversion, not about the export: returned (step metrics), never written into the
# model directory, whose bytes must be the same every time the same source is converted.
RUN_FACTS = ("seconds", "peak_rss_mb", "source")


def convert(source: Path, fmt: str, quant: str, out: Path, work: Path | None = None) -> dict[str, Any]:
    """Write `source` as `fmt`/`quant` into the directory `out`; returns the export record (also in out/halo_export.json)."""
    if problem := pair_problem(fmt, quant):
        raise ValueError(problem)
    info = export_info(source)
    started = time.time()
    scratch = work is None
    work = work or Path(tempfile.mkdtemp(prefix="halo-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _convert(source, info, fmt, quant, out, work, started)
    finally:
        if scratch:
            shutil.rmtree(work, ignore_errors=True)


def _convert(source: Path, info: dict[str, Any], fmt: str, quant: str, out: Path, work: Path, started: float) -> dict[str, Any]:
    hf_source = source
    if info["format"] == "gguf":
        if fmt == "gguf":
            raise ValueError("the source is already GGUF: convert it to hf first, or quantize from the HF model")
        hf_source = work / "from-gguf"
        gguf_to_hf(gguf_file(source), hf_source, "fp32")  # type: ignore[arg-type]
    elif info["format"] == "mlx" and fmt != "mlx":
        raise ValueError(f"{source} is an MLX checkpoint; convert from its HF source (MLX -> {fmt} is not supported)")
    elif info["format"] == "unknown":
        raise ValueError(f"{source} is not a model: expected an HF directory (config.json), a .gguf file or an MLX directory")
    target = spec(fmt, quant).model_dump(exclude_none=True, exclude={"thresholds"})
    if fmt == "gguf":
        facts = _to_gguf(hf_source, out, target["gguf_type"], work)
    elif fmt == "mlx":
        facts = _to_mlx(hf_source, out, target)
    else:
        facts = _to_hf(hf_source, out, quant)
    record = {
        "format": fmt,
        "quant": quant,
        "spec": {k: v for k, v in target.items() if k != "bits"},
        "source": str(source),
        "source_format": info["format"],
        "source_digest": _digest(source),
        "verify_quant": lossiest(quant, info.get("verify_quant"), info.get("quant")),  # thresholds verify applies
        "seconds": round(time.time() - started, 2),
        **facts,
    }
    content = {k: v for k, v in record.items() if k not in RUN_FACTS}
    (out / EXPORT_FILE).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    return record


def _digest(path: Path) -> str:
    from halo_pipeline.engine.cache import digest

    return digest(path)


def _to_gguf(source: Path, out: Path, gguf_type: str, work: Path) -> dict[str, Any]:
    from halo_pipeline.export.gguf import convert_to_gguf

    target = out / f"model-{gguf_type.lower()}.gguf"
    facts = convert_to_gguf(source, target, gguf_type, work / "convert.log")
    _copy_tokenizer(source, out)  # the GGUF carries its own; kept for tokenizer-parity checks and GGUF -> HF
    return facts


def _to_mlx(source: Path, out: Path, spec: dict[str, Any]) -> dict[str, Any]:
    # mlx_lm.convert refuses an existing directory and keeps its state in-process: a child process
    # gives it a clean slate and lets us report its own peak memory.
    shutil.rmtree(out)
    args: dict[str, Any] = {"hf_path": str(source), "mlx_path": str(out)}
    if "q_bits" in spec:
        args.update(quantize=True, q_bits=spec["q_bits"], q_group_size=spec["q_group_size"])
    else:
        args["dtype"] = spec["dtype"]
    code = (
        "import json, sys; from mlx_lm.convert import convert; convert(**json.loads(sys.argv[1])); "
        "from halo_pipeline.export.memory import own_peak_rss_mb; print('HALO_RESULT ' + json.dumps({'peak_rss_mb': own_peak_rss_mb()}))"
    )
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mlx_lm.convert failed for {source}:\n{done.stderr.strip()[-1500:]}")
    facts = next(json.loads(ln[12:]) for ln in done.stdout.splitlines() if ln.startswith("HALO_RESULT "))
    _copy_tokenizer(source, out, overwrite=False)
    mlx_rope_compat(out / "config.json")
    from importlib.metadata import version

    return {"converter": f"mlx_lm.convert {version('mlx-lm')}", **facts}


def _to_hf(source: Path, out: Path, quant: str) -> dict[str, Any]:
    # A child process, like the GGUF and MLX converters: the peak memory reported is the conversion's own
    # (its VmHWM: ru_maxrss in a child holds the parent's peak, see export.memory).
    from transformers import __version__

    code = (
        "import json, sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer; "
        "src, out, dtype = sys.argv[1:4]; "
        "AutoModelForCausalLM.from_pretrained(src, dtype=getattr(torch, dtype)).save_pretrained(out); "
        "AutoTokenizer.from_pretrained(src).save_pretrained(out); "
        "from halo_pipeline.export.memory import own_peak_rss_mb; print('HALO_RESULT ' + json.dumps({'peak_rss_mb': own_peak_rss_mb()}))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(source), str(out), torch_dtypes()[quant]], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"saving {source} as HF {quant} failed:\n{done.stderr.strip()[-1500:]}")
    facts = next(json.loads(ln[12:]) for ln in done.stdout.splitlines() if ln.startswith("HALO_RESULT "))
    _copy_tokenizer(source, out, overwrite=False)
    return {"converter": f"transformers {__version__} save_pretrained", **facts}


def _copy_tokenizer(source: Path, out: Path, overwrite: bool = True) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).is_file() and (overwrite or not (out / name).exists()):
            shutil.copy2(source / name, out / name)
