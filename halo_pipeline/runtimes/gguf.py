"""GGUF models with llama-cpp-python, in-process.

`open_llama` is the one place a llama.cpp context is built. Generation runs a pool of contexts, one
thread each, one sequence at a time per context (llama.cpp releases the GIL, so they run in
parallel): every sample is seeded on its own and decoded from a reset context, so the text does not
depend on which context ran it — parallel runs reproduce. Scoring (log-probs, greedy) uses a separate
`logits_all` context.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from halo_pipeline.runtimes import Messages, Sampling, log_softmax
from halo_pipeline.runtimes.formats import gguf_context_length


def open_llama(path: Path, n_ctx: int = 2048, *, threads: int = 1, logits_all: bool = False, embedding: bool = False, seed: int = 0) -> Any:
    """A llama.cpp context on a GGUF file, its context capped at what the model was trained for. One thread:
    several single-threaded contexts beat one multi-threaded context on a small CPU (ggml's threads spin)."""
    from llama_cpp import Llama

    n_ctx = min(n_ctx, gguf_context_length(path) or n_ctx)
    return Llama(str(path), n_ctx=n_ctx, n_threads=threads, logits_all=logits_all, embedding=embedding, seed=seed, verbose=False)


def render_chat(llm: Any, messages: Messages) -> str | None:
    """A conversation through the chat template stored in a GGUF file (None when it has none)."""
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos = llm.detokenize([llm.token_eos()]).decode(errors="replace")
    bos = llm.detokenize([llm.token_bos()]).decode(errors="replace") if llm.token_bos() >= 0 else ""
    return str(Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)(messages=messages).prompt)  # type: ignore[arg-type]


def sample_seed(seed: int, batch_index: int, prompt: int, sample: int) -> int:
    """The seed of one sample: the same sample gets the same seed however the work is split."""
    return (seed * 1_000_003 + batch_index * 997 + prompt * 31 + sample) % (2**31)


class GGUFRuntime:
    name = "llama-cpp-python"
    format = "gguf"

    def __init__(self, path: Path, n_ctx: int = 2048, use_chat_template: bool = True, parallel: int | None = None) -> None:
        self.path = path
        self.n_ctx = n_ctx
        self.use_chat_template = use_chat_template
        self.parallel = max(1, parallel or os.cpu_count() or 1)
        self._scorer: Any = None
        self._contexts: queue.Queue[Any] = queue.Queue()
        self._made = 0
        self._lock = threading.Lock()

    @property
    def scorer(self) -> Any:
        """A `logits_all` context: every position's logits (the prompt log-probs verification and eval need)."""
        if self._scorer is None:
            self._scorer = open_llama(self.path, self.n_ctx, logits_all=True)
        return self._scorer

    # -- the questions every runtime answers
    def tokenize(self, text: str) -> list[int]:
        return list(self.scorer.tokenize(text.encode(), add_bos=False, special=True))  # special tokens parsed, as HF tokenizers do

    @property
    def eos_id(self) -> int:
        return int(self.scorer.token_eos())

    @property
    def bos_id(self) -> int | None:
        return self.scorer.token_bos() if self.scorer.token_bos() >= 0 else None

    def encode(self, text: str) -> list[int]:
        # the tokenizer's own policy (add_bos from the GGUF metadata), specials parsed: what HF's tokenizer does
        return list(self.scorer.tokenize(text.encode(), add_bos=self.scorer._model.add_bos_token(), special=True))

    def detokenize(self, ids: list[int]) -> str:
        return str(self.scorer.detokenize(ids).decode("utf-8", errors="replace"))

    def logprobs(self, ids: list[int]) -> np.ndarray:
        self.scorer.reset()
        self.scorer.eval(ids)
        return log_softmax(np.array(self.scorer.scores[: len(ids)], dtype=np.float32))

    def greedy(self, ids: list[int], n: int) -> list[int]:
        llm = self.scorer
        llm.reset()
        llm.eval(ids)
        out: list[int] = []
        for _ in range(n):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(token)
            llm.eval([token])
        return out

    def chat_template(self) -> str | None:
        return self.scorer.metadata.get("tokenizer.chat_template")

    def render_chat(self, messages: Messages) -> str | None:
        return render_chat(self.scorer, messages)

    def generate(self, batch: Sequence[Messages], sampling: Sampling, batch_index: int = 0) -> tuple[list[list[str]], int]:
        """`sampling.n` completions per conversation, the samples spread over a pool of contexts."""
        jobs = [(i, j) for i in range(len(batch)) for j in range(sampling.n)]

        def one(job: tuple[int, int]) -> tuple[str, int]:
            i, j = job
            llm = self._take()
            try:
                kwargs: dict[str, Any] = dict(
                    temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_new_tokens,
                    seed=sample_seed(sampling.seed, batch_index, i, j),
                )  # fmt: skip
                llm.reset()
                if self.use_chat_template:
                    resp: Any = llm.create_chat_completion(messages=batch[i], **kwargs)  # type: ignore[arg-type]
                    text = resp["choices"][0]["message"]["content"] or ""
                else:
                    resp = llm.create_completion(prompt="\n\n".join(m["content"] for m in batch[i]), **kwargs)
                    text = resp["choices"][0]["text"]
                return text, int(resp["usage"]["completion_tokens"])
            finally:
                self._contexts.put(llm)

        workers = min(self.parallel, len(jobs)) or 1
        if workers == 1:
            results = [one(job) for job in jobs]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(one, jobs))
        out: list[list[str]] = [[] for _ in batch]
        for (i, _), (text, _) in zip(jobs, results, strict=True):
            out[i].append(text)
        return out, sum(n for _, n in results)

    def _take(self) -> Any:
        """A free generation context, opening one more while fewer than `parallel` exist."""
        with self._lock:
            if self._contexts.empty() and self._made < self.parallel:
                self._made += 1
                return open_llama(self.path, self.n_ctx)
        return self._contexts.get()

    def close(self) -> None:
        self._scorer = None
        while not self._contexts.empty():
            self._contexts.get_nowait()
