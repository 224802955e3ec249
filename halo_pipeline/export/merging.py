"""merge: bake an adapter into its base, or combine several adapters with peft's weighted merge."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from halo_pipeline.export.formats import torch_dtypes

COMBINE_METHODS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
PROVENANCE = "halo_merge.json"


def is_mlx_adapter(path: Path) -> bool:
    return (path / "adapters.safetensors").is_file()


def _load_base(base: Path, dtype: str) -> tuple[Any, Any, str]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if dtype == "auto":  # the base's own dtype: merging a bf16 model must not silently write fp32
        saved = str(getattr(AutoConfig.from_pretrained(base), "dtype", None) or "float32").replace("torch.", "")
        dtype = {v: k for k, v in torch_dtypes().items()}.get(saved, "fp32")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, torch_dtypes()[dtype]))
    return model, AutoTokenizer.from_pretrained(base), dtype


def _lineage(base: Path, adapters: list[Path]) -> dict[str, Any]:
    """What was merged, by name and content digest (not by path: the same inputs must give the same bytes)."""
    from halo_pipeline.engine.cache import digest

    return {"base": base.name, "adapters": [digest(a) for a in adapters]}


def _save(model: Any, tokenizer: Any, base: Path, out: Path, provenance: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)  # tokenizer + chat template
    if (base / "generation_config.json").is_file():
        shutil.copy2(base / "generation_config.json", out / "generation_config.json")
    (out / PROVENANCE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")


def bake(base: Path, adapter: Path, out: Path, dtype: str = "auto") -> dict[str, Any]:
    """merge_and_unload the adapter into the base, in the base's dtype; a standard HF directory."""
    if is_mlx_adapter(adapter):
        return fuse_mlx(base, adapter, out)
    from peft import PeftModel

    model, tokenizer, dtype = _load_base(base, dtype)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    provenance = {"mode": "bake", **_lineage(base, [adapter]), "method": "merge_and_unload", "dtype": dtype}
    _save(merged, tokenizer, base, out, provenance)
    return provenance


def combine(
    base: Path,
    adapters: list[Path],
    weights: list[float],
    out: Path,
    method: str = "dare_ties",
    density: float | None = None,
    majority_sign_method: str = "total",
    bake_after_merge: bool = False,
    dtype: str = "auto",
    seed: int = 0,
) -> dict[str, Any]:
    """peft add_weighted_adapter over N adapters: a combined adapter, or (bake_after_merge) a merged model.

    The DARE methods drop weights at random: `seed` makes the same inputs give the same merge."""
    if method not in COMBINE_METHODS:
        raise ValueError(f"unknown combine method '{method}'; methods: {', '.join(COMBINE_METHODS)}")
    if len(weights) != len(adapters):
        raise ValueError(f"{len(adapters)} adapters but {len(weights)} weights: give one weight per adapter")
    if any(is_mlx_adapter(a) for a in adapters):
        raise ValueError("combining MLX adapters is not supported; bake each with mlx-lm, or train PEFT adapters")
    from peft import PeftModel

    model, tokenizer, dtype = _load_base(base, dtype)
    names = [f"a{i}" for i in range(len(adapters))]
    peft_model = PeftModel.from_pretrained(model, adapters[0], adapter_name=names[0])
    for name, path in zip(names[1:], adapters[1:], strict=True):
        peft_model.load_adapter(path, adapter_name=name)
    kwargs: dict[str, Any] = {}
    if method != "linear":
        kwargs["density"] = 0.5 if density is None else density
    if method in ("ties", "dare_ties"):
        kwargs["majority_sign_method"] = majority_sign_method
    import torch

    torch.manual_seed(seed)  # dare_* sample their masks with torch's global generator
    peft_model.add_weighted_adapter(names, weights, adapter_name="combined", combination_type=method, **kwargs)
    peft_model.set_adapter("combined")
    for name in names:
        peft_model.delete_adapter(name)
    provenance = {
        "mode": "combine",
        **_lineage(base, adapters),
        "weights": weights,
        "method": method,
        "seed": seed,
        **kwargs,
        "baked": bake_after_merge,
        "dtype": dtype,
    }
    if bake_after_merge:
        _save(peft_model.merge_and_unload(), tokenizer, base, out, provenance)
    else:
        out.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(str(out), selected_adapters=["combined"])
        nested = out / "combined"  # peft saves non-default adapters in a subdirectory
        if nested.is_dir():
            for f in nested.iterdir():
                shutil.move(str(f), out / f.name)
            nested.rmdir()
        from halo_pipeline.runtimes.catalog import stable_adapter_config

        stable_adapter_config(out)
        (out / PROVENANCE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
        (out / "halo_provenance.json").write_text(json.dumps({"base": base.name, "merge": provenance}, indent=2, sort_keys=True) + "\n")
    return provenance


def fuse_mlx(base: Path, adapter: Path, out: Path) -> dict[str, Any]:
    """An MLX (LoRA/DoRA) adapter fused into its base by mlx-lm's own fuse command."""
    cmd = [sys.executable, "-m", "mlx_lm", "fuse", "--model", str(base), "--adapter-path", str(adapter), "--save-path", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mlx_lm fuse failed:\n{done.stderr.strip()[-1500:]}")
    provenance = {"mode": "bake", **_lineage(base, [adapter]), "method": "mlx_lm fuse"}
    (out / PROVENANCE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    return provenance  # unquantized mlx-lm output keeps HF names: it loads in transformers and converts further
