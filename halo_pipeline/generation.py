"""Text generation engines shared by steps: batched transformers on torch, and OpenAI-compatible endpoints."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    n: int = 1
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    seed: int = 0


def to_messages(prompt: str, system_prompt: str | None) -> Messages:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": prompt}]


class HFGenerator:
    """Batched generation with transformers: left padding, `num_return_sequences`, seeded per batch."""

    def __init__(
        self, model_dir: Path, device: str = "cpu", dtype: str = "float32", use_chat_template: bool = True, adapter: Path | None = None
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
        if adapter is not None:  # a PEFT adapter on this base, merged for plain-speed generation
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        self.model = model.to(device).eval()  # type: ignore[arg-type]
        self.device = device
        self.use_chat_template = use_chat_template and bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, messages: Messages) -> str:
        if self.use_chat_template:
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return "\n\n".join(m["content"] for m in messages)

    def generate(self, batch: Sequence[Messages], sampling: Sampling, batch_index: int = 0) -> tuple[list[list[str]], int]:
        """Completions per prompt (n each) and the number of generated tokens."""
        torch = self.torch
        texts = [self.render(m) for m in batch]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not self.use_chat_template).to(self.device)
        torch.manual_seed(sampling.seed * 1_000_003 + batch_index)
        do_sample = sampling.temperature > 0
        n = sampling.n if do_sample else 1  # greedy samples are identical: decode once, repeat
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=sampling.max_new_tokens,
                do_sample=do_sample,
                temperature=sampling.temperature if do_sample else None,
                top_p=sampling.top_p if do_sample else None,
                num_return_sequences=n,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        eos = self.tokenizer.eos_token_id
        tokens = int(((new != self.tokenizer.pad_token_id) | (new == eos)).sum()) if eos is not None else int(new.numel())
        decoded = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [decoded[i * n : (i + 1) * n] * (sampling.n // n) for i in range(len(batch))], tokens


class LlamaCppGenerator:
    """GGUF models in-process with llama-cpp-python, one sequence at a time on all cores."""

    def __init__(self, gguf: Path, use_chat_template: bool = True, n_ctx: int = 2048, threads: int | None = None):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads or os.cpu_count() or 1, verbose=False)
        self.use_chat_template = use_chat_template

    def generate(self, batch: Sequence[Messages], sampling: Sampling, batch_index: int = 0) -> tuple[list[list[str]], int]:
        out: list[list[str]] = []
        tokens = 0
        for i, messages in enumerate(batch):
            texts = []
            for j in range(sampling.n):
                kwargs: dict[str, Any] = dict(
                    temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_new_tokens,
                    seed=sampling.seed * 1_000_003 + batch_index * 997 + i * 31 + j,
                )  # fmt: skip
                if self.use_chat_template:
                    resp: Any = self.llm.create_chat_completion(messages=messages, **kwargs)  # type: ignore[arg-type]
                    texts.append(resp["choices"][0]["message"]["content"] or "")
                else:
                    resp = self.llm.create_completion(prompt="\n\n".join(m["content"] for m in messages), **kwargs)
                    texts.append(resp["choices"][0]["text"])
                tokens += int(resp["usage"]["completion_tokens"])
            out.append(texts)
        return out, tokens


class MLXGenerator:
    """Batched generation with mlx-lm's `batch_generate` (Apple silicon, or mlx's CPU build on Linux)."""

    def __init__(self, model_dir: Path, use_chat_template: bool = True):
        from mlx_lm import load

        loaded = load(str(model_dir))
        self.model, self.tokenizer = loaded[0], loaded[1]
        self.use_chat_template = use_chat_template and bool(getattr(self.tokenizer, "chat_template", None))

    def generate(self, batch: Sequence[Messages], sampling: Sampling, batch_index: int = 0) -> tuple[list[list[str]], int]:
        import mlx.core as mx
        from mlx_lm import batch_generate
        from mlx_lm.sample_utils import make_sampler

        if self.use_chat_template:
            prompts = [list(self.tokenizer.apply_chat_template(m, add_generation_prompt=True)) for m in batch]
        else:
            prompts = [self.tokenizer.encode("\n\n".join(x["content"] for x in m)) for m in batch]
        mx.random.seed(sampling.seed * 1_000_003 + batch_index)
        sampler = make_sampler(temp=sampling.temperature, top_p=sampling.top_p if sampling.temperature > 0 else 0.0)
        repeated = [p for p in prompts for _ in range(sampling.n)]
        response = batch_generate(self.model, self.tokenizer, repeated, max_tokens=sampling.max_new_tokens, sampler=sampler)
        texts = list(response.texts)
        tokens = sum(len(self.tokenizer.encode(t)) for t in texts)
        return [texts[i * sampling.n : (i + 1) * sampling.n] for i in range(len(batch))], tokens


class OpenAIGenerator:
    """Concurrent requests to any OpenAI-compatible `/v1/chat/completions` endpoint."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None, concurrency: int = 8, timeout: float = 120.0):
        from openai import OpenAI

        key = os.environ.get(api_key_env, "") if api_key_env else ""
        if api_key_env and not key:
            raise RuntimeError(f"environment variable {api_key_env} (named by api_key_env) is not set")
        self.client = OpenAI(base_url=base_url, api_key=key or "none", timeout=timeout, max_retries=2)
        self.model, self.concurrency = model, concurrency

    def generate(self, batch: Sequence[Messages], sampling: Sampling, batch_index: int = 0) -> tuple[list[list[str]], int]:
        jobs = [(i, j) for i in range(len(batch)) for j in range(sampling.n)]

        def one(job: tuple[int, int]) -> tuple[str, int]:
            i, j = job
            resp = self.client.chat.completions.create(
                model=self.model,
                messages=batch[i],  # type: ignore[arg-type]
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=sampling.seed * 1_000_003 + batch_index * 997 + i * 31 + j,
            )
            usage = resp.usage.completion_tokens if resp.usage else 0
            return resp.choices[0].message.content or "", usage

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            results = list(pool.map(one, jobs))
        out: list[list[str]] = [[] for _ in batch]
        for (i, _), (text, _) in zip(jobs, results, strict=True):
            out[i].append(text)
        return out, sum(t for _, t in results)


