"""GGUF models with llama-cpp-python, in-process.

`open_llama` is the one place a llama.cpp context is built from a file. Generation decodes up to `parallel`
sequences together in a context (`gguf_batch`), a waiting sample taking the slot of a finished one, with
one single-threaded context per core while there is work for each (the prompts dealt out in turn; the
cores of a context that is done go to the others): on a small CPU that beats one context on every core,
whose threads meet at a barrier after every operation.
Every sample is seeded on its own and the work is split in a fixed way, so a run reproduces.
Scoring (log-probs, greedy) uses a separate `logits_all` context.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from halo_pipeline.runtimes import Messages, Sampling, log_softmax
from halo_pipeline.runtimes.constraints import Grammars, Guide, ResponseFormat
from halo_pipeline.runtimes.formats import gguf_context_length


def open_llama(
    path: Path,
    n_ctx: int = 2048,
    *,
    threads: int = 1,
    logits_all: bool = False,
    embedding: bool = False,
    seed: int = 0,
    n_batch: int | None = None,
) -> Any:
    """A llama.cpp context on a GGUF file, its context capped at what the model was trained for. One thread:
    several single-threaded contexts beat one multi-threaded context on a small CPU (ggml's threads spin).
    `n_batch`: tokens per decode call (an embedding context takes a whole input in one)."""
    from llama_cpp import Llama

    n_ctx = min(n_ctx, gguf_context_length(path) or n_ctx)
    extra: dict[str, Any] = {"n_batch": n_batch, "n_ubatch": n_batch} if n_batch else {}
    if embedding:  # every token's hidden state, pooled by the caller (the same mean pooling on every engine)
        import llama_cpp

        extra["pooling_type"] = llama_cpp.LLAMA_POOLING_TYPE_NONE
    return Llama(str(path), n_ctx=n_ctx, n_threads=threads, logits_all=logits_all, embedding=embedding, seed=seed, verbose=False, **extra)


# -- what serving asks of a context beyond the Llama class: LoRA adapters, threads, raw logits, samplers, embeddings


def lora_adapter(llm: Any, path: Path) -> Any:
    """A GGUF LoRA adapter loaded for this context's model (applied only once `use_lora` selects it)."""
    import llama_cpp

    adapter = llama_cpp.llama_adapter_lora_init(llm._model.model, str(path).encode())
    if not adapter:
        raise ValueError(f"{path}: llama.cpp could not load it as a LoRA adapter for {Path(llm.model_path).name}")
    return adapter


def use_lora(llm: Any, adapter: Any | None, scale: float = 1.0) -> None:
    """Apply one adapter (None: none) to the context's next decodes; the KV already cached was computed without it."""
    import ctypes

    import llama_cpp

    if adapter is None:
        llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, None, 0, None)
        return
    adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
    scales = (ctypes.c_float * 1)(scale)
    if llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, adapters, 1, scales):
        raise RuntimeError("llama.cpp refused the LoRA adapter for this context")


def set_threads(llm: Any, threads: int, threads_batch: int | None = None) -> None:
    """Threads for the context's next decodes (one token; a prompt batch)."""
    import llama_cpp

    llama_cpp.llama_set_n_threads(llm._ctx.ctx, threads, threads_batch or threads)


def last_logits(llm: Any) -> np.ndarray:
    """The raw logits after the context's last decode (a copy: the next decode overwrites them)."""
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def make_sampler(
    llm: Any,
    *,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
    seed: int | None = None,
    logit_bias: dict[int, float] | None = None,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
) -> Any:
    """llama.cpp's sampler chain for one generation, in llama.cpp's order: logit bias, penalties (OpenAI's,
    over every token this sampler has sampled), top-k, top-p, min-p, temperature, then a seeded draw (or argmax)."""
    import random

    from llama_cpp import _internals

    sampler = _internals.LlamaSampler()
    n_vocab = llm.n_vocab()
    if logit_bias:
        sampler.add_logit_bias(n_vocab, logit_bias)
    if presence_penalty or frequency_penalty:
        sampler.add_penalties(n_vocab, llm.n_ctx(), 1.0, frequency_penalty, presence_penalty)
    if temperature == 0:
        sampler.add_greedy()
        return sampler
    if top_k > 0:
        sampler.add_top_k(top_k)
    if top_p < 1.0:
        sampler.add_top_p(top_p, 1)
    if min_p > 0:
        sampler.add_min_p(min_p, 1)
    sampler.add_temp(temperature)
    sampler.add_dist(seed if seed is not None else random.randrange(2**31))
    return sampler


