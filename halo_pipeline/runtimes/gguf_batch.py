"""Batched decoding in one llama.cpp context: many sequences, one `llama_decode` per step.

Each step carries one token for every running sequence (its own `seq_id`) plus the prompts of the
sequences admitted at that step; a finished sequence frees its slot and the next waiting sample takes it.
A prompt is decoded only past the longest beginning of it the context already has: the cells another
sequence holds (a finished sample's prompt, a running sample of the same prompt — the chat template's
system turn is common to every prompt) are shared by reference (`llama_memory_seq_cp`, one KV store), and
the samples of one prompt admitted together decode it once. Admission is in job order and every sample
draws from its own seeded sampler chain, so the same inputs give the same texts on every run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from halo_pipeline.runtimes import common_prefix


@dataclass
class Job:
    """One sample to generate: its prompt tokens, its sampler's seed, the strings that end it, and the walk of an
    output constraint it follows (`constraints.Guide`; None: unconstrained)."""

    prompt: list[int]
    seed: int
    stops: list[str] = field(default_factory=list)
    guide: Any = None


@dataclass
class _Slot:
    job: int
    sampler: Any
    n_past: int = 0  # tokens of this sequence already in the KV cache
    tokens: list[int] = field(default_factory=list)
    text: bytes = b""
    pending: int | None = None  # the last sampled token, decoded in the next step
    index: int = -1  # its position in the step's batch (where its logits are)


@dataclass
class _Admitted:
    """A prompt admitted in this step: the positions below `cached` are cells sequence `seqs[0]` already
    has; from there on, each position is a token of this step's batch (`rows`)."""

    prompt: list[int]
    seqs: list[int]
    cached: int
    rows: dict[int, int]


