"""GGUF export with llama.cpp's own converter and quantizer, at the installed llama-cpp-python's version.

The converter (`convert_hf_to_gguf.py` + `conversion/` + its `gguf-py`) ships in the llama-cpp-python
sdist, not in the wheel. `ensure_converter()` extracts those files once from the sdist (downloaded by
`make setup`, or here with pip on first use) into the user cache; nothing of llama.cpp is copied into
this repository. Conversion and quantization run in a child process (`_gguf_worker`): the converter
needs its own `gguf-py` on the path, and the child's peak memory is the conversion's own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

CONVERTER_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


class ConverterUnavailable(RuntimeError):
    pass


def llama_version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        raise ConverterUnavailable("llama-cpp-python is not installed; `make setup` builds and installs it") from None


def cache_root() -> Path:
    # Where `make setup` keeps the llama-cpp-python sdist; version-keyed and immutable, so shared by
    # every project home (tests included) rather than re-downloaded.
    return Path.home() / ".cache" / "halo-pipeline"


def converter_dir() -> Path:
    return cache_root() / "llama.cpp" / llama_version()


def sdist_dir() -> Path:
    return cache_root() / "sdists"


def ensure_converter() -> Path:
    """The directory holding llama.cpp's converter for the installed version, extracting it once."""
    target = converter_dir()
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    version = llama_version()
    sdist = sdist_dir() / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        sdist.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", "-d", str(sdist.parent)]
        done = subprocess.run([*cmd, f"llama-cpp-python=={version}"], capture_output=True, text=True)
        if done.returncode != 0 or not sdist.is_file():
            raise ConverterUnavailable(
                f"llama.cpp's GGUF converter comes from the llama-cpp-python {version} sdist, which could not be "
                f"downloaded ({done.stderr.strip()[-300:]}); run `make setup` online, or put the sdist at {sdist}"
            )
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    tmp = Path(tempfile.mkdtemp(dir=target.parent if target.parent.exists() else None))
    try:
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.name[len(prefix) :].startswith(CONVERTER_MEMBERS)]
            for m in members:
                m.name = m.name[len(prefix) :]
            tar.extractall(tmp, members=members, filter="data")
        if not (tmp / "convert_hf_to_gguf.py").is_file():
            raise ConverterUnavailable(f"{sdist} has no vendor/llama.cpp/convert_hf_to_gguf.py")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_to_gguf(source: Path, out_file: Path, gguf_type: str, log_file: Path) -> dict[str, object]:
    """HF directory -> GGUF of `gguf_type` (F32/F16/BF16 by the converter; any other type, Q8_0, Q4_K_M, Q5_0..., by llama.cpp's quantizer)."""
    converter = ensure_converter()
    cmd = [sys.executable, "-m", "halo_pipeline.export._gguf_worker", str(converter), str(source), str(out_file), gguf_type]
    with open(log_file, "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_LOCAL_GGUF": ""})
    lines = log_file.read_text(errors="replace").splitlines()
    if done.returncode != 0 or not out_file.is_file():
        tail = "\n".join(lines[-15:])
        raise RuntimeError(f"llama.cpp's converter failed for {source} ({gguf_type}); its log ({log_file}) ends:\n{tail}")
    facts: dict[str, object] = next((json.loads(ln[len("HALO_RESULT ") :]) for ln in reversed(lines) if ln.startswith("HALO_RESULT ")), {})
    return {"converter": f"llama.cpp convert_hf_to_gguf.py from llama-cpp-python {llama_version()}", **facts}
