"""Synthesize with a GGUF teacher: our runtime's batched decoding vs a one-sequence llama.cpp loop.

Same model (the SmolLM2-135M-Instruct GGUF the quickstart's synthesize uses), same prompts (HumanEval
train), same sampling settings and token budget, measured in one run on this machine:

- baseline: one `Llama` context with llama.cpp's default threads (every core), one sequence at a
  time — what a plain script calling `create_chat_completion` in a loop does (llama-cpp-python reuses
  the cached prompt when the next sample repeats it);
- ours: `GGUFRuntime.generate`, the path the synthesize and probe steps take — one context on every
  core decoding up to `parallel` samples together (one token of each per decode step, a waiting sample
  taking a finished one's slot; the samples of one prompt admitted together share its decoded prompt),
  each sample seeded on its own.

Reports generated tokens/s of each and the ratio (target >= 1.8x), median of --repeat rounds, and checks
that ours is reproducible (the same seed gives the same completions twice).

Usage: python benchmarks/synthesize.py [--prompts 8] [--samples 2] [--max-new-tokens 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def prompts(n: int) -> list[list[dict[str, str]]]:
    from halo_pipeline.data.humaneval import humaneval_prompts

    return [[{"role": "user", "content": f"Complete this Python function.\n\n{t['prompt']}"}] for t in humaneval_prompts("train")[:n]]


def baseline(path: Path, batch: list[Any], samples: int, max_new_tokens: int, seed: int) -> tuple[float, int]:
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=2048, n_threads=os.cpu_count(), verbose=False, seed=seed)
    llm.create_chat_completion(messages=batch[0], max_tokens=4)  # warm-up, as ours warms its contexts
    tokens, started = 0, time.perf_counter()
    for i, messages in enumerate(batch):
        for j in range(samples):
            # no reset: llama-cpp-python reuses the cached prefix when a prompt repeats, as a plain loop gets it
            out: Any = llm.create_chat_completion(
                messages=messages, max_tokens=max_new_tokens, temperature=0.8, top_p=0.95, seed=seed + 31 * i + j
            )
            tokens += int(out["usage"]["completion_tokens"])
    return time.perf_counter() - started, tokens


def ours(path: Path, batch: list[Any], samples: int, max_new_tokens: int, seed: int) -> tuple[float, int, list[list[str]]]:
    from halo_pipeline.runtimes import Sampling
    from halo_pipeline.runtimes.gguf import GGUFRuntime

    runtime = GGUFRuntime(path)
    warm = Sampling(n=1, temperature=0.8, top_p=0.95, max_new_tokens=max_new_tokens, seed=seed)
    runtime.generate(batch, warm)  # open the batched context at its final size before timing
    sampling = Sampling(n=samples, temperature=0.8, top_p=0.95, max_new_tokens=max_new_tokens, seed=seed)
    started = time.perf_counter()
    texts, tokens = runtime.generate(batch, sampling)
    return time.perf_counter() - started, tokens, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default="outputs/bench-synthesize.json")
    args = parser.parse_args()
    from halo_pipeline.engine.groups import ModelRef
    from halo_pipeline.runtimes.catalog import gguf_source

    gguf = gguf_source(ModelRef.model_validate("smollm2-135m-instruct"))
    if gguf is None:
        raise SystemExit("no GGUF for smollm2-135m-instruct (its PyPI package is not installed?)")
    batch = prompts(args.prompts)
    rows: dict[str, list[float]] = {"baseline": [], "ours": []}
    reproducible = True
    first: list[list[str]] | None = None
    for r in range(args.repeat):
        seconds, tokens = baseline(gguf, batch, args.samples, args.max_new_tokens, seed=r)
        rows["baseline"].append(tokens / seconds)
        seconds, tokens, texts = ours(gguf, batch, args.samples, args.max_new_tokens, seed=0)
        rows["ours"].append(tokens / seconds)
        reproducible &= first is None or texts == first
        first = first or texts
        print(f"round {r + 1}: baseline {rows['baseline'][-1]:.1f} tok/s, ours {rows['ours'][-1]:.1f} tok/s", file=sys.stderr)
    base, mine = statistics.median(rows["baseline"]), statistics.median(rows["ours"])
    result = {
        "model": str(gguf.name),
        "cores": os.cpu_count(),
        "prompts": args.prompts,
        "samples_per_prompt": args.samples,
        "max_new_tokens": args.max_new_tokens,
        "baseline_tokens_per_s": round(base, 1),
        "ours_tokens_per_s": round(mine, 1),
        "ratio": round(mine / base, 2),
        "rounds": {k: [round(v, 1) for v in vs] for k, vs in rows.items()},
        "reproducible": reproducible,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"| one-sequence llama.cpp loop ({os.cpu_count()} threads) | ours: batched decoding, {os.cpu_count()} threads | ratio | same seed, same text |"
    )
    print("|---|---|---|---|")
    print(f"| {base:.1f} tokens/s | {mine:.1f} tokens/s | **{mine / base:.2f}x** | {'yes' if reproducible else 'NO'} |")


if __name__ == "__main__":
    main()
