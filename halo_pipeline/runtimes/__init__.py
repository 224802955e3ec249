"""One runtime per model format: HF (transformers on torch), GGUF (llama.cpp) and MLX (mlx-lm).

Every step that runs a model — synthesize, probe, eval, verify, serve — loads it here, by its format,
on the backend's device and dtype, and asks the same questions: tokenize, next-token log-probs at
every position, greedy continuations, the chat template, and batched generation of chat prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from halo_pipeline.runtimes.formats import gguf_file, is_adapter, model_format

if TYPE_CHECKING:
    from halo_pipeline.runtimes.constraints import Grammars, Guide, ResponseFormat

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    """How completions are sampled: `n` per prompt, seeded (the same seed gives the same text on a CPU)."""

    n: int = 1
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    seed: int = 0


class Runtime(Protocol):
    name: str  # the library: transformers, llama-cpp-python, mlx-lm
    format: str  # hf, gguf, mlx
    grammars: Grammars  # its compiled output constraints (response_format), by grammar

    @property
    def eos_id(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...

    def tokenize(self, text: str) -> list[int]: ...  # the text alone: special tokens parsed, none added
    def encode(self, text: str) -> list[int]: ...  # as the model's tokenizer encodes a document (BOS when it adds one)
    def detokenize(self, ids: list[int]) -> str: ...
    def logprobs(self, ids: list[int]) -> np.ndarray: ...  # [len(ids), vocab]: log P(next | ids[:i+1])
    # n argmax tokens; end-of-sequence is just a token — unless a `guide` constrains them: then each is the most likely
    # token the guide allows, the guide takes it, and generation stops once the guide's output is complete
    def greedy(self, ids: list[int], n: int, guide: Guide | None = None) -> list[int]: ...
    def chat_template(self) -> str | None: ...
    def render_chat(self, messages: Messages) -> str | None: ...
    def generate(
        self, batch: Sequence[Messages], sampling: Sampling, batch_index: int = 0, response_format: ResponseFormat | None = None
    ) -> tuple[list[list[str]], int]: ...
    def close(self) -> None: ...


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, in float64 (KL and log-likelihood sums need the precision)."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return np.asarray(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)))


def to_messages(prompt: str, system_prompt: str | None) -> Messages:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": prompt}]


def load(
    path: Path,
    backend: Any = None,
    *,
    adapter: Path | None = None,
    base: Any = None,
    use_chat_template: bool = True,
    n_ctx: int = 2048,
    parallel: int | None = None,
    dtype: str | None = None,
) -> Runtime:
    """The model at `path` in its own runtime. A PEFT adapter needs `base` (a model reference): it runs
    on its base, merged for plain-speed generation. `backend` (a Backend) sets torch's device and dtype;
    `dtype="auto"` keeps the weights' own dtype instead (verify compares an export as it was saved)."""
    backend = as_backend(backend)
    if is_adapter(path):
        if base is None:
            raise ValueError(f"{path} is an adapter: its base model is needed to run it")
        from halo_pipeline.runtimes.catalog import resolve

        adapter, path = path, resolve(base)
        if (adapter / "adapters.safetensors").is_file():  # trained by mlx-lm (backend=mlx)
            from halo_pipeline.runtimes.mlx import MLXRuntime

            return MLXRuntime(path, use_chat_template=use_chat_template, adapter=adapter)
        from halo_pipeline.runtimes.hf import HFRuntime  # a PEFT adapter runs on torch

        return HFRuntime(path, backend.device, dtype or backend.dtype, adapter=adapter, use_chat_template=use_chat_template)
    fmt = model_format(path)
    if fmt == "gguf":
        from halo_pipeline.runtimes.gguf import GGUFRuntime

        return GGUFRuntime(gguf_file(path), n_ctx=n_ctx, use_chat_template=use_chat_template, parallel=parallel)  # type: ignore[arg-type]
    if fmt == "mlx" or (fmt == "hf" and backend.engine == "mlx"):  # mlx-lm loads HF checkpoints too
        from halo_pipeline.runtimes.mlx import MLXRuntime

        return MLXRuntime(path, use_chat_template=use_chat_template, adapter=adapter)
    if fmt == "hf":
        from halo_pipeline.runtimes.hf import HFRuntime

        return HFRuntime(path, backend.device, dtype or backend.dtype, adapter=adapter, use_chat_template=use_chat_template)
    raise ValueError(f"{path} is not a model this tool can load (an HF directory, a GGUF file or export, or an MLX directory)")


def teacher(
    model: Any,
    backend: Any,
    runtime: str = "auto",
    *,
    base_url: str | None = None,
    endpoint_model: str | None = None,
    api_key_env: str | None = None,
    concurrency: int = 8,
    use_chat_template: bool = True,
) -> Any:
    """What generates completions for a step: a local runtime for a model reference (`runtime: auto` picks
    mlx on the mlx backend, gguf (llama.cpp) for a GGUF model on the CPU, hf (transformers) otherwise), or an endpoint."""
    if base_url:
        from halo_pipeline.runtimes.endpoint import Endpoint

        return Endpoint(base_url, endpoint_model or str(getattr(model, "name", model)), api_key_env, concurrency)
    from halo_pipeline.runtimes.catalog import gguf_source, resolve

    backend = as_backend(backend)
    chosen = choose_runtime(runtime, model, backend)
    if chosen == "gguf":
        gguf = gguf_source(model)
        if gguf is None:
            raise RuntimeError("runtime gguf needs a GGUF model (a .gguf path or a catalog entry whose source is one)")
        return load(gguf, backend, use_chat_template=use_chat_template)
    if chosen == "mlx":
        from halo_pipeline.runtimes.mlx import MLXRuntime

        return MLXRuntime(resolve(model), use_chat_template=use_chat_template)
    from halo_pipeline.runtimes.hf import HFRuntime

    return HFRuntime(resolve(model), backend.device, backend.dtype, use_chat_template=use_chat_template)


def with_endpoint(runtime: str, base_url: str | None, url: str) -> str:
    """A step's runtime given its `base_url` (synthesize, eval): auto with a base_url is the endpoint; an endpoint
    needs one, and only an endpoint takes one. `url` says which URL the step wants."""
    if runtime == "auto" and base_url:
        return "endpoint"
    if runtime == "endpoint" and not base_url:
        raise ValueError(f"runtime: endpoint needs base_url ({url})")
    if base_url and runtime != "endpoint":
        raise ValueError(f"base_url is for runtime: endpoint, not {runtime} (leave runtime at auto or set it to endpoint)")
    return runtime


def choose_runtime(runtime: str, model: Any, backend: Any) -> str:
    """`auto`: mlx on the mlx backend, gguf (llama.cpp) for a GGUF model on the CPU backend, hf (transformers) otherwise."""
    if runtime != "auto":
        return runtime
    from halo_pipeline.runtimes.catalog import gguf_source

    backend = as_backend(backend)
    if backend.engine == "mlx":
        return "mlx"
    return "gguf" if backend.is_cpu and gguf_source(model) is not None else "hf"


def as_backend(backend: Any) -> Any:
    """A Backend from a Backend, a group node or None (the CPU)."""
    from halo_pipeline.engine.groups import Backend

    return backend if isinstance(backend, Backend) else Backend.model_validate(backend or {})


def common_prefix(a: Any, b: Any) -> int:
    """How many leading tokens two token sequences share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.nonzero(np.asarray(a[:n]) != np.asarray(b[:n]))[0]
    return int(diff[0]) if diff.size else n
