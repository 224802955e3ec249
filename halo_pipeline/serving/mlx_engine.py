"""The mlx engine: mlx-lm's continuous batching (`BatchGenerator`) with its LRU prompt cache."""

from __future__ import annotations

import json
import queue
import random
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from halo_pipeline.runtimes import log_softmax
from halo_pipeline.serving.core import END, Engine, Generation, Sampling, Step, mean_pool, scores_to_logprobs


@dataclass(eq=False)
class _Live:
    gen: Generation
    model: str  # the prompt cache's key: "base" or the adapter's name
    uid: int
    count: int = 0


@dataclass
class _Job:
    """Model work for the engine thread (scoring, embeddings): MLX runs on one thread, between decode steps."""

    fn: Any
    args: tuple[Any, ...]
    done: Future[Any] = field(default_factory=Future)


class MLXEngine(Engine):
    """mlx-lm: one `BatchGenerator` per served model (the base, each adapter) stepped by one engine thread.
    New requests join the running batch between decode steps (prompts are prefilled in chunks, batched);
    each sequence samples with its own settings and its own seeded key, and penalties and logit_bias are
    applied in its sampler, so the log-probs reported are the model's own. A finished sequence's KV goes to
    mlx-lm's LRU prompt cache (keyed by token ids and model): a prompt sharing a cached prefix prefills only
    the rest. Scoring and embeddings run on the same thread, between steps."""

    name = "mlx"

    def __init__(
        self,
        path: Path,
        parallel: int = 8,
        adapters: dict[str, Path] | None = None,
        ctx_size: int | None = None,
        prompt_cache: int = 8,
    ) -> None:
        super().__init__(path)
        from halo_pipeline.runtimes.mlx import MLXRuntime
        from halo_pipeline.runtimes.mlx_blas import use_fast_blas

        use_fast_blas()  # before MLX is imported
        from mlx_lm.models.cache import LRUPromptCache

        runtime = MLXRuntime(path)
        self.adapters = dict(adapters or {})
        # each adapter on its own copy of the base (mlx-lm applies LoRA layers in place)
        self.models: dict[str, Any] = {"base": runtime.model}
        for name, adapter in self.adapters.items():
            self.models[name] = MLXRuntime(path, adapter=adapter).model
        import mlx.core as mx

        for model in self.models.values():  # evaluated here: a lazy weight would belong to this thread's stream
            mx.eval(model.parameters())
        wrapper = runtime.tokenizer
        self.tokenizer = wrapper._tokenizer if hasattr(wrapper, "_tokenizer") else wrapper
        self.eos_ids = set(getattr(wrapper, "eos_token_ids", None) or [self.tokenizer.eos_token_id])
        config = json.loads((path / "config.json").read_text())
        trained = int(config.get("max_position_embeddings", 2048))
        self.context_length = min(ctx_size, trained) if ctx_size else trained
        self.vocab_size = int(config.get("vocab_size") or len(self.tokenizer))
        self.max_batch = max(1, parallel)
        self.prompt_cache = LRUPromptCache(max_size=prompt_cache)
        self.prefix_cache_size = prompt_cache  # 0 (--no-prefix-reuse) turns the prompt cache off
        self.inbox: queue.Queue[Generation | _Job] = queue.Queue()
        self.live: dict[tuple[str, int], _Live] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="mlx-engine", daemon=True)
        self.thread.start()

    @property
    def capacity(self) -> int:
        return self.max_batch

    @property
    def busy(self) -> int:
        return min(len(self.live), self.max_batch)

    def submit(self, generation: Generation) -> None:
        self.inbox.put(generation)

    def _call(self, fn: Any, *args: Any) -> Any:
        if self._stop.is_set():
            raise RuntimeError("the engine is closed")
        job = _Job(fn, args)
        self.inbox.put(job)
        return job.done.result()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)

    # -- the engine thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        import mlx.core as mx
        from mlx_lm.generate import BatchGenerator

        # MLX streams belong to the thread that made them: this thread's own, as mlx-lm's server does
        stream = mx.default_stream(mx.default_device())
        generators: dict[str, Any] = {}
        try:
            while not self._stop.is_set():
                try:  # wait only when there is nothing to decode
                    item: Generation | _Job | None = self.inbox.get(timeout=0.05) if not self.live else self.inbox.get_nowait()
                except queue.Empty:
                    item = None
                while item is not None:
                    if isinstance(item, _Job):
                        self._run_job(item)
                    else:
                        model = item.adapter or "base"
                        if model not in generators:
                            generators[model] = BatchGenerator(
                                self.models[model],
                                completion_batch_size=self.max_batch,
                                prefill_batch_size=min(8, self.max_batch),
                                stream=stream,
                            )
                        self._admit(generators[model], model, item)
                    try:
                        item = self.inbox.get_nowait()
                    except queue.Empty:
                        item = None
                for (model, uid), live in list(self.live.items()):  # a client gone, a stop string seen
                    if live.gen.cancelled.is_set():
                        generators[model].remove([uid])
                        self._end(live, "cancelled")
                for model, generator in generators.items():
                    if any(key[0] == model for key in self.live):
                        _, responses = generator.next()
                        for r in responses:
                            self._deliver(model, r)
        except Exception as exc:  # fail every request still running rather than leave them waiting
            for live in list(self.live.values()):
                live.gen.error = f"{type(exc).__name__}: {exc}"
                self._end(live, "error")
            raise
        finally:
            for generator in generators.values():
                generator.close()
            while True:  # nothing more runs: answer what is still queued
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Job):
                    item.done.set_exception(RuntimeError("the engine is closed"))
                else:
                    item.finish_reason = "cancelled"
                    item.emit(END)

    def _run_job(self, job: _Job) -> None:
        try:
            job.done.set_result(job.fn(*job.args))
        except Exception as exc:
            job.done.set_exception(exc)

    def _admit(self, generator: Any, model: str, gen: Generation) -> None:
        from mlx_lm.generate import StopSequences
        from mlx_lm.models.cache import trim_prompt_cache

        if gen.cancelled.is_set():
            gen.finish_reason = "cancelled"
            gen.emit(END)
            return
        s, prompt = gen.sampling, gen.prompt
        try:
            cache, rest = (
                self.prompt_cache.fetch_nearest_cache(model, prompt) if self.reuse_prefix and self.prefix_cache_size else (None, prompt)
            )
            if cache is not None and not rest:  # the whole prompt is cached: feed its last token again, for the logits
                if trim_prompt_cache(cache, 1) == 1:
                    rest = prompt[-1:]
                else:
                    cache, rest = None, prompt
            cached = len(prompt) - len(rest)
            if cached:
                self.prefix_hits += 1
            stops = StopSequences(None if s.ignore_eos else [[t] for t in self.eos_ids])
            (uid,) = generator.insert(
                [list(rest)],
                max_tokens=[max(1, min(s.max_tokens, self.context_length - len(prompt)))],
                caches=[cache] if cache is not None else None,
                all_tokens=[list(prompt[:cached])],
                samplers=[_sampler(s, self.vocab_size, gen)],
                stop_sequences=[stops],
            )
        except Exception as exc:
            gen.error = f"{type(exc).__name__}: {exc}"
            gen.emit(END)
            return
        self.live[(model, uid)] = _Live(gen, model, uid)

    def _deliver(self, model: str, r: Any) -> None:
        live = self.live.get((model, r.uid))
        if live is None:
            return
        gen = live.gen
        if r.finish_reason != "stop":  # "stop" is an end-of-sequence token: never shown
            k = gen.sampling.logprobs
            if k is None:
                gen.emit(Step(int(r.token)))
            else:
                gen.emit(_step(int(r.token), r.logprobs, k))
            live.count += 1
        if r.finish_reason is not None:
            if self.reuse_prefix and self.prefix_cache_size and r.prompt_cache is not None:
                self.prompt_cache.insert_cache(model, list(r.all_tokens), r.prompt_cache)
            self._end(live, r.finish_reason)

    def _end(self, live: _Live, reason: str) -> None:
        self.live.pop((live.model, live.uid), None)
        live.gen.finish_reason = reason
        live.gen.emit(END)

    # -- scoring and embeddings --------------------------------------------------------------------
    def prompt_logprobs(self, ids: list[int], adapter: str | None = None) -> list[tuple[float | None, dict[int, float]]]:
        def score() -> np.ndarray:
            import mlx.core as mx

            return np.array(self.models[adapter or "base"](mx.array([ids]))[0].astype(mx.float32))

        return scores_to_logprobs(ids, log_softmax(self._call(score)))

    def embed(self, prompts: list[list[int]], adapter: str | None = None) -> list[list[float]]:
        from halo_pipeline.runtimes.mlx import last_hidden

        model = self.models[adapter or "base"]
        return self._call(lambda: [mean_pool(last_hidden(model, ids)) for ids in prompts])


