"""Batched decoding in one llama.cpp context: many sequences, one `llama_decode` per step.

Each step carries one token for every running sequence (its own `seq_id`, its own KV stream) plus the
prompts of the sequences admitted at that step; a finished sequence frees its slot and its KV cells, and
the next waiting sample takes the slot. Admission is in job order and every sample draws from its own
seeded sampler chain, so the same inputs give the same texts on every run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Job:
    """One sample to generate: its prompt tokens, its sampler's seed, the strings that end it."""

    prompt: list[int]
    seed: int
    stops: list[str] = field(default_factory=list)


@dataclass
class _Slot:
    job: int
    sampler: Any
    n_past: int = 0  # tokens of this sequence already in the KV cache
    tokens: list[int] = field(default_factory=list)
    text: bytes = b""
    pending: int | None = None  # the last sampled token, decoded in the next step
    index: int = -1  # its position in the step's batch (where its logits are)


class BatchedContext:
    """One llama.cpp context on a loaded model, `width` sequences decoded together on `threads` threads."""

    def __init__(self, llm: Any, width: int, seq_ctx: int, threads: int | None = None) -> None:
        import llama_cpp
        from llama_cpp import _internals

        self.llm, self.width, self.seq_ctx = llm, width, seq_ctx
        self.n_batch = max(512, width + seq_ctx)  # one step: every running token plus at least one whole prompt
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = width * seq_ctx
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = width
        params.kv_unified = True  # one KV store: the samples of one prompt share its cells (decoded once)
        params.n_threads = params.n_threads_batch = threads or os.cpu_count() or 1
        params.no_perf = True
        self.ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=width, verbose=False)
        self.memory = llama_cpp.llama_get_memory(self.ctx.ctx)

    def close(self) -> None:
        self.batch.close()
        self.ctx.close()

    def generate(self, jobs: Sequence[Job], sampler: Callable[[int], Any], max_new_tokens: int) -> list[tuple[str, int]]:
        """(text, generated tokens) of every job, in job order, each drawn by `sampler(job.seed)`, a llama.cpp
        sampler chain. A sequence ends at an end-of-generation token (not counted), at a stop string (the
        text cut before it) or after `max_new_tokens`."""
        import llama_cpp

        for job in jobs:
            if len(job.prompt) + max_new_tokens > self.seq_ctx:
                raise ValueError(f"a prompt of {len(job.prompt)} tokens + {max_new_tokens} new exceeds the context of {self.seq_ctx}")
        results: list[tuple[str, int] | None] = [None] * len(jobs)
        if max_new_tokens <= 0:
            return [("", 0)] * len(jobs)
        vocab = self.llm._model.vocab
        slots: list[_Slot | None] = [None] * self.width
        waiting = list(range(len(jobs)))[::-1]  # popped from the end: job order
        llama_cpp.llama_memory_clear(self.memory, True)
        b = self.batch.batch
        while waiting or any(slots):
            self.batch.reset()
            for s, slot in enumerate(slots):  # one token for every running sequence
                if slot is not None and slot.pending is not None:
                    slot.index = self._add(b, slot.pending, slot.n_past, [s])
                    slot.n_past += 1
            free = [s for s in range(self.width) if slots[s] is None]
            while free and waiting and b.n_tokens + len(jobs[waiting[-1]].prompt) <= self.n_batch:
                # the next job and the waiting ones with the same prompt (the samples of one prompt) take free
                # slots together: their prompt is decoded once, its cells shared by their sequences
                prompt = jobs[waiting[-1]].prompt
                group = []
                while free and waiting and jobs[waiting[-1]].prompt == prompt:
                    j, s = waiting.pop(), free.pop(0)
                    slots[s] = _Slot(j, sampler(jobs[j].seed), n_past=len(prompt))
                    group.append(s)
                for pos, token in enumerate(prompt):
                    last = self._add(b, token, pos, group)
                for s in group:
                    slots[s].index = last  # type: ignore[union-attr]
            for i in range(b.n_tokens):
                b.logits[i] = False
            for slot in slots:
                if slot is not None:
                    b.logits[slot.index] = True
            if llama_cpp.llama_decode(self.ctx.ctx, b) != 0:
                raise RuntimeError("llama_decode failed in a batched step")
            for s, slot in enumerate(slots):
                if slot is None:
                    continue
                token = int(slot.sampler.sample(self.ctx, slot.index))
                done = bool(llama_cpp.llama_vocab_is_eog(vocab, token))
                if not done:
                    slot.tokens.append(token)
                    slot.text += _piece(vocab, token)
                    cut = _stop_at(slot.text, jobs[slot.job].stops)
                    if cut is not None:
                        slot.text, done = slot.text[:cut], True
                if done or len(slot.tokens) >= max_new_tokens:
                    results[slot.job] = (self._text(slot, jobs[slot.job].stops), len(slot.tokens))
                    llama_cpp.llama_memory_seq_rm(self.memory, s, -1, -1)
                    slots[s] = None
                else:
                    slot.pending = token
        return [r if r is not None else ("", 0) for r in results]

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
