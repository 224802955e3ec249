"""Engines behind the server: one interface, three runtimes.

An engine turns a prompt (token ids) and sampling settings into a stream of token ids, and scores
prompts (log-probs for `echo`). Generation runs in engine threads; tokens reach the asyncio side
through `Generation.tokens`, and `Generation.cancel()` (a client that went away, a stop string
seen) frees the slot at the next token.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from halo_pipeline.runtimes import log_softmax
from halo_pipeline.runtimes.gguf import render_chat as render_gguf_chat

END = object()  # marks the end of a generation's token stream
MIN_SHARED_PREFIX = 16  # tokens; shorter shared prefixes are not worth copying a cache for


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    ignore_eos: bool = False  # generate max_tokens regardless (benchmarks; vLLM's extension of the API)


@dataclass(eq=False)  # compared and hashed by identity: the server keeps its live ones in a set
class Generation:
    """One running generation: the engine thread puts token ids, the request handler reads them."""

    prompt: list[int]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    tokens: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finish_reason: str = "length"
    error: str | None = None

    def emit(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.tokens.put_nowait, item)

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    name = "engine"
    streaming = True
    can_embed = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tokenizer: Any = None
        self.context_length = 2048
        self.vocab_size = 0  # token ids the model takes: [0, vocab_size)
        self.eos_ids: set[int] = set()

    # text <-> ids, via the model's HF tokenizer (every export keeps one next to it)
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        # ChatML when a model has none
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"

    def submit(self, generation: Generation) -> None:
        raise NotImplementedError

    def prompt_logprobs(self, ids: list[int]) -> list[tuple[float | None, dict[int, float]]]:
        """Per prompt token: its log-prob given the tokens before it (None for the first), and the top-5 there."""
        raise NotImplementedError

    def embed(self, prompts: list[list[int]]) -> list[list[float]]:
        raise NotImplementedError

    @property
    def capacity(self) -> int:
        return 1

    @property
    def busy(self) -> int:
        """Sequences the engine is generating right now (a cancelled one leaves at its next token)."""
        return 0

    def close(self) -> None:
        pass


def _load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _top(logprobs: np.ndarray, k: int = 5) -> dict[int, float]:
    idx = np.argpartition(-logprobs, k)[:k]
    return {int(i): float(logprobs[i]) for i in idx[np.argsort(-logprobs[idx])]}


def _scores_to_logprobs(ids: list[int], logprobs: np.ndarray) -> list[tuple[float | None, dict[int, float]]]:
    out: list[tuple[float | None, dict[int, float]]] = [(None, {})]
    for i in range(1, len(ids)):
        out.append((float(logprobs[i - 1, ids[i]]), _top(logprobs[i - 1])))
    return out


class TorchEngine(Engine):
    """transformers, with a scheduler that admits requests between decode steps (continuous batching).

    Each admitted request is prefilled alone (reusing the KV of the longest cached prompt prefix with
    exactly the same token ids), then joins the running batch: KV caches are left-padded to a common
    length and decoded together, one token per sequence per step, with per-request sampling.
    """

    name = "torch"
    can_embed = True

    def __init__(self, path: Path, max_batch: int = 8, prefix_cache: int = 8, device: str = "cpu", dtype: str = "float32") -> None:
        super().__init__(path)
        import torch

        from halo_pipeline.runtimes.hf import load_causal_lm

        self.torch = torch
        self.device = device  # the backend's device and dtype (the CPU in fp32 by default)
        self.model, self.tokenizer = load_causal_lm(path, device, dtype)
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        self.vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None} | {self.tokenizer.eos_token_id} - {None}
        self.max_batch = max_batch
        self.running = 0
        self.prefix_cache: dict[tuple[int, ...], Any] = {}  # prompt ids -> (per-layer K/V, last logits); LRU
        self.prefix_cache_size = prefix_cache
        self.prefix_hits = 0
        self.inbox: queue.Queue[Generation] = queue.Queue()
        self.lock = threading.Lock()  # one forward at a time (scoring and embeddings share the model)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="torch-engine", daemon=True)
        self.thread.start()

    @property
    def capacity(self) -> int:
        return self.max_batch

    @property
    def busy(self) -> int:
        return self.running

    def submit(self, generation: Generation) -> None:
        self.inbox.put(generation)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)

    # -- the scheduler -----------------------------------------------------------------------
    def _loop(self) -> None:
        torch = self.torch
        batch: list[dict[str, Any]] = []  # each: generation, generated count, rng
        self.running = 0
        layers: list[tuple[Any, Any]] = []  # per layer (K, V): [B, heads, T, dim], left-padded
        mask: Any = None  # [B, T] 1 = real token
        while not self._stop.is_set():
            if not batch:
                try:
                    first = self.inbox.get(timeout=0.1)
                except queue.Empty:
                    continue
                pending = [first]
            else:
                pending = []
            while len(batch) + len(pending) < self.max_batch:
                try:
                    pending.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            for gen in pending:  # admit: prefill alone, then join the batch
                if gen.cancelled.is_set():
                    gen.finish_reason = "cancelled"
                    gen.emit(END)
                    continue
                try:
                    with self.lock, torch.no_grad():
                        kv, logits = self._prefill(gen.prompt)
                except Exception as exc:  # a bad request must not take the scheduler down
                    gen.error = f"{type(exc).__name__}: {exc}"
                    gen.emit(END)
                    continue
                entry = {"gen": gen, "count": 0, "rng": _rng(torch, gen.sampling.seed), "length": len(gen.prompt)}
                token = self._sample(logits, gen.sampling, entry["rng"])
                if self._deliver(entry, token):
                    layers, mask = _join(torch, layers, mask, kv)
                    entry["last"] = token
                    batch.append(entry)
            self.running = len(batch)
            if not batch:
                continue
            with self.lock, torch.no_grad():
                ids = torch.tensor([[e["last"]] for e in batch], device=self.device)
                positions = torch.tensor([[e["length"] + e["count"] - 1] for e in batch], device=self.device)
                mask = torch.cat([mask, torch.ones(len(batch), 1, dtype=mask.dtype, device=self.device)], dim=1)
                from transformers import DynamicCache

                cache = DynamicCache(ddp_cache_data=layers)
                out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
                layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
                logits = out.logits[:, -1, :]
            keep = []
            for i, entry in enumerate(batch):
                token = self._sample(logits[i], entry["gen"].sampling, entry["rng"])
                if self._deliver(entry, token):
                    entry["last"] = token
                    keep.append(i)
            if len(keep) < len(batch):
                batch = [batch[i] for i in keep]
                if batch:
                    index = torch.tensor(keep, device=self.device)
                    layers = [(k.index_select(0, index), v.index_select(0, index)) for k, v in layers]
                    mask = mask.index_select(0, index)
                    real = mask.sum(dim=0) > 0  # drop columns that are padding for every sequence left
                    start = int(real.nonzero()[0]) if real.any() else 0
                    if start:
                        layers = [(k[:, :, start:], v[:, :, start:]) for k, v in layers]
                        mask = mask[:, start:]
                else:
                    layers, mask = [], None
            self.running = len(batch)

    def _deliver(self, entry: dict[str, Any], token: int) -> bool:
        """Hand a sampled token to its request; False when the request is finished."""
        gen = entry["gen"]
        if gen.cancelled.is_set():
            gen.finish_reason = "cancelled"
            gen.emit(END)
            return False
        if token in self.eos_ids and not gen.sampling.ignore_eos:
            gen.finish_reason = "stop"
            gen.emit(END)
            return False
        entry["count"] += 1
        gen.emit(token)
        if entry["count"] >= gen.sampling.max_tokens or entry["length"] + entry["count"] >= self.context_length:
            gen.finish_reason = "length"
            gen.emit(END)
            return False
        return True

    def _prefill(self, prompt: list[int]) -> tuple[list[tuple[Any, Any]], Any]:
        torch = self.torch
        from transformers import DynamicCache

        key = tuple(prompt)
        if key in self.prefix_cache:  # the whole prompt was seen: reuse it as is
            kv, logits = self.prefix_cache.pop(key)
            self.prefix_cache[key] = (kv, logits)
            self.prefix_hits += 1
            return [(k.clone(), v.clone()) for k, v in kv], logits
        best, shared = None, 0
        for cached in self.prefix_cache:  # the cached prompt sharing the longest token prefix with this one
            n = _common_prefix(cached, key)
            if n > shared:
                best, shared = cached, n
        shared = min(shared, len(prompt) - 1)  # at least one token is fed, for the next-token logits
        cache = None
        feed = prompt
        if best is not None and shared >= MIN_SHARED_PREFIX:
            kv, _ = self.prefix_cache[best]
            cache = DynamicCache(ddp_cache_data=[(k[:, :, :shared].clone(), v[:, :, :shared].clone()) for k, v in kv])
            feed = prompt[shared:]
            self.prefix_hits += 1
        out = self.model(
            input_ids=torch.tensor([feed], device=self.device),
            position_ids=torch.arange(len(prompt) - len(feed), len(prompt), device=self.device).unsqueeze(0),
            past_key_values=cache if cache is not None else DynamicCache(),
            use_cache=True,
        )
        kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        logits = out.logits[0, -1, :]
        self.prefix_cache[key] = ([(k.clone(), v.clone()) for k, v in kv], logits)
        while len(self.prefix_cache) > self.prefix_cache_size:
            self.prefix_cache.pop(next(iter(self.prefix_cache)))
        return kv, logits

    def _sample(self, logits: Any, s: Sampling, rng: Any) -> int:
        torch = self.torch
        if s.temperature == 0:
            return int(logits.argmax())
        scores = logits.float() / s.temperature
        if s.top_k > 0:
            kth = torch.topk(scores, min(s.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if s.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            outside = sorted_probs.cumsum(0) - sorted_probs > s.top_p
            sorted_probs[outside] = 0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs / probs.sum(), 1, generator=rng))

    # -- scoring and embeddings ---------------------------------------------------------------
    def prompt_logprobs(self, ids: list[int]) -> list[tuple[float | None, dict[int, float]]]:
        with self.lock, self.torch.no_grad():
            logits = self.model(self.torch.tensor([ids], device=self.device)).logits[0].float().cpu().numpy()
        return _scores_to_logprobs(ids, log_softmax(logits))

    def embed(self, prompts: list[list[int]]) -> list[list[float]]:
        out = []
        with self.lock, self.torch.no_grad():
            for ids in prompts:
                hidden = (
                    self.model(self.torch.tensor([ids], device=self.device), output_hidden_states=True).hidden_states[-1][0].float().cpu()
                )
                vec = hidden.mean(dim=0)
                out.append((vec / vec.norm()).tolist())
        return out


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.nonzero(np.asarray(a[:n]) != np.asarray(b[:n]))[0]
    return int(diff[0]) if diff.size else n


def _rng(torch: Any, seed: int | None) -> Any:
    rng = torch.Generator()
    rng.manual_seed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, (1,))))
    return rng


def _join(torch: Any, layers: list[tuple[Any, Any]], mask: Any, kv: list[tuple[Any, Any]]) -> tuple[list[tuple[Any, Any]], Any]:
    """Add one sequence's KV (batch 1) to the batch, left-padding whichever side is shorter."""
    length = kv[0][0].shape[2]
    new_mask = torch.ones(1, length, dtype=torch.long, device=kv[0][0].device)
    if not layers:
        return kv, new_mask
    total = layers[0][0].shape[2]
    width = max(total, length)

    def pad(t: Any, to: int) -> Any:
        return t if t.shape[2] == to else torch.nn.functional.pad(t, (0, 0, to - t.shape[2], 0))

    joined = [
        (torch.cat([pad(k, width), pad(nk, width)]), torch.cat([pad(v, width), pad(nv, width)]))
        for (k, v), (nk, nv) in zip(layers, kv, strict=True)
    ]
    mask = torch.cat([torch.nn.functional.pad(mask, (width - total, 0)), torch.nn.functional.pad(new_mask, (width - length, 0))])
    return joined, mask


