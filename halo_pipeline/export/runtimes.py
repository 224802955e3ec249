"""A model loaded in its own runtime (transformers, llama-cpp-python, mlx-lm) behind one small interface.

Verification asks every runtime the same questions on the same token ids: next-token log-probs at
each position, greedy continuations, how it tokenizes a string, and what chat template it carries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from halo_pipeline.export.formats import export_info, gguf_file


class Runtime(Protocol):
    name: str

    def tokenize(self, text: str) -> list[int]: ...
    def logprobs(self, ids: list[int]) -> np.ndarray: ...  # [len(ids), vocab]: log P(next | ids[:i+1])
    def greedy(self, ids: list[int], n: int) -> list[int]: ...  # n argmax tokens; end-of-sequence is just a token
    def chat_template(self) -> str | None: ...
    def render_chat(self, messages: list[dict[str, str]]) -> str | None: ...


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, in float64 (KL and log-likelihood sums need the precision)."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return np.asarray(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)))


def render_gguf_chat(llm: Any, messages: list[dict[str, str]]) -> str | None:
    """A conversation through the chat template stored in a GGUF file (None when it has none)."""
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos = llm.detokenize([llm.token_eos()]).decode(errors="replace")
    bos = llm.detokenize([llm.token_bos()]).decode(errors="replace") if llm.token_bos() >= 0 else ""
    return str(Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)(messages=messages).prompt)  # type: ignore[arg-type]


def load(path: Path, n_ctx: int = 512) -> Runtime:
    fmt = export_info(path)["format"]
    if fmt == "gguf":
        return GGUFRuntime(gguf_file(path), n_ctx)  # type: ignore[arg-type]
    if fmt == "mlx":
        return MLXRuntime(path)
    if fmt == "hf":
        return HFRuntime(path)
    raise ValueError(f"{path} is not a model this tool can load (HF directory, GGUF, or MLX directory)")


class _HFTokenizerChat:
    """Chat template and rendering through an HF tokenizer (transformers and mlx-lm both carry one)."""

    tokenizer: Any

    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def render_chat(self, messages: list[dict[str, str]]) -> str | None:
        if not self.chat_template():
            return None
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


class HFRuntime(_HFTokenizerChat):
    name = "transformers"

    def __init__(self, path: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype="auto").eval()

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def logprobs(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.no_grad():
            logits = self.model(torch.tensor([ids])).logits[0].float().numpy()
        return log_softmax(logits)

    def greedy(self, ids: list[int], n: int) -> list[int]:
        import torch

        out: list[int] = []
        with torch.no_grad():
            step = self.model(torch.tensor([ids]), use_cache=True)
            for _ in range(n):
                out.append(int(step.logits[0, -1].argmax()))
                step = self.model(torch.tensor([out[-1:]]), past_key_values=step.past_key_values, use_cache=True)
        return out


class GGUFRuntime:
    name = "llama-cpp-python"

    def __init__(self, path: Path, n_ctx: int) -> None:
        from llama_cpp import Llama

        from halo_pipeline.export.formats import gguf_context_length

        n_ctx = min(n_ctx, gguf_context_length(path) or n_ctx)
        # logits_all: every position's logits (the prompt log-probs verification and eval need)
        self.llm = Llama(str(path), n_ctx=n_ctx, logits_all=True, verbose=False, n_threads=1, seed=0)

    def tokenize(self, text: str) -> list[int]:
        return list(self.llm.tokenize(text.encode(), add_bos=False, special=True))  # special tokens parsed, as HF tokenizers do

    def logprobs(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return log_softmax(np.array(self.llm.scores[: len(ids)], dtype=np.float32))

    def greedy(self, ids: list[int], n: int) -> list[int]:
        self.llm.reset()
        self.llm.eval(ids)
        out: list[int] = []
        for _ in range(n):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(token)
            self.llm.eval([token])
        return out

    def chat_template(self) -> str | None:
        return self.llm.metadata.get("tokenizer.chat_template")

    def render_chat(self, messages: list[dict[str, str]]) -> str | None:
        return render_gguf_chat(self.llm, messages)


class MLXRuntime(_HFTokenizerChat):
    name = "mlx-lm"

    def __init__(self, path: Path) -> None:
        from mlx_lm import load

        self.model, self.tokenizer = load(str(path))[:2]

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def logprobs(self, ids: list[int]) -> np.ndarray:
        import mlx.core as mx

        logits = self.model(mx.array([ids]))[0].astype(mx.float32)
        return log_softmax(np.array(logits))

    def greedy(self, ids: list[int], n: int) -> list[int]:
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        cache = make_prompt_cache(self.model)
        logits = self.model(mx.array([ids]), cache=cache)
        out: list[int] = []
        for _ in range(n):
            out.append(int(mx.argmax(logits[0, -1]).item()))  # type: ignore[arg-type]
            logits = self.model(mx.array([out[-1:]]), cache=cache)
        return out
