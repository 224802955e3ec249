"""The gguf engine: a pool of llama.cpp contexts, one generation each, with llama.cpp's own samplers."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from halo_pipeline.runtimes import common_prefix, log_softmax
from halo_pipeline.runtimes.gguf import usable_cores
from halo_pipeline.serving.core import END, Engine, Generation, Step, load_tokenizer, mean_pool, scores_to_logprobs, step_of


@dataclass(eq=False)
class _Slot:
    """A context of the pool, what its KV cache was computed with, and how many threads it decodes with."""

    llm: Any
    loras: dict[str, Any] = field(default_factory=dict)  # adapter name -> llama.cpp adapter, loaded for this context's model
    adapter: str | None = None  # the adapter its cached tokens were computed through
    threads: int = 1


class CpuIdle:
    """How many of this process's cores sat idle lately, from /proc/stat (Linux; elsewhere: never quiet)."""

    def __init__(self, cpus: set[int] | None = None) -> None:
        self.names = {f"cpu{c}" for c in (cpus if cpus is not None else _cpus())}
        self.mark: tuple[float, int, int] | None = None  # (when, idle jiffies, total jiffies)

    def _read(self) -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                lines = f.read().splitlines()
        except OSError:
            return None
        idle = total = 0
        for line in lines:
            parts = line.split()
            if parts and parts[0] in self.names:
                values = [int(v) for v in parts[1:9]]
                idle += values[3] + values[4]  # idle + iowait
                total += sum(values)
        return idle, total

    def quiet(self, cores: int) -> bool:
        """True when at least ~`cores` cores were idle over the last 0.1-1 s (a window restarts after a second)."""
        now, reading = time.monotonic(), self._read()
        if reading is None or not self.names:
            return False
        if self.mark is None or now - self.mark[0] > 1.0:
            self.mark = (now, *reading)
            return False
        if now - self.mark[0] < 0.1:  # /proc/stat counts in 10 ms ticks: wait for a window worth reading
            return False
        _, idle0, total0 = self.mark
        self.mark = (now, *reading)
        busy = reading[1] - total0
        return busy > 0 and (reading[0] - idle0) / busy * len(self.names) >= 0.7 * cores


class ThreadPolicy:
    """How many threads a decode gets. Several generations at once: one thread each (single-threaded contexts
    beat multi-threaded ones sharing the cores). A lone generation may use every core ("solo", ~1.4x a single
    thread on an idle machine here) -- but a multi-threaded decode collapses when another process holds a core
    (ggml's OpenMP threads wait for each other at every barrier: 3-10 tokens/s against 40-60 on one thread,
    measured on this shared machine). So a lone generation starts on one thread, goes solo only when the other
    cores were idle meanwhile, and stays solo while its tokens beat the single-threaded ones; a solo token twice
    as slow ends it at once. After solo loses, it is tried again after `PROBE_S`, an interval that doubles each
    time it loses again (up to `MAX_PROBE_S`). A prompt is prefilled solo only while solo is the measured winner."""

    PROBE_S = 5.0
    MAX_PROBE_S = 80.0

    def __init__(self, solo: int, idle: CpuIdle | None = None) -> None:
        self.solo = max(1, solo)
        self.idle = idle or CpuIdle()
        self.seconds: dict[int, float] = {}  # threads -> seconds per token of lone decodes (moving average)
        self.when: dict[int, float] = {}
        self.interval = self.PROBE_S
        self.lock = threading.Lock()

    def _fresh(self, n: int, now: float) -> bool:
        return n in self.seconds and now - self.when[n] <= self.interval

    def choose(self, lone: bool, probe: bool = True) -> int:
        if self.solo == 1 or not lone:
            return 1
        now = time.monotonic()
        with self.lock:
            if self._fresh(self.solo, now) and 1 in self.seconds and self.seconds[self.solo] <= self.seconds[1]:
                return self.solo  # the measured winner
            if not probe or not self._fresh(1, now) or self._fresh(self.solo, now):
                return 1  # time one thread first; solo lost lately
            return self.solo if self.idle.quiet(self.solo - 1) else 1

    def record(self, threads: int, seconds: float) -> None:
        now = time.monotonic()
        with self.lock:
            stale = not self._fresh(threads, now)
            single = self.seconds.get(1)
            if threads == self.solo and single is not None and seconds > 2 * single:
                self.seconds[threads] = seconds  # a token twice as slow: the cores are taken, leave now
            else:
                self.seconds[threads] = seconds if stale else 0.7 * self.seconds[threads] + 0.3 * seconds
            self.when[threads] = now
            if threads == self.solo and single is not None and (stale or self.seconds[threads] > single):
                won = self.seconds[threads] <= single
                self.interval = self.PROBE_S if won else min(self.interval * 2, self.MAX_PROBE_S)