class CoreShare:
    """The cores shared by contexts decoding at once: each takes its part of them before every step, so
    the cores of one that is done go to the others."""

    def __init__(self, cores: int, contexts: int) -> None:
        self.cores, self.active = cores, contexts
        self.lock = threading.Lock()

    def threads(self) -> int:
        return max(1, self.cores // max(1, self.active))

    @contextmanager
    def running(self) -> Iterator[None]:
        try:
            yield
        finally:
            with self.lock:
                self.active -= 1


class BatchedContext:
    """One llama.cpp context on a loaded model, `width` sequences decoded together on `threads` threads.
    Not thread-safe: one caller at a time (several contexts on one model may decode at once)."""

    def __init__(self, llm: Any, width: int, seq_ctx: int, threads: int) -> None:
        import llama_cpp
        from llama_cpp import _internals

        self.llm, self.width, self.seq_ctx, self.threads = llm, width, seq_ctx, threads
        self.n_batch = max(512, width + seq_ctx)  # one step: every running token plus at least one whole prompt
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = width * seq_ctx
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = width
        params.kv_unified = True  # one KV store: sequences share the cells of a common beginning
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self.ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=width, verbose=False)
        self.memory = llama_cpp.llama_get_memory(self.ctx.ctx)

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()

    def generate(
        self, jobs: Sequence[Job], sampler: Callable[[int], Any], max_new_tokens: int, threads: Callable[[], int] | None = None
    ) -> list[tuple[str, int]]:
        """(text, generated tokens) of every job, in job order, each drawn by `sampler(job.seed)`, a llama.cpp
        sampler chain. A sequence ends at an end-of-generation token (not counted), at a stop string (the
        text cut before it) or after `max_new_tokens`. `threads()`, asked before each step, may change the
        context's threads (the texts do not depend on them)."""
        import llama_cpp
        import numpy as np

        for job in jobs:
            if len(job.prompt) + max_new_tokens > self.seq_ctx:
                raise ValueError(f"a prompt of {len(job.prompt)} tokens + {max_new_tokens} new exceeds the context of {self.seq_ctx}")
        results: list[tuple[str, int] | None] = [None] * len(jobs)
        if max_new_tokens <= 0:
            return [("", 0)] * len(jobs)
        vocab = self.llm._model.vocab
        n_vocab = int(self.llm._model.n_vocab())
        slots: list[_Slot | None] = [None] * self.width
        held: list[list[int]] = [[] for _ in range(self.width)]  # the tokens each sequence has cells for
        waiting = list(range(len(jobs)))[::-1]  # popped from the end: job order
        llama_cpp.llama_memory_clear(self.memory, True)  # a fresh start: the same jobs, the same batches
        b = self.batch.batch
        while waiting or any(slots):
            self.batch.reset()
            for s, slot in enumerate(slots):  # one token for every running sequence
                if slot is not None and slot.pending is not None:
                    slot.index = self._add(b, slot.pending, slot.n_past, [s])
                    slot.n_past += 1
            free = [s for s in range(self.width) if slots[s] is None]
            admitted: list[_Admitted] = []
            while free and waiting and b.n_tokens + len(jobs[waiting[-1]].prompt) <= self.n_batch:
                # the next job and the waiting ones with the same prompt (the samples of one prompt) take free
                # slots together and decode what the context does not have of their prompt once
                prompt = jobs[waiting[-1]].prompt
                same = 1
                while same < len(waiting) and jobs[waiting[-1 - same]].prompt == prompt:
                    same += 1
                group = [free.pop(0) for _ in range(min(same, len(free)))]
                last = self._admit(b, prompt, group, held, admitted)
                for s in group:
                    j = waiting.pop()
                    slots[s] = _Slot(j, sampler(jobs[j].seed), n_past=len(prompt), index=last)
            if threads is not None and threads() != self.threads:
                self.threads = threads()
                llama_cpp.llama_set_n_threads(self.ctx.ctx, self.threads, self.threads)
            for i in range(b.n_tokens):
                b.logits[i] = False
            for slot in slots:
                if slot is not None:
                    b.logits[slot.index] = True
            if llama_cpp.llama_decode(self.ctx.ctx, b) != 0:
                raise RuntimeError("llama_decode failed in a batched step")
            for s, slot in enumerate(slots):  # what each sequence has cells for now
                if slot is not None and slot.pending is not None:
                    held[s].append(slot.pending)
            for a in admitted:
                for s in a.seqs:
                    held[s] = list(a.prompt)
            for s, slot in enumerate(slots):
                if slot is None:
                    continue
                guide = jobs[slot.job].guide
                if guide is not None:  # -inf in the context's logits for what the grammar forbids: the sampler reads them next
                    allowed = guide.allowed(n_vocab)
                    ptr = llama_cpp.llama_get_logits_ith(self.ctx.ctx, slot.index)
                    np.ctypeslib.as_array(ptr, shape=(n_vocab,))[~allowed] = -np.inf
                token = int(slot.sampler.sample(self.ctx, slot.index))
                done = bool(llama_cpp.llama_vocab_is_eog(vocab, token))
                if guide is not None and not done:
                    guide.advance(token)
                if not done:
                    slot.tokens.append(token)
                    slot.text += _piece(vocab, token)
                    cut = _stop_at(slot.text, jobs[slot.job].stops)
                    if cut is not None:
                        slot.text, done = slot.text[:cut], True
                if done or len(slot.tokens) >= max_new_tokens:
                    results[slot.job] = (self._text(slot, jobs[slot.job].stops), len(slot.tokens))
                    slots[s] = None  # its cells stay: a later prompt may begin as its prompt did
                else:
                    slot.pending = token
        return [r if r is not None else ("", 0) for r in results]

    def _admit(self, b: Any, prompt: list[int], group: list[int], held: list[list[int]], admitted: list[_Admitted]) -> int:
        """Give the group's sequences the prompt: the longest beginning of it the context has — cells a
        sequence holds, or tokens of this step's batch — shared, the rest added to the batch once. Returns the
        batch row of the prompt's last token (its logits are the group's first draw)."""
        import llama_cpp

        limit = len(prompt) - 1  # the last token is decoded anyway: its logits are the first draw
        src, from_cells = max(((s, min(common_prefix(held[s], prompt), limit)) for s in range(self.width)), key=lambda c: c[1])
        prior = max(admitted, key=lambda a: common_prefix(a.prompt, prompt), default=None)
        from_step = min(common_prefix(prior.prompt, prompt), limit) if prior else 0
        if prior is not None and from_step > from_cells:
            src, from_cells = prior.seqs[0], min(prior.cached, from_step)
        for s in group:  # the shared beginning, as cells (by reference: no copy of the KV data)
            if s != src:
                llama_cpp.llama_memory_seq_rm(self.memory, s, -1, -1)
                if from_cells:
                    llama_cpp.llama_memory_seq_cp(self.memory, src, s, 0, from_cells)
        if src in group:
            llama_cpp.llama_memory_seq_rm(self.memory, src, from_cells, -1)
        rows: dict[int, int] = {}
        if prior is not None and from_step > from_cells:  # then as tokens another prompt adds to this batch
            for pos in range(from_cells, from_step):
                rows[pos] = prior.rows[pos]
                self._join(b, rows[pos], group)
        for pos in range(len(rows) + from_cells, len(prompt)):
            rows[pos] = self._add(b, prompt[pos], pos, group)
        for s in group:
            held[s] = prompt[:from_cells]  # the rest once this step is decoded
        admitted.append(_Admitted(prompt, group, from_cells, rows))
        return rows[len(prompt) - 1]

    def _text(self, slot: _Slot, stops: list[str]) -> str:
        """The completion detokenized as a whole (as llama-cpp-python does), cut before a stop string."""
        text = self.llm.detokenize(slot.tokens).decode("utf-8", errors="ignore")
        cuts = [k for k in (text.find(stop) for stop in stops if stop) if k >= 0]
        return str(text[: min(cuts)] if cuts else text)

    @staticmethod
    def _add(b: Any, token: int, pos: int, seqs: list[int]) -> int:
        i = b.n_tokens
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, len(seqs), False
        for k, seq in enumerate(seqs):
            b.seq_id[i][k] = seq
        b.n_tokens = i + 1
        return i

    @staticmethod
    def _join(b: Any, row: int, seqs: list[int]) -> None:
        """More sequences for a token already in the batch."""
        for seq in seqs:
            b.seq_id[row][b.n_seq_id[row]] = seq
            b.n_seq_id[row] += 1


def _piece(vocab: Any, token: int) -> bytes:
    """The bytes of one token (special tokens as nothing, as in a detokenized text)."""
    import ctypes

    import llama_cpp

    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
    return buf.raw[: max(n, 0)]


def _stop_at(text: bytes, stops: list[str]) -> int | None:
    """Where the first stop string starts in the text so far (None: no stop yet)."""
    found = [k for k in (text.find(stop.encode()) for stop in stops if stop) if k >= 0]
    return min(found) if found else None