def sample(llm: Any, sampler: Any) -> int:
    """A token from the logits of the context's last decode (the sampler records it, for its penalties)."""
    return int(sampler.sample(llm._ctx, -1))


def embed_tokens(llm: Any, ids: list[int]) -> np.ndarray:
    """[tokens, dim]: the last hidden state (after the output norm) at each token, from an `embedding=True` context."""
    import llama_cpp

    llm._batch.reset()
    llm._batch.add_sequence(ids, 0, True)
    llm._ctx.kv_cache_clear()
    llm._ctx.decode(llm._batch)
    llm._batch.reset()
    n_embd = llm.n_embd()
    ptr = llama_cpp.llama_get_embeddings(llm._ctx.ctx)
    out = np.ctypeslib.as_array(ptr, shape=(len(ids) * n_embd,)).reshape(len(ids), n_embd).copy()
    llm._ctx.kv_cache_clear()
    return out


def gguf_kind(path: Path) -> str | None:
    """general.type of a GGUF file ("model", "adapter"), without loading it."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("general.type")
    return None if field is None else bytes(field.parts[field.data[0]]).decode()


def render_chat(llm: Any, messages: Messages) -> str | None:
    """A conversation through the chat template stored in a GGUF file (None when it has none)."""
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos = llm.detokenize([llm.token_eos()]).decode(errors="replace")
    bos = llm.detokenize([llm.token_bos()]).decode(errors="replace") if llm.token_bos() >= 0 else ""
    return str(Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)(messages=messages).prompt)  # type: ignore[arg-type]


# Default batch width of a context. Measured on SmolLM2-135M, 2 cores, the quickstart's synthesize (12 prompts
# x 2 samples x 96 tokens): 8 -> 148, 12 -> 161, 16 -> 162 tokens/s (a single-threaded step costs about the
# same per token from 8 to 32 sequences; a wider one needs fewer refill waves). Its KV cache is width x context.
PARALLEL = 16


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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
        self.parallel = max(1, parallel or PARALLEL)  # sequences decoded together
        self.grammars = Grammars(self)
        self._scorer: Any = None
        self._batched: list[Any] = []  # the batched generation contexts

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

    def greedy(self, ids: list[int], n: int, guide: Guide | None = None) -> list[int]:
        llm = self.scorer
        llm.reset()
        llm.eval(ids)
        out: list[int] = []
        for _ in range(n):
            row = llm.scores[llm.n_tokens - 1]
            picked = int(np.argmax(row)) if guide is None else guide.pick(np.asarray(row), self.eos_id)
            if picked is None:
                break
            token = picked
            out.append(token)
            llm.eval([token])
        return out

    @property
    def vocab_size(self) -> int:
        return int(self.scorer._model.n_vocab())

    def guidance_tokenizer(self) -> Any:
        """llama.cpp's own vocabulary as llguidance reads it (built once, by `Grammars`)."""
        import llguidance.llamacpp

        return llguidance.llamacpp.lltokenizer_from_vocab(self.scorer._model.vocab, n_vocab=self.vocab_size, eos_token=[self.eos_id])

    def chat_template(self) -> str | None:
        return self.scorer.metadata.get("tokenizer.chat_template")

    def render_chat(self, messages: Messages) -> str | None:
        return render_chat(self.scorer, messages)

    def generate(
        self, batch: Sequence[Messages], sampling: Sampling, batch_index: int = 0, response_format: ResponseFormat | None = None
    ) -> tuple[list[list[str]], int]:
        """`sampling.n` completions per conversation, up to `parallel` decoded together in each context; with a
        `response_format`, every completion follows it."""
        from halo_pipeline.runtimes.gguf_batch import CoreShare, Job

        constraint = self.grammars.compile(response_format.spec()) if response_format is not None else None
        jobs = []
        for i, messages in enumerate(batch):
            ids, stops = self._prompt(messages)
            jobs += [
                Job(ids, sample_seed(sampling.seed, batch_index, i, j), stops, constraint.start() if constraint else None)
                for j in range(sampling.n)
            ]
        if not jobs:
            return [[] for _ in batch], 0
        # the prompts dealt out to one context per core (as many as have a full width of samples to decode);
        # the samples of one prompt stay together, so they share its decoded prompt
        cores = usable_cores()
        count = max(1, min(cores, len(batch), -(-len(jobs) // self.parallel)))
        shares = [[k for k in range(len(jobs)) if (k // sampling.n) % count == c] for c in range(count)]
        seq_ctx = min(self.n_ctx, self.scorer._model.n_ctx_train() or self.n_ctx)
        seq_ctx = min(seq_ctx, -(-(max(len(j.prompt) for j in jobs) + sampling.max_new_tokens) // 256) * 256)
        width = min(self.parallel, max(len(share) for share in shares))
        contexts = self._contexts(count, width, seq_ctx)
        # llama.cpp's own defaults for a completion (top-k 40, min-p 0.05, as a plain create_completion loop)
        t, p = sampling.temperature, sampling.top_p

        def sampler(seed: int) -> Any:
            return make_sampler(self.scorer, temperature=t, top_p=p, top_k=40, min_p=0.05, seed=seed)

        share_cores = CoreShare(cores, count)

        def decode(c: int) -> list[tuple[str, int]]:
            with share_cores.running():
                return list(contexts[c].generate([jobs[k] for k in shares[c]], sampler, sampling.max_new_tokens, share_cores.threads))

        results: list[tuple[str, int]] = [("", 0)] * len(jobs)
        with ThreadPoolExecutor(count) as pool:  # llama.cpp releases the GIL while it decodes
            for share, done in zip(shares, pool.map(decode, range(count)), strict=True):
                for k, result in zip(share, done, strict=True):
                    results[k] = result
        out: list[list[str]] = [[] for _ in batch]
        for k, (text, _) in enumerate(results):
            out[k // sampling.n].append(text)
        return out, sum(n for _, n in results)

    def _prompt(self, messages: Messages) -> tuple[list[int], list[str]]:
        """Prompt tokens and stop strings, as llama-cpp-python's chat completion builds them (the GGUF's chat
        template, or the known format it matches); without the chat template the turns joined by blank lines."""
        llm = self.scorer
        if not self.use_chat_template:
            return list(llm.tokenize("\n\n".join(m["content"] for m in messages).encode(), add_bos=True, special=True)), []
        from llama_cpp import llama_chat_format as formats

        known = {"chatml": formats.format_chatml, "llama-2": formats.format_llama2, "llama-3": formats.format_llama3}
        known["mistral-instruct"] = formats.format_mistral_instruct
        if llm.chat_format in known:
            result = known[llm.chat_format](messages=messages)
        else:
            eos = llm.detokenize([llm.token_eos()]).decode(errors="replace")
            bos = llm.detokenize([llm.token_bos()]).decode(errors="replace") if llm.token_bos() >= 0 else ""
            template = llm.metadata.get("tokenizer.chat_template", "")
            result = formats.Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)(messages=messages)  # type: ignore[arg-type]
        ids = llm.tokenize(result.prompt.encode(), add_bos=not result.added_special, special=True)
        stops = [result.stop] if isinstance(result.stop, str) else list(result.stop or [])
        return list(ids), stops

    def _contexts(self, count: int, width: int, seq_ctx: int) -> list[Any]:
        """`count` batched generation contexts, kept while they are as many, as wide and as long."""
        from halo_pipeline.runtimes.gguf_batch import BatchedContext

        kept = self._batched
        if len(kept) != count or any(c.width < width or c.seq_ctx < seq_ctx for c in kept):
            for c in kept:
                c.close()
            self._batched = [BatchedContext(self.scorer, width, seq_ctx, threads=1) for _ in range(count)]
        return list(self._batched)

    def close(self) -> None:
        for c in self._batched:
            c.close()
        self._batched = []
        self._scorer = None