def _step(token: int, logprobs: Any, k: int) -> Step:
    """The token's log-prob and the top k from the batch's (raw, normalized) log-probs row."""
    import mlx.core as mx

    value = float(logprobs[token].item())
    if k == 0:
        return Step(token, value, ())
    idx = mx.argpartition(-logprobs, kth=k - 1)[:k]
    ids, vals = np.array(idx).tolist(), np.array(logprobs[idx].astype(mx.float32)).tolist()
    pairs = sorted(zip(ids, vals, strict=True), key=lambda p: -p[1])
    return Step(token, value, tuple((int(i), float(v)) for i, v in pairs))


_GREEDY: Any = None


def _sampler(s: Sampling, vocab: int, gen: Generation | None = None) -> Any:
    """One sequence's sampler: logit_bias and OpenAI's penalties (over the tokens it sampled), the output
    constraint's mask, top-k, top-p, temperature, and a draw with its own key (seeded: the same tokens however the
    batch is made up). It takes the model's log-probs, so the batch still reports those. A constrained sequence
    tells its grammar the token it drew at its next call (reading it then waits only for that token)."""
    global _GREEDY
    import mlx.core as mx
    from mlx_lm.sample_utils import apply_top_k, apply_top_p

    guide = s.constraint.start() if s.constraint is not None else None
    if s.temperature == 0 and not s.logit_bias and not s.penalized and guide is None:
        if _GREEDY is None:
            _GREEDY = lambda x: mx.argmax(x, axis=-1)  # noqa: E731  (one shared object: the batch samples it in one call)
        return _GREEDY
    bias = None
    if s.logit_bias:
        bias = mx.zeros((vocab,)).at[mx.array(list(s.logit_bias))].add(mx.array(list(s.logit_bias.values())))
    state: dict[str, Any] = {
        "key": mx.random.key(s.seed if s.seed is not None else random.randrange(2**31)),
        "counts": mx.zeros((vocab,)) if s.penalized else None,
        "drawn": None,  # the token drawn last, not yet told to the guide
    }

    def constrain(x: Any) -> Any:
        if guide is None:
            return x
        try:
            if state["drawn"] is not None:
                guide.advance(int(state["drawn"].item()))
            return mx.where(mx.array(guide.allowed(x.shape[-1])), x, -mx.inf)
        except RuntimeError as exc:  # this sequence ends (cancelled, with the reason); the batch goes on
            if gen is not None:
                gen.error = f"{type(exc).__name__}: {exc}"
                gen.cancel()
            return x

    def sample(logprobs: Any) -> Any:
        x = logprobs
        if bias is not None:
            x = x + bias[: x.shape[-1]]
        counts = state["counts"]
        if counts is not None:
            x = x - s.frequency_penalty * counts[: x.shape[-1]] - s.presence_penalty * (counts[: x.shape[-1]] > 0)
        x = constrain(x)
        if s.temperature == 0:
            token = mx.argmax(x, axis=-1)
        else:
            if s.top_k > 0:
                x = apply_top_k(x, s.top_k)
            if s.top_p < 1.0:
                x = apply_top_p(x, s.top_p)
            state["key"], sub = mx.random.split(state["key"])
            token = mx.random.categorical(x * (1 / s.temperature), key=sub)
        if counts is not None:
            state["counts"] = counts.at[token].add(1)
        if guide is not None:
            state["drawn"] = token
        return token

    return sample
