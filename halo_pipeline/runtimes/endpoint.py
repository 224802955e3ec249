"""A teacher behind any OpenAI-compatible `/v1/chat/completions` endpoint: concurrent requests, seeded."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from halo_pipeline.runtimes import Messages, Sampling
from halo_pipeline.runtimes.constraints import ResponseFormat
from halo_pipeline.runtimes.gguf import sample_seed


class Endpoint:
    name = "openai"
    format = "endpoint"

    def __init__(self, base_url: str, model: str, api_key_env: str | None, concurrency: int = 8, timeout: float = 120.0):
        from openai import OpenAI

        key = os.environ.get(api_key_env, "") if api_key_env else ""
        if api_key_env and not key:
            raise RuntimeError(f"environment variable {api_key_env} (named by api_key_env) is not set")
        self.client = OpenAI(base_url=base_url, api_key=key or "none", timeout=timeout, max_retries=2)
        self.model, self.concurrency = model, concurrency

    def generate(
        self, batch: Sequence[Messages], sampling: Sampling, batch_index: int = 0, response_format: ResponseFormat | None = None
    ) -> tuple[list[list[str]], int]:
        """`sampling.n` completions per conversation; a `response_format` is sent as the request's own constraint
        (OpenAI's response_format for JSON; vLLM's guided_regex/choice/grammar, which `serve` reads too)."""
        jobs = [(i, j) for i in range(len(batch)) for j in range(sampling.n)]
        extra: dict[str, Any] = response_format.openai() if response_format is not None else {}

        def one(job: tuple[int, int]) -> tuple[str, int]:
            i, j = job
            resp = self.client.chat.completions.create(
                model=self.model,
                messages=batch[i],  # type: ignore[arg-type]
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=sample_seed(sampling.seed, batch_index, i, j),
                **extra,
            )
            usage = resp.usage.completion_tokens if resp.usage else 0
            return resp.choices[0].message.content or "", usage

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            results = list(pool.map(one, jobs))
        out: list[list[str]] = [[] for _ in batch]
        for (i, _), (text, _) in zip(jobs, results, strict=True):
            out[i].append(text)
        return out, sum(t for _, t in results)

    def close(self) -> None:
        self.client.close()