def _relay(tokens: Any, gen: Generation, eos_ids: set[int], max_tokens: int) -> None:
    """Hand an engine's sampled tokens to the request until it is cancelled, ends, or has max_tokens."""
    for count, token in enumerate(tokens, 1):
        if gen.cancelled.is_set():
            gen.finish_reason = "cancelled"
            return
        if token in eos_ids and not gen.sampling.ignore_eos:
            gen.finish_reason = "stop"
            return
        gen.emit(token)
        if count >= max_tokens:
            gen.finish_reason = "length"
            return


class GGUFEngine(Engine):
    """llama-cpp-python: a pool of contexts, one request each, so requests run in parallel (llama.cpp
    releases the GIL). A request takes the free context whose cached tokens share the longest prefix
    with its prompt; llama-cpp-python then evaluates only the rest (same token ids, so the reused KV is
    exactly what a fresh context would compute). Prompt log-probs come from a separate `logits_all`
    context, scored position by position (llama_cpp.server's echo log-probs are shifted by one)."""

    name = "gguf"

    def __init__(self, path: Path, parallel: int = 4, n_ctx: int = 2048, threads: int | None = None) -> None:
        super().__init__(path)
        from halo_pipeline.runtimes.formats import gguf_context_length, gguf_file
        from halo_pipeline.runtimes.gguf import open_llama

        model = gguf_file(path)
        if model is None:
            raise FileNotFoundError(f"{path}: no .gguf file")
        self.model_file = model
        self.context_length = min(n_ctx, gguf_context_length(model) or n_ctx)
        base = path if path.is_dir() else path.parent
        self.tokenizer = _load_tokenizer(base) if (base / "tokenizer.json").is_file() else None
        self.contexts = [open_llama(model, self.context_length, threads=threads or 1) for _ in range(parallel)]
        self.free = list(self.contexts)
        self.pool_lock = threading.Lock()
        self.available = threading.Semaphore(parallel)
        self.scorer: Any = None
        self.scorer_lock = threading.Lock()
        self.eos_ids = {self.contexts[0].token_eos()}
        self.vocab_size = int(self.contexts[0].n_vocab())
        self.prefix_hits = 0
        self.reuse_prefix = True
        self.closed = False

    @property
    def capacity(self) -> int:
        return len(self.contexts)

    @property
    def busy(self) -> int:
        return len(self.contexts) - len(self.free)

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is not None:
            return super().encode(text)
        return list(self.contexts[0].tokenize(text.encode(), add_bos=False, special=True))

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is not None:
            return super().decode(ids)
        return self.contexts[0].detokenize(ids).decode("utf-8", errors="replace")

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if self.tokenizer is not None:
            return super().chat_prompt(messages)
        return render_gguf_chat(self.contexts[0], messages) or super().chat_prompt(messages)

    def submit(self, generation: Generation) -> None:
        threading.Thread(target=self._run, args=(generation,), daemon=True).start()

    def _take(self, prompt: list[int]) -> Any:
        self.available.acquire()
        with self.pool_lock:
            if self.closed:
                self.available.release()
                return None

            def shared(llm: Any) -> int:
                cached = list(llm.input_ids[: llm.n_tokens])
                n = 0
                for a, b in zip(cached, prompt, strict=False):
                    if a != b:
                        break
                    n += 1
                return n

            best = max(self.free, key=shared)
            if shared(best) > 0:
                self.prefix_hits += 1
            self.free.remove(best)
            return best

    def _give(self, llm: Any) -> None:
        with self.pool_lock:
            self.free.append(llm)
        self.available.release()

    def _run(self, gen: Generation) -> None:
        llm = None if gen.cancelled.is_set() else self._take(gen.prompt)
        if llm is None or gen.cancelled.is_set():  # gone while it waited for a context: skip its prefill
            if llm is not None:
                self._give(llm)
            gen.finish_reason = "cancelled"
            gen.emit(END)
            return
        try:
            s = gen.sampling
            if s.seed is not None:
                llm.set_seed(s.seed)
            greedy = s.temperature == 0
            if not self.reuse_prefix:
                llm.reset()  # forget the cached tokens: the whole prompt is evaluated again
            stream = llm.generate(
                gen.prompt, temp=0.0 if greedy else s.temperature, top_p=s.top_p, top_k=1 if greedy else (s.top_k or 0), reset=True
            )
            _relay((int(t) for t in stream), gen, self.eos_ids, min(s.max_tokens, self.context_length - len(gen.prompt)))
        except Exception as exc:
            gen.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._give(llm)
            gen.emit(END)

    def prompt_logprobs(self, ids: list[int]) -> list[tuple[float | None, dict[int, float]]]:
        with self.scorer_lock:
            if self.closed:
                raise RuntimeError("the engine is closed")
            if self.scorer is None:
                from halo_pipeline.runtimes.gguf import open_llama

                self.scorer = open_llama(self.model_file, self.context_length, logits_all=True)
            self.scorer.reset()
            self.scorer.eval(ids)
            logits = np.array(self.scorer.scores[: len(ids)], dtype=np.float32)
        return _scores_to_logprobs(ids, log_softmax(logits))

    def close(self) -> None:
        """Free the contexts once the generations on them have ended (one still in use after 5 s is left alone)."""
        with self.pool_lock:
            self.closed = True
        deadline = time.monotonic() + 5
        taken = 0
        while taken < len(self.contexts) and self.available.acquire(timeout=max(0.0, deadline - time.monotonic())):
            taken += 1
        with self.pool_lock:
            for llm in self.free:
                llm.close()
            self.free.clear()
        if self.scorer_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            if self.scorer is not None:
                self.scorer.close()
                self.scorer = None
            self.scorer_lock.release()
        for _ in range(taken):
            self.available.release()  # a request still waiting for a context finds the engine closed


