"""Synthesize with a GGUF teacher: our runtime's batched decoding vs a one-sequence llama.cpp loop.

Same model (the SmolLM2-135M-Instruct GGUF the quickstart's synthesize uses), the same prompts and sampling
settings as a recipe's synthesize step (`--recipe`, default the quickstart: its source, limit, samples per
prompt, token budget, temperature, top-p, batch size), measured in one run on this machine:

- baseline: one `Llama` context with llama.cpp's default threads (every core), one sequence at a
  time — what a plain script calling `create_chat_completion` in a loop does (llama-cpp-python reuses
  the cached prompt, or the beginning it shares with the previous one, when the next sample repeats it);
- ours: `GGUFRuntime.generate`, called as the synthesize step calls it (batch by batch) — one
  single-threaded context per core, each decoding up to `parallel` samples together (one token of each
  per decode step, a waiting sample taking a finished one's slot; a prompt decoded only past the
  beginning the context already holds), each sample seeded on its own.

Reports generated tokens/s of each and the ratio (target >= 1.8x), median of --repeat interleaved rounds
(each side with the same seeds every round), and checks that ours is reproducible (the same seed gives the
same completions twice).

Usage: python benchmarks/synthesize.py [--recipe recipes/quickstart.yaml] [--repeat 3]
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


def step_settings(recipe: Path) -> dict[str, Any]:
    """The synthesize step's own settings in a recipe (its `with:` block), with the step's defaults."""
    from omegaconf import OmegaConf

    from halo_pipeline.tasks.synthesize import SynthesizeParams

    given = OmegaConf.to_container(OmegaConf.load(recipe).steps.synthesize["with"], resolve=False)
    assert isinstance(given, dict)
    defaults = SynthesizeParams.model_fields
    keys = ("source", "limit", "samples_per_prompt", "max_new_tokens", "temperature", "top_p", "batch_size", "system_prompt")
    return {k: given.get(k, defaults[k].default) for k in keys}


def prompts(settings: dict[str, Any]) -> list[list[dict[str, str]]]:
    from halo_pipeline.data.humaneval import humaneval_prompts
    from halo_pipeline.runtimes import to_messages

    _, _, split = str(settings["source"]).partition(":")
    rows = humaneval_prompts(split or None)[: settings["limit"]]
    return [to_messages(row["prompt"], settings["system_prompt"]) for row in rows]


def baseline(path: Path, chats: list[Any], settings: dict[str, Any]) -> tuple[float, int]:
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=2048, n_threads=os.cpu_count(), verbose=False, seed=0)
    llm.create_chat_completion(messages=chats[0], max_tokens=4)  # warm-up, as ours warms its contexts
    tokens, started = 0, time.perf_counter()
    for i, messages in enumerate(chats):
        for j in range(settings["samples_per_prompt"]):
            # no reset: llama-cpp-python reuses the cached prefix when a prompt repeats, as a plain loop gets it
            out: Any = llm.create_chat_completion(
                messages=messages, max_tokens=settings["max_new_tokens"], temperature=settings["temperature"],
                top_p=settings["top_p"], seed=31 * i + j,
            )  # fmt: skip
            tokens += int(out["usage"]["completion_tokens"])
    return time.perf_counter() - started, tokens


def ours(path: Path, chats: list[Any], settings: dict[str, Any]) -> tuple[float, int, list[list[str]]]:
    from halo_pipeline.runtimes import Sampling
    from halo_pipeline.runtimes.gguf import GGUFRuntime

    runtime = GGUFRuntime(path)
    size = settings["batch_size"]
    batches = [chats[i : i + size] for i in range(0, len(chats), size)]
    sampling = Sampling(settings["samples_per_prompt"], settings["temperature"], settings["top_p"], settings["max_new_tokens"], seed=0)
    runtime.generate(batches[0], Sampling(sampling.n, max_new_tokens=sampling.max_new_tokens))  # open its contexts before timing
    texts: list[list[str]] = []
    tokens, started = 0, time.perf_counter()
    for k, batch in enumerate(batches):  # as the synthesize step calls it
        done, n = runtime.generate(batch, sampling, batch_index=k * size)
        texts += done
        tokens += n
    return time.perf_counter() - started, tokens, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes/quickstart.yaml")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default="outputs/bench-synthesize.json")
    args = parser.parse_args()
    from halo_pipeline.engine.groups import ModelRef
    from halo_pipeline.runtimes.catalog import gguf_source

    gguf = gguf_source(ModelRef.model_validate("smollm2-135m-instruct"))
    if gguf is None:
        raise SystemExit("no GGUF for smollm2-135m-instruct (its PyPI package is not installed?)")
    settings = step_settings(args.recipe)
    chats = prompts(settings)
    rows: dict[str, list[float]] = {"baseline": [], "ours": []}
    reproducible = True
    first: list[list[str]] | None = None
    for r in range(args.repeat):
        seconds, tokens = baseline(gguf, chats, settings)
        rows["baseline"].append(tokens / seconds)
        seconds, tokens, texts = ours(gguf, chats, settings)
        rows["ours"].append(tokens / seconds)
        reproducible &= first is None or texts == first
        first = first or texts
        print(f"round {r + 1}: baseline {rows['baseline'][-1]:.1f} tok/s, ours {rows['ours'][-1]:.1f} tok/s", file=sys.stderr)
    base, mine = statistics.median(rows["baseline"]), statistics.median(rows["ours"])
    result = {
        "model": str(gguf.name),
        "cores": os.cpu_count(),
        "recipe": args.recipe.name,
        "settings": settings,
        "baseline_tokens_per_s": round(base, 1),
        "ours_tokens_per_s": round(mine, 1),
        "ratio": round(mine / base, 2),
        "rounds": {k: [round(v, 1) for v in vs] for k, vs in rows.items()},
        "reproducible": reproducible,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"| {args.recipe.name}: one-sequence llama.cpp loop ({os.cpu_count()} threads) | ours ({os.cpu_count()} cores) | ratio | same seed, same text |"
    )
    print("|---|---|---|---|")
    print(f"| {base:.1f} tokens/s | {mine:.1f} tokens/s | **{mine / base:.2f}x** | {'yes' if reproducible else 'NO'} |")


if __name__ == "__main__":
    main()
