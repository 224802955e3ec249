"""The torch engine: transformers with continuous batching, prompt-prefix KV reuse and unmerged LoRA adapters."""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

from halo_pipeline.runtimes import common_prefix, log_softmax
from halo_pipeline.serving.core import BASE, END, MIN_SHARED_PREFIX, Engine, Generation, Step, scores_to_logprobs


class TorchEngine(Engine):
    """transformers, with a scheduler that admits requests between decode steps (continuous batching).

    Each admitted request is prefilled alone (reusing the KV of the longest cached prompt prefix with
    exactly the same token ids and adapter), then joins the running batch: KV caches are left-padded to a
    common length and decoded together, one token per sequence per step, with per-request sampling
    (temperature, top-p/k, penalties, logit_bias, seed). Adapters stay unmerged: each row of the batch
    runs through its own adapter (peft's mixed-batch forward), so the base and every adapter share batches.
    """

    name = "hf"

    def __init__(
        self,
        path: Path,
        max_batch: int = 8,
        prefix_cache: int = 8,
        device: str = "cpu",
        dtype: str = "float32",
        adapters: dict[str, Path] | None = None,
        ctx_size: int | None = None,
    ) -> None:
        super().__init__(path)
        import torch

        from halo_pipeline.runtimes.hf import load_with_adapters

        self.torch = torch
        self.device = device  # the backend's device and dtype (the CPU in fp32 by default)
        self.adapters = dict(adapters or {})
        self.model, self.tokenizer = load_with_adapters(path, self.adapters, device, dtype)
        trained = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        self.context_length = min(ctx_size, trained) if ctx_size else trained
        self.vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None} | {self.tokenizer.eos_token_id} - {None}
        self.max_batch = max_batch
        self.running = 0
        self.prefix_cache: dict[tuple[Any, ...], Any] = {}  # (adapter, *prompt ids) -> (per-layer K/V, last logits); LRU
        self.prefix_cache_size = prefix_cache
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

    def _forward(self, adapters: list[str | None], **kwargs: Any) -> Any:
        if self.adapters:  # each row through its own adapter; the base rows through none
            kwargs["adapter_names"] = [a or BASE for a in adapters]
        return self.model(**kwargs)

    # -- the scheduler -----------------------------------------------------------------------
    def _loop(self) -> None:
        torch = self.torch
        batch: list[dict[str, Any]] = []  # each: generation, generated count, rng, penalties, bias
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
                        kv, logits = self._prefill(gen.prompt, gen.adapter)
                    entry = self._entry(gen, logits.shape[-1])
                    step = self._sample(logits, entry)
                except Exception as exc:  # a bad request must not take the scheduler down
                    gen.error = f"{type(exc).__name__}: {exc}"
                    gen.emit(END)
                    continue
                if self._deliver(entry, step):
                    layers, mask = _join(torch, layers, mask, kv)
                    entry["last"] = step.token
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
                out = self._forward(
                    [e["gen"].adapter for e in batch],
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                )
                layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
                logits = out.logits[:, -1, :]
            keep = []
            for i, entry in enumerate(batch):
                try:
                    step = self._sample(logits[i], entry)
                except Exception as exc:  # e.g. an output constraint that failed: this request ends, the batch goes on
                    entry["gen"].error = f"{type(exc).__name__}: {exc}"
                    entry["gen"].emit(END)
                    continue
                if self._deliver(entry, step):
                    entry["last"] = step.token
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

    def _entry(self, gen: Generation, n_logits: int) -> dict[str, Any]:
        torch, s = self.torch, gen.sampling
        bias = None
        if s.logit_bias:
            bias = torch.zeros(n_logits, device=self.device)
            bias[torch.tensor(list(s.logit_bias), device=self.device)] = torch.tensor(list(s.logit_bias.values()), device=self.device)
        counts = torch.zeros(n_logits, device=self.device) if s.penalized else None
        guide = s.constraint.start() if s.constraint is not None else None  # its own walk of the output's grammar
        entry = {"gen": gen, "count": 0, "rng": _rng(torch, s.seed), "length": len(gen.prompt), "bias": bias, "counts": counts}
        return {**entry, "guide": guide}

    def _deliver(self, entry: dict[str, Any], step: Step) -> bool:
        """Hand a sampled token to its request; False when the request is finished."""
        gen = entry["gen"]
        if gen.cancelled.is_set():
            gen.finish_reason = "cancelled"
            gen.emit(END)
            return False
        if step.token in self.eos_ids and not gen.sampling.ignore_eos:
            gen.finish_reason = "stop"
            gen.emit(END)
            return False
        entry["count"] += 1
        if entry["counts"] is not None:
            entry["counts"][step.token] += 1
        gen.emit(step)
        if entry["count"] >= gen.sampling.max_tokens or entry["length"] + entry["count"] >= self.context_length:
            gen.finish_reason = "length"
            gen.emit(END)
            return False
        return True

    def _prefill(self, prompt: list[int], adapter: str | None) -> tuple[list[tuple[Any, Any]], Any]:
        torch = self.torch
        from transformers import DynamicCache

        key = (adapter, *prompt)  # KV computed through one adapter is never reused for another
        if key in self.prefix_cache:  # the whole prompt was seen: reuse it as is
            kv, logits = self.prefix_cache.pop(key)
            self.prefix_cache[key] = (kv, logits)
            self.prefix_hits += 1
            return [(k.clone(), v.clone()) for k, v in kv], logits
        best, shared = None, 0
        for cached in self.prefix_cache:  # the cached prompt sharing the longest token prefix with this one
            if cached[0] != adapter:
                continue
            n = common_prefix(cached[1:], prompt)
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
        out = self._forward(
            [adapter],
            input_ids=torch.tensor([feed], device=self.device),
            position_ids=torch.arange(len(prompt) - len(feed), len(prompt), device=self.device).unsqueeze(0),
            past_key_values=cache if cache is not None else DynamicCache(),
            use_cache=True,
        )
        kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        logits = out.logits[0, -1, :]
        if self.prefix_cache_size:
            self.prefix_cache[key] = ([(k.clone(), v.clone()) for k, v in kv], logits)
        while len(self.prefix_cache) > self.prefix_cache_size:
            self.prefix_cache.pop(next(iter(self.prefix_cache)))
        return kv, logits

    def _sample(self, logits: Any, entry: dict[str, Any]) -> Step:
        torch = self.torch
        s = entry["gen"].sampling
        raw = logits.float()
        scores = raw
        if entry["bias"] is not None:
            scores = scores + entry["bias"]
        if entry["counts"] is not None:  # OpenAI's penalties, over the tokens generated so far
            counts = entry["counts"]
            scores = scores - s.frequency_penalty * counts - s.presence_penalty * (counts > 0).float()
        guide = entry["guide"]
        if guide is not None:  # only what the output's grammar allows next
            allowed = torch.from_numpy(guide.allowed(scores.shape[-1])).to(scores.device)
            scores = scores.masked_fill(~allowed, float("-inf"))
        if s.temperature == 0:
            token = int(scores.argmax())
        else:
            scores = scores / s.temperature
            if s.top_k > 0:
                kth = torch.topk(scores, min(s.top_k, scores.numel())).values[-1]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            if s.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                outside = sorted_probs.cumsum(0) - sorted_probs > s.top_p
                sorted_probs[outside] = 0
                probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
            token = int(torch.multinomial((probs / probs.sum()).cpu(), 1, generator=entry["rng"]))
        if guide is not None and token not in self.eos_ids:
            guide.advance(token)
        if s.logprobs is None:
            return Step(token)
        lsm = torch.log_softmax(raw.double(), dim=-1)  # the model's own distribution, as the client checks it
        top = torch.topk(lsm, s.logprobs) if s.logprobs else None
        pairs = tuple(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if top is not None else ()
        return Step(token, float(lsm[token]), pairs)

    # -- scoring and embeddings ---------------------------------------------------------------
    def prompt_logprobs(self, ids: list[int], adapter: str | None = None) -> list[tuple[float | None, dict[int, float]]]:
        with self.lock, self.torch.no_grad():
            logits = self._forward([adapter], input_ids=self.torch.tensor([ids], device=self.device)).logits[0].float().cpu().numpy()
        return scores_to_logprobs(ids, log_softmax(logits))

    def embed(self, prompts: list[list[int]], adapter: str | None = None) -> list[list[float]]:
        from halo_pipeline.serving.core import mean_pool

        out = []
        with self.lock, self.torch.no_grad():
            for ids in prompts:
                hidden = self._forward([adapter], input_ids=self.torch.tensor([ids], device=self.device), output_hidden_states=True)
                out.append(mean_pool(hidden.hidden_states[-1][0].float().cpu().numpy()))
        return out


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