class MLXEngine(Engine):
    """mlx-lm: `generate_step`, one request at a time (the others wait in the queue)."""

    name = "mlx"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        from halo_pipeline.runtimes.mlx import MLXRuntime

        runtime = MLXRuntime(path)
        self.model, wrapper = runtime.model, runtime.tokenizer
        self.tokenizer = wrapper._tokenizer if hasattr(wrapper, "_tokenizer") else wrapper
        self.wrapper = wrapper
        self.eos_ids = set(getattr(wrapper, "eos_token_ids", None) or [self.tokenizer.eos_token_id])
        import json

        config = json.loads((path / "config.json").read_text())
        self.context_length = int(config.get("max_position_embeddings", 2048))
        self.vocab_size = int(config.get("vocab_size") or len(self.tokenizer))
        self.lock = threading.Lock()

    @property
    def busy(self) -> int:
        return int(self.lock.locked())

    def submit(self, generation: Generation) -> None:
        threading.Thread(target=self._run, args=(generation,), daemon=True).start()

    def _run(self, gen: Generation) -> None:
        import mlx.core as mx
        from mlx_lm.generate import generate_step
        from mlx_lm.sample_utils import make_sampler

        s = gen.sampling
        try:
            with self.lock:
                if gen.cancelled.is_set():  # gone while it waited for the model
                    gen.finish_reason = "cancelled"
                    return
                if s.seed is not None:
                    mx.random.seed(s.seed)
                sampler = make_sampler(temp=s.temperature, top_p=s.top_p if s.top_p < 1 else 0.0, top_k=s.top_k or 0)
                max_tokens = min(s.max_tokens, self.context_length - len(gen.prompt))
                # generate_step, not stream_generate: the latter ends at EOS itself, and ignore_eos must go on
                steps = generate_step(mx.array(gen.prompt), self.model, max_tokens=max_tokens + 1, sampler=sampler)
                _relay((int(sampled) for sampled, _ in steps), gen, self.eos_ids, max_tokens)
        except Exception as exc:
            gen.error = f"{type(exc).__name__}: {exc}"
        finally:
            gen.emit(END)

    def prompt_logprobs(self, ids: list[int]) -> list[tuple[float | None, dict[int, float]]]:
        import mlx.core as mx

        with self.lock:
            logits = np.array(self.model(mx.array([ids]))[0].astype(mx.float32))
        return _scores_to_logprobs(ids, log_softmax(logits))


ENGINES = ("torch", "gguf", "mlx")  # the serving engine of each model format: hf -> torch, gguf, mlx


def pick_engine(path: Path, engine: str = "auto") -> str:
    from halo_pipeline.runtimes.formats import model_format

    if engine != "auto":
        return engine
    return {"gguf": "gguf", "mlx": "mlx", "hf": "torch"}.get(model_format(path), "unknown")


def load_engine(path: Path, engine: str = "auto", parallel: int = 4, backend: Any = None) -> Engine:
    """The engine for the model's format; `backend` (the device group) puts the torch engine on its device and dtype."""
    from halo_pipeline.runtimes import as_backend

    chosen = pick_engine(path, engine)
    if chosen == "gguf":
        return GGUFEngine(path, parallel=parallel)
    if chosen == "mlx":
        return MLXEngine(path)
    if chosen == "torch":
        device = as_backend(backend)
        return TorchEngine(path, max_batch=max(parallel, 1) * 2, device=device.device, dtype=device.dtype)
    raise ValueError(f"{path} is not a model the server can load (an HF directory, a GGUF export or an MLX directory)")
