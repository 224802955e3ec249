"""Engines behind the server: one interface (`core.Engine`), one engine per runtime (model format).

hf (transformers on torch, `torch_engine`), gguf (llama.cpp, `gguf_engine`) and mlx (mlx-lm, `mlx_engine`) all
load their model through the runtime layer and answer the same questions: generate (streamed steps with
optional log-probs), score a prompt, embed, and serve LoRA adapters next to the base model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from halo_pipeline.serving.core import END, Engine, Generation, Sampling, Step

__all__ = ["END", "ENGINES", "Engine", "Generation", "Sampling", "Step", "load_engine", "pick_engine"]

ENGINES = ("hf", "gguf", "mlx")  # one serving engine per runtime, named as the runtimes are: by model format


def pick_engine(path: Path, runtime: str = "auto") -> str:
    """The runtime that serves this model: the one asked for, or (auto) its format's."""
    from halo_pipeline.runtimes.formats import model_format

    if runtime != "auto":
        return runtime
    return model_format(path)


def load_engine(
    path: Path,
    runtime: str = "auto",
    parallel: int = 4,
    backend: Any = None,
    *,
    adapters: dict[str, Path] | None = None,
    ctx_size: int | None = None,
    threads: int | None = None,
) -> Engine:
    """The engine for the model's format (or `runtime`); `backend` (the device group) puts the hf engine on its device
    and dtype; `adapters` are LoRA adapters served next to the base (by name); `ctx_size` caps the context."""
    from halo_pipeline.runtimes import as_backend

    chosen = pick_engine(path, runtime)
    if chosen == "gguf":
        from halo_pipeline.serving.gguf_engine import GGUFEngine

        return GGUFEngine(path, parallel=parallel, n_ctx=ctx_size or 2048, threads=threads, adapters=adapters)
    if chosen == "mlx":
        from halo_pipeline.serving.mlx_engine import MLXEngine

        return MLXEngine(path, parallel=max(parallel, 1) * 2, adapters=adapters, ctx_size=ctx_size)
    if chosen == "hf":
        from halo_pipeline.serving.torch_engine import TorchEngine

        device = as_backend(backend)
        return TorchEngine(
            path, max_batch=max(parallel, 1) * 2, device=device.device, dtype=device.dtype, adapters=adapters, ctx_size=ctx_size
        )
    raise ValueError(f"{path} is not a model the server can load (an HF directory, a GGUF export or an MLX directory)")


def __getattr__(name: str) -> Any:  # the engine classes, imported on first use (each pulls in its ML library)
    if name == "TorchEngine":
        from halo_pipeline.serving.torch_engine import TorchEngine

        return TorchEngine
    if name == "GGUFEngine":
        from halo_pipeline.serving.gguf_engine import GGUFEngine

        return GGUFEngine
    if name == "MLXEngine":
        from halo_pipeline.serving.mlx_engine import MLXEngine

        return MLXEngine
    raise AttributeError(name)
