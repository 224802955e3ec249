"""MLX models with mlx-lm (Apple silicon, or MLX's CPU build on Linux): batched generation with
`batch_generate`, log-probs and greedy decoding, the tokenizer's chat template.

On Linux, MLX's CPU wheel links the reference (netlib) BLAS: a matrix product there costs as much per
row whatever the batch, so a decode step of 8 sequences took 7.1x one sequence's (SmolLM2-135M fp32,
882 vs 124 ms). `use_fast_blas` loads an optimized BLAS (OpenBLAS, when the system has it) into the
process before MLX is imported, and MLX's products bind to it: the same 8-sequence step then costs 1.4x
one sequence's (95 vs 66 ms). Quantized (q4/q8) weights do not go through BLAS on MLX's CPU backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from halo_pipeline.runtimes import Messages, Sampling, log_softmax
from halo_pipeline.runtimes.constraints import Grammars, Guide, ResponseFormat
from halo_pipeline.runtimes.mlx_blas import use_fast_blas


class MLXRuntime:
    name = "mlx-lm"
    format = "mlx"

    def __init__(self, path: Path, use_chat_template: bool = True, adapter: Path | None = None) -> None:
        use_fast_blas()
        from mlx_lm import load

        loaded: Any = load(str(path), adapter_path=str(adapter) if adapter else None)
        self.model, self.tokenizer = loaded[0], loaded[1]
        self.use_chat_template = use_chat_template and bool(getattr(self.tokenizer, "chat_template", None))
        self.grammars = Grammars(self)

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def bos_id(self) -> int | None:
        return getattr(self.tokenizer, "bos_token_id", None)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def detokenize(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids))

    def logprobs(self, ids: list[int]) -> np.ndarray:
        import mlx.core as mx

        logits = self.model(mx.array([ids]))[0].astype(mx.float32)
        return log_softmax(np.array(logits))

    def greedy(self, ids: list[int], n: int, guide: Guide | None = None) -> list[int]:
        import mlx.core as mx
        from mlx_lm.models.cache import make_prompt_cache

        cache = make_prompt_cache(self.model)
        logits = self.model(mx.array([ids]), cache=cache)
        out: list[int] = []
        for _ in range(n):
            if guide is None:
                out.append(int(mx.argmax(logits[0, -1]).item()))  # type: ignore[arg-type]
            elif (token := guide.pick(np.array(logits[0, -1].astype(mx.float32)), self.eos_id)) is None:
                break
            else:
                out.append(token)
            logits = self.model(mx.array([out[-1:]]), cache=cache)
        return out

    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def render_chat(self, messages: Messages) -> str | None:
        if not self.chat_template():
            return None
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def generate(
        self, batch: Sequence[Messages], sampling: Sampling, batch_index: int = 0, response_format: ResponseFormat | None = None
    ) -> tuple[list[list[str]], int]:
        """`sampling.n` completions per conversation (mlx-lm's batched generation, seeded per batch) and the tokens
        generated; with a `response_format`, every completion follows it."""
        import mlx.core as mx
        from mlx_lm.generate import BatchGenerator
        from mlx_lm.sample_utils import make_sampler

        if self.use_chat_template:
            prompts = [list(self.tokenizer.apply_chat_template(m, add_generation_prompt=True)) for m in batch]
        else:
            prompts = [self.tokenizer.encode("\n\n".join(x["content"] for x in m)) for m in batch]
        mx.random.seed(sampling.seed * 1_000_003 + batch_index)
        sampler = make_sampler(temp=sampling.temperature, top_p=sampling.top_p if sampling.temperature > 0 else 0.0)
        repeated = [p for p in prompts for _ in range(sampling.n)]
        constraint = self.grammars.compile(response_format.spec()) if response_format is not None else None
        processors: list[list[Any]] | None = [[_GuidedMLX(constraint.start())] for _ in repeated] if constraint else None
        # mlx-lm's batch_generate, with a logits processor per sequence (its own walk of the constraint)
        gen = BatchGenerator(self.model, stop_tokens=[[t] for t in self.tokenizer.eos_token_ids], sampler=sampler)
        uids = gen.insert(repeated, [sampling.max_new_tokens] * len(repeated), logits_processors=processors)
        tokens: dict[int, list[int]] = {uid: [] for uid in uids}
        while responses := gen.next_generated():
            for r in responses:
                if r.finish_reason != "stop":
                    tokens[r.uid].append(r.token)
        gen.close()
        texts = [self.tokenizer.decode(tokens[uid]) for uid in uids]
        return [texts[i * sampling.n : (i + 1) * sampling.n] for i in range(len(batch))], sum(len(t) for t in tokens.values())

    @property
    def vocab_size(self) -> int:
        return int(self.model.args.vocab_size)

    def guidance_tokenizer(self) -> Any:
        """The vocabulary as llguidance reads it (built once, by `Grammars`)."""
        from halo_pipeline.runtimes.constraints import from_hf

        hf = getattr(self.tokenizer, "_tokenizer", self.tokenizer)
        return from_hf(hf, self.vocab_size, sorted(self.tokenizer.eos_token_ids))

    def close(self) -> None:
        self.model = None


def last_hidden(model: Any, ids: list[int]) -> np.ndarray:
    """[tokens, dim]: the last hidden state after the final norm (the language model without its head), as float32."""
    import mlx.core as mx

    body = getattr(model, "model", None) or getattr(getattr(model, "language_model", None), "model", None)
    if body is None:
        raise ValueError(f"{type(model).__name__}: no inner model to take hidden states from")
    return np.array(body(mx.array([ids]))[0].astype(mx.float32))


def mlx_rope_compat(config_path: Path) -> bool:
    """transformers 5 writes RoPE settings under `rope_parameters`; mlx-lm 0.32 reads a top-level
    `rope_theta` and silently uses 10000 without it (SmolLM2's is 100000: verify measured KL 0.04 at
    fp32). Write the top-level keys mlx-lm reads; True when the file changed."""
    import json

    config = json.loads(config_path.read_text())
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict) or "rope_theta" in config or "rope_theta" not in rope:
        return False
    config["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default" and not config.get("rope_scaling"):
        config["rope_scaling"] = rope
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return True


class _GuidedMLX:
    """An mlx-lm logits processor: one sequence's walk of an output constraint. Called before each token with the
    sequence's tokens so far (the prompt at the first call); the token sampled last is fed to the guide, then every
    token it does not allow next gets -inf."""

    def __init__(self, guide: Guide) -> None:
        self.guide, self.seen = guide, -1

    def __call__(self, context: Any, logits: Any) -> Any:
        import mlx.core as mx

        n = int(context.size)
        if self.seen >= 0 and n > self.seen and not self.guide.done:
            self.guide.advance(int(context.reshape(-1)[-1].item()))
        self.seen = n
        allowed = mx.array(self.guide.allowed(logits.shape[-1]))
        return mx.where(allowed, logits, -mx.inf)
