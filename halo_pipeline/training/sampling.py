"""Completions from the model being trained (RAFT's rounds, the mid-training probe), through the HF runtime's sampler."""

from __future__ import annotations

from typing import Any

from halo_pipeline.training import data


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    chat: bool,
    system: str | None,
    n: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
) -> list[list[str]]:
    """n completions per prompt from the model being trained (the HF runtime's sampler, in batches)."""
    from halo_pipeline.runtimes import Sampling
    from halo_pipeline.runtimes.hf import sample

    texts = [
        tokenizer.apply_chat_template(data._user(p, system), tokenize=False, add_generation_prompt=True)
        if chat
        else data.prompt_text(p, system)
        for p in prompts
    ]
    sampling = Sampling(n=n, temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens)
    out: list[list[str]] = []
    for i in range(0, len(texts), batch_size):
        completions, _ = sample(model, tokenizer, texts[i : i + batch_size], sampling, chat=chat, seed=seed)
        out += completions
    return out