def choose_engine(engine: str, model: str | dict[str, Any] | None, backend: dict[str, Any] | None) -> str:
    """`auto`: mlx on the mlx backend, llama.cpp for a GGUF model on the CPU backend, transformers otherwise."""
    if engine != "auto":
        return engine
    if (backend or {}).get("engine") == "mlx":
        return "mlx"
    from halo_pipeline.models import gguf_source

    on_cpu = (backend or {}).get("name", "cpu") == "cpu"
    return "llama_cpp" if on_cpu and gguf_source(model or "tiny") is not None else "transformers"


def make_generator(
    model: str | dict[str, Any] | None,
    backend: dict[str, Any] | None,
    base_url: str | None,
    endpoint_model: str | None,
    api_key_env: str | None,
    concurrency: int,
    use_chat_template: bool,
    engine: str = "transformers",
) -> Callable[..., tuple[list[list[str]], int]]:
    if base_url:
        return OpenAIGenerator(base_url, endpoint_model or str(model or "default"), api_key_env, concurrency).generate
    from halo_pipeline.models import gguf_source, resolve

    chosen = choose_engine(engine, model, backend)
    if chosen == "mlx":
        return MLXGenerator(resolve(model or "tiny"), use_chat_template).generate
    if chosen == "llama_cpp":
        gguf = gguf_source(model or "tiny")
        if gguf is None:
            raise RuntimeError("engine llama_cpp needs a GGUF model (a .gguf path or a catalog entry whose source is one)")
        return LlamaCppGenerator(gguf, use_chat_template).generate
    backend = backend or {"engine": "torch", "device": "cpu", "dtype": "float32"}
    if backend.get("engine", "torch") != "torch":
        raise RuntimeError(
            f"backend '{backend.get('name')}' generation is not available in this step yet; use backend=cpu/cuda/mps or base_url"
        )
    return HFGenerator(resolve(model or "tiny"), backend.get("device", "cpu"), backend.get("dtype", "float32"), use_chat_template).generate