def _cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set()


class GGUFEngine(Engine):
    """llama-cpp-python: a pool of contexts, one request each, so requests run in parallel (llama.cpp
    releases the GIL). A request takes the free context whose cached tokens share the longest prefix
    with its prompt (computed through the same adapter), and only the rest is evaluated. Sampling is
    llama.cpp's own sampler chain per request (logit bias, OpenAI's penalties, top-k/p, temperature, seeded
    draw), so a seeded request samples the same tokens whichever context runs it. Prompt log-probs come from
    a separate `logits_all` context, scored position by position (llama_cpp.server's echo log-probs are shifted
    by one); embeddings from an `embedding=True` context. LoRA adapters (GGUF LoRA files) are loaded into
    every context and applied per request."""

    name = "gguf"

    def __init__(
        self,
        path: Path,
        parallel: int = 4,
        n_ctx: int = 2048,
        threads: int | None = None,
        adapters: dict[str, Path] | None = None,
    ) -> None:
        super().__init__(path)
        from halo_pipeline.runtimes.formats import gguf_context_length, gguf_file
        from halo_pipeline.runtimes.gguf import gguf_kind, lora_adapter, open_llama, set_threads

        model = gguf_file(path)
        if model is None:
            raise FileNotFoundError(f"{path}: no .gguf file")
        self.model_file = model
        self.context_length = min(n_ctx, gguf_context_length(model) or n_ctx)
        base = path if path.is_dir() else path.parent
        self.tokenizer = load_tokenizer(base) if (base / "tokenizer.json").is_file() else None
        self.adapters = dict(adapters or {})
        for name, adapter in self.adapters.items():
            if gguf_kind(adapter) != "adapter":
                raise ValueError(f"--lora {name}={adapter}: not a GGUF LoRA adapter (llama.cpp's convert_lora_to_gguf.py makes one)")
        self.slots = [_Slot(open_llama(model, self.context_length, threads=1)) for _ in range(parallel)]
        for slot in self.slots:  # prompts too on one thread until the policy says otherwise (llama-cpp-python: every core)
            set_threads(slot.llm, 1)
        for slot in self.slots:  # every context gets every adapter now: a broken one fails at start
            slot.loras = {name: lora_adapter(slot.llm, a) for name, a in self.adapters.items()}
        self.free = list(self.slots)
        self.pool_lock = threading.Lock()
        self.available = threading.Semaphore(parallel)
        self.active = 0  # generations running (a lone one may use every core)
        self.policy = ThreadPolicy(usable_cores() if threads is None else threads)
        self.scorer: _Slot | None = None
        self.embedder: _Slot | None = None
        self.scorer_lock = threading.Lock()
        first = self.slots[0].llm
        self.eos_ids = {first.token_eos()}
        self.vocab_size = int(first.n_vocab())
        self.closed = False

    @property
    def capacity(self) -> int:
        return len(self.slots)

    @property
    def busy(self) -> int:
        return len(self.slots) - len(self.free)

    # -- text: the HF tokenizer beside the export, else llama.cpp's own ------------------------
    def encode(self, text: str) -> list[int]:
        if self.tokenizer is not None:
            return super().encode(text)
        return list(self.slots[0].llm.tokenize(text.encode(), add_bos=False, special=True))

    def decode(self, ids: list[int], special: bool = False) -> str:
        if self.tokenizer is not None:
            return super().decode(ids, special)
        return str(self.slots[0].llm.detokenize(ids, special=special).decode("utf-8", errors="replace"))

    def token_bytes(self, token: int) -> bytes:
        if self.tokenizer is not None:
            return super().token_bytes(token)
        return bytes(self.slots[0].llm._model.token_to_piece(token, True))

    def guidance_tokenizer(self) -> Any:
        if self.tokenizer is not None:
            return super().guidance_tokenizer()
        import llguidance.llamacpp  # llama.cpp's own vocabulary

        vocab = self.slots[0].llm._model.vocab
        return llguidance.llamacpp.lltokenizer_from_vocab(vocab, n_vocab=self.vocab_size, eos_token=sorted(self.eos_ids))

    def chat_template(self) -> str | None:
        if self.tokenizer is not None:
            return super().chat_template()
        return self.slots[0].llm.metadata.get("tokenizer.chat_template") or None

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        template = self.chat_template()
        if self.tokenizer is not None or not template:
            return super().render_chat(messages, tools)
        from transformers.utils.chat_template_utils import render_jinja_template  # the template stored in the GGUF file

        llm = self.slots[0].llm
        eos = llm.detokenize([llm.token_eos()], special=True).decode(errors="replace")
        bos = llm.detokenize([llm.token_bos()], special=True).decode(errors="replace") if llm.token_bos() >= 0 else ""
        rendered: Any = render_jinja_template(
            [messages],
            tools=list(tools) if tools else None,
            chat_template=template,
            add_generation_prompt=True,
            bos_token=bos,
            eos_token=eos,
        )
        return str(rendered[0][0])

    # -- generation ----------------------------------------------------------------------------
    def submit(self, generation: Generation) -> None:
        threading.Thread(target=self._run, args=(generation,), daemon=True).start()

    def _take(self, prompt: list[int], adapter: str | None) -> _Slot | None:
        self.available.acquire()
        with self.pool_lock:
            if self.closed:
                self.available.release()
                return None

            def shared(slot: _Slot) -> int:
                if slot.adapter != adapter:
                    return 0
                return common_prefix(slot.llm.input_ids[: slot.llm.n_tokens], prompt)

            best = max(self.free, key=shared)
            if self.reuse_prefix and shared(best) > 0:
                self.prefix_hits += 1
            self.free.remove(best)
            self.active += 1
            return best

    def _give(self, slot: _Slot) -> None:
        with self.pool_lock:
            self.free.append(slot)
            self.active -= 1
        self.available.release()

    def _threads(self, slot: _Slot, probe: bool = True) -> int:
        """Set the slot's threads for its next decode; returns them (1 unless it is the only generation running)."""
        from halo_pipeline.runtimes.gguf import set_threads

        want = self.policy.choose(self.active == 1, probe)
        if slot.threads != want:
            set_threads(slot.llm, want)
            slot.threads = want
        return want

    def _run(self, gen: Generation) -> None:
        from halo_pipeline.runtimes.gguf import last_logits, make_sampler, sample, use_lora

        slot = None if gen.cancelled.is_set() else self._take(gen.prompt, gen.adapter)
        if slot is None or gen.cancelled.is_set():  # gone while it waited for a context: skip its prefill
            if slot is not None:
                self._give(slot)
            gen.finish_reason = "cancelled"
            gen.emit(END)
            return
        try:
            llm, s = slot.llm, gen.sampling
            sampler = make_sampler(
                llm,
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=s.top_k,
                seed=s.seed,
                logit_bias=s.logit_bias,
                presence_penalty=s.presence_penalty,
                frequency_penalty=s.frequency_penalty,
            )
            if slot.adapter != gen.adapter:  # the cached KV was computed through another adapter: start over
                use_lora(llm, slot.loras.get(gen.adapter) if gen.adapter else None)
                slot.adapter = gen.adapter
                llm.reset()
            prompt = gen.prompt
            reuse = 0
            if self.reuse_prefix and llm.n_tokens:  # keep the cached prefix; at least one token is fed, for its logits
                reuse = min(common_prefix(llm.input_ids[: llm.n_tokens], prompt), len(prompt) - 1)
            if reuse > 0 and llm._ctx.kv_cache_seq_rm(-1, reuse, -1):
                llm.n_tokens = reuse
            else:
                llm.reset()
                reuse = 0
            self._threads(slot, probe=False)
            llm.eval(prompt[reuse:])
            limit = min(s.max_tokens, self.context_length - len(prompt))
            count = 0
            guide = s.constraint.start() if s.constraint is not None else None  # its own walk of the output's grammar
            while True:
                if gen.cancelled.is_set():
                    gen.finish_reason = "cancelled"
                    break
                raw = last_logits(llm) if s.logprobs is not None else None  # the model's own, before any mask
                if guide is not None:  # only what the output's grammar allows next
                    _mask_logits(llm, guide.allowed(self.vocab_size))
                token = sample(llm, sampler)
                step = step_of(token, raw, s.logprobs) if raw is not None else Step(token)
                if token in self.eos_ids and not s.ignore_eos:
                    gen.finish_reason = "stop"
                    break
                if guide is not None:
                    guide.advance(token)
                gen.emit(step)
                count += 1
                if count >= limit:
                    gen.finish_reason = "length"
                    break
                threads = self._threads(slot)
                lone = self.active == 1
                started = time.perf_counter()
                llm.eval([token])
                if lone and self.active == 1:  # only a decode that had the cores to itself tells what a setting is worth
                    self.policy.record(threads, time.perf_counter() - started)
        except Exception as exc:
            gen.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._give(slot)
            gen.emit(END)

    # -- scoring and embeddings (the scoring thread, one at a time) ------------------------------
    def _aux(self, which: str, adapter: str | None) -> Any:
        """The scorer (logits_all) or embedder context, opened on first use, with the adapter applied."""
        from halo_pipeline.runtimes.gguf import lora_adapter, open_llama, use_lora

        if self.closed:
            raise RuntimeError("the engine is closed")
        slot: _Slot | None = getattr(self, which)
        if slot is None:
            if which == "scorer":
                llm = open_llama(self.model_file, self.context_length, logits_all=True)
            else:
                llm = open_llama(self.model_file, self.context_length, embedding=True, n_batch=self.context_length)
            slot = _Slot(llm, {name: lora_adapter(llm, a) for name, a in self.adapters.items()})
            setattr(self, which, slot)
        if slot.adapter != adapter:
            use_lora(slot.llm, slot.loras.get(adapter) if adapter else None)
            slot.adapter = adapter
        return slot.llm

    def prompt_logprobs(self, ids: list[int], adapter: str | None = None) -> list[tuple[float | None, dict[int, float]]]:
        with self.scorer_lock:
            scorer = self._aux("scorer", adapter)
            scorer.reset()
            scorer.eval(ids)
            logits = np.array(scorer.scores[: len(ids)], dtype=np.float32)
        return scores_to_logprobs(ids, log_softmax(logits))

    def embed(self, prompts: list[list[int]], adapter: str | None = None) -> list[list[float]]:
        from halo_pipeline.runtimes.gguf import embed_tokens

        with self.scorer_lock:
            embedder = self._aux("embedder", adapter)
            return [mean_pool(embed_tokens(embedder, ids)) for ids in prompts]

    def close(self) -> None:
        """Free the contexts once the generations on them have ended (one still in use after 5 s is left alone)."""
        with self.pool_lock:
            self.closed = True
        deadline = time.monotonic() + 5
        taken = 0
        while taken < len(self.slots) and self.available.acquire(timeout=max(0.0, deadline - time.monotonic())):
            taken += 1
        with self.pool_lock:
            for slot in self.free:
                slot.llm.close()
            self.free.clear()
        if self.scorer_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            for which in ("scorer", "embedder"):
                aux = getattr(self, which)
                if aux is not None:
                    aux.llm.close()
                    setattr(self, which, None)
            self.scorer_lock.release()
        for _ in range(taken):
            self.available.release()  # a request still waiting for a context finds the engine closed


def _mask_logits(llm: Any, allowed: np.ndarray) -> None:
    """-inf, in the context's own logits buffer, for every token not allowed: llama.cpp's sampler chain reads them next."""
    import llama_cpp

    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    np.ctypeslib.as_array(ptr, shape=(allowed.shape[0],))[~allowed] = -np.inf
