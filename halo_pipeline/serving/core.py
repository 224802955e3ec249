"""What every serving engine shares: sampling settings, a running generation, the engine interface.

An engine turns a prompt (token ids) and sampling settings into a stream of `Step`s (token id, and its
log-prob with the top alternatives when asked). Generation runs in engine threads; steps reach the
asyncio side through `Generation.tokens`, and `Generation.cancel()` (a client that went away, a stop
string seen) frees the slot at the next token.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from halo_pipeline.runtimes import log_softmax

END = object()  # marks the end of a generation's token stream
MIN_SHARED_PREFIX = 16  # tokens; shorter shared prefixes are not worth copying a cache for
BASE = "__base__"  # the adapter name of the base model (peft's own name for it in a mixed batch)


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    ignore_eos: bool = False  # generate max_tokens regardless (benchmarks; vLLM's extension of the API)
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token generated so far
    frequency_penalty: float = 0.0  # subtracted per time a token was generated so far
    logit_bias: dict[int, float] = field(default_factory=dict)  # added to the logits before sampling
    logprobs: int | None = None  # None: none; k: each token's log-prob and the k most likely there
    constraint: Any = None  # a compiled output constraint (constraints.Constraint); each generation walks its own copy

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty)

    def with_seed(self, seed: int | None) -> Sampling:
        from dataclasses import replace

        return replace(self, seed=seed)


class Step(NamedTuple):
    """One generated token: its id, and (when asked) its log-prob under the model and the top alternatives.
    Log-probs are the model's own log-softmax, before temperature, penalties or logit_bias (as vLLM reports them)."""

    token: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


@dataclass(eq=False)  # compared and hashed by identity: the server keeps its live ones in a set
class Generation:
    """One running generation: the engine thread puts steps, the request handler reads them."""

    prompt: list[int]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    adapter: str | None = None  # a served LoRA adapter's name; None: the base model
    tokens: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finish_reason: str = "length"
    error: str | None = None

    def emit(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.tokens.put_nowait, item)
        except RuntimeError:  # the server's event loop is gone (it stopped): nobody is reading any more
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    name = "engine"
    streaming = True
    can_embed = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tokenizer: Any = None
        self.context_length = 2048
        self.vocab_size = 0  # token ids the model takes: [0, vocab_size)
        self.eos_ids: set[int] = set()
        self.adapters: dict[str, Path] = {}  # served LoRA adapters by the name clients send
        self.prefix_hits = 0
        self.reuse_prefix = True

    # text <-> ids, via the model's HF tokenizer (every export keeps one next to it)
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int], special: bool = False) -> str:
        """Text of ids; `special` keeps special tokens (a template's tool-call markers may be special)."""
        return str(self.tokenizer.decode(ids, skip_special_tokens=not special))

    @functools.cached_property
    def _byte_level(self) -> dict[str, int] | None:
        """The byte of each character of a byte-level BPE vocabulary (GPT-2's mapping), None for other tokenizers."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        decoder = getattr(backend, "decoder", None)
        if decoder is None or "ByteLevel" not in type(decoder).__name__ + repr(decoder):
            return None
        return {ch: b for b, ch in _bytes_to_unicode().items()}

    def token_bytes(self, token: int) -> bytes:
        """A token's exact bytes (a piece of a multi-byte character is not valid UTF-8 on its own)."""
        return self._token_bytes(token)

    @functools.lru_cache(maxsize=65536)  # noqa: B019  (engines live as long as the server)
    def _token_bytes(self, token: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if piece is None:
            return b""
        if (table := self._byte_level) is not None and all(ch in table for ch in piece):
            return bytes(table[ch] for ch in piece)
        if m := re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece):  # SentencePiece byte fallback
            return bytes([int(m.group(1), 16)])
        return self.decode([token], special=True).encode()

    def guidance_tokenizer(self) -> Any:
        """The vocabulary as llguidance reads it, for output constraints (`constraints.Grammars` builds it once)."""
        from halo_pipeline.serving.constraints import from_hf

        return from_hf(self.tokenizer, self.vocab_size, sorted(self.eos_ids))

    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or None

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        if self.chat_template():
            kwargs: dict[str, Any] = {"tools": tools} if tools else {}
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs))
        # ChatML when a model has none
        return "".join(f"<|im_start|>{m['role']}\n{m.get('content') or ''}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"

    def chat_prompt(self, messages: list[dict[str, Any]]) -> str:
        return self.render_chat(messages)

    def submit(self, generation: Generation) -> None:
        raise NotImplementedError

    def prompt_logprobs(self, ids: list[int], adapter: str | None = None) -> list[tuple[float | None, dict[int, float]]]:
        """Per prompt token: its log-prob given the tokens before it (None for the first), and the top-5 there."""
        raise NotImplementedError

    def embed(self, prompts: list[list[int]], adapter: str | None = None) -> list[list[float]]:
        """Mean-pooled last hidden state (after the final norm), L2-normalized: one vector per prompt."""
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


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def top(logprobs: np.ndarray, k: int = 5) -> dict[int, float]:
    if k <= 0:
        return {}
    k = min(k, logprobs.shape[-1])
    idx = np.argpartition(-logprobs, k - 1)[:k]
    return {int(i): float(logprobs[i]) for i in idx[np.argsort(-logprobs[idx], kind="stable")]}


def step_of(token: int, logits: np.ndarray, k: int | None) -> Step:
    """A Step with the token's log-prob and the top k under these raw logits (numpy, one row)."""
    if k is None:
        return Step(token)
    lp = log_softmax(logits)
    return Step(token, float(lp[token]), tuple(top(lp, k).items()))


def scores_to_logprobs(ids: list[int], logprobs: np.ndarray) -> list[tuple[float | None, dict[int, float]]]:
    out: list[tuple[float | None, dict[int, float]]] = [(None, {})]
    for i in range(1, len(ids)):
        out.append((float(logprobs[i - 1, ids[i]]), top(logprobs[i - 1])))
    return out


def mean_pool(hidden: np.ndarray) -> list[float]:
    """[tokens, dim] -> the L2-normalized mean (what /v1/embeddings returns on every engine)."""
    vec = hidden.astype(np.float64).mean(axis=0)
    return [float(x) for x in vec / (np.linalg.norm(vec) or 1.0)]


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which byte-level BPE vocabularies are written in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))
