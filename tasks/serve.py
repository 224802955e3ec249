"""serve: serve the pipeline's model over an OpenAI-compatible API.

`mode: smoke` (default) starts the server on a free loopback port, runs the real `openai` client
against it — model list, chat, streamed chat with usage, completions with echo log-probs, a few
concurrent streams, and with `response_format` a structured request whose reply must follow it — records
latency and throughput, stops it, and writes the exact command that serves the artifact. `mode: foreground` serves on `host:port` until interrupted (the API key comes
from `$HALO_PIPELINE_API_KEY` or `api_key_file`, never the recipe).
"""

from __future__ import annotations

import json
import shlex
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Literal

from pydantic import Field

from halo_pipeline.engine.groups import Backend
from halo_pipeline.engine.step import Artifact, Params, Renamed, RunContext, step
from halo_pipeline.runtimes.constraints import ResponseFormat, response_format_problems


class ServeParams(Params):
    renamed: ClassVar[dict[str, Renamed]] = {"engine": Renamed("runtime", {"torch": "hf"})}

    mode: Literal["smoke", "foreground"] = Field(
        "smoke", description="smoke: start, probe with the openai client, stop; foreground: serve until interrupted."
    )
    runtime: Literal["auto", "hf", "gguf", "mlx"] = Field("auto", description="What serves the model (auto: by the model's format).")
    backend: Backend = Field(default_factory=Backend, description="Device and precision of the hf runtime (usually `${backend}`).")
    host: str = Field("127.0.0.1", description="foreground: bind address (non-loopback needs an API key).")
    port: int = Field(8001, ge=1, le=65535, description="foreground: port (smoke uses a free loopback port).")
    api_key_file: str | None = Field(None, description="foreground: file with the bearer key (or $HALO_PIPELINE_API_KEY).")
    parallel: int = Field(4, ge=1, le=64, description="Concurrent sequences.")
    max_tokens: int = Field(32, ge=1, description="smoke: tokens per probe request.")
    concurrent: int = Field(4, ge=1, le=32, description="smoke: simultaneous streams in the load probe.")
    response_format: ResponseFormat | None = Field(
        None, description="smoke: also send `structured_prompt` with this output constraint; the reply must follow it."
    )
    structured_prompt: str = Field("Describe an order as JSON.", description="smoke: the prompt of the structured request.")
    structured_max_tokens: int = Field(384, ge=1, description="smoke: tokens for the structured reply (room to finish the JSON).")


def check(params: ServeParams) -> list[Any]:
    return list(response_format_problems(params.response_format))


@step(
    inputs={"model": "model"},
    outputs={"report": "report"},
    version="2",  # 2: serve.json names the runtime
    deterministic=False,
    libraries=("llama-cpp-python", "transformers", "mlx-lm"),
    check=check,
)
def run(params: ServeParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    from halo_pipeline.serving.engines import pick_engine
    from halo_pipeline.serving.launch import Running, ServeStopped, read_api_key, serve_forever

    model = inputs["model"].path
    runtime = pick_engine(model, params.runtime)
    command = ["halo-pipeline", "serve", "--model", str(model), "--runtime", runtime, "--port", str(params.port)]
    if runtime == "hf" and not params.backend.is_cpu:
        command += ["--backend", params.backend.name]
    if params.mode == "foreground":
        key = read_api_key(params.api_key_file)
        ctx.summary(f"serving until interrupted: `{shlex.join(command)}`")
        # preflight (a key beyond loopback, no remote code) as for `halo-pipeline serve`; stops on stop_servers()
        # or when the pipeline's main thread ends (Ctrl-C, SIGTERM)
        serve_forever(model, runtime, params.host, params.port, key, params.parallel, backend=params.backend)
        raise ServeStopped(f"serving {model} on {params.host}:{params.port} was stopped")  # nothing to cache: it never finishes
    with Running(model, runtime, backend=params.backend, parallel=params.parallel) as server:
        found = smoke(server.url, server.model_id, params.max_tokens, params.concurrent)
        if params.response_format is not None:
            found.update(
                structured(server.url, server.model_id, params.response_format, params.structured_prompt, params.structured_max_tokens)
            )
    found.update({"mode": "smoke", "runtime": runtime, "command": shlex.join(command)})
    ctx.metrics.update({k: found[k] for k in ("ttft_p50_s", "chat_latency_s", "tokens_per_s_1", f"tokens_per_s_{params.concurrent}")})
    ctx.summary(
        f"{runtime}: chat {found['chat_latency_s']} s, TTFT p50 {found['ttft_p50_s']} s, {found['tokens_per_s_1']} tok/s (1 stream), "
        f"{found[f'tokens_per_s_{params.concurrent}']} tok/s ({params.concurrent} streams). Serve it with:\n\n    {shlex.join(command)}"
    )
    ctx.meta["report"] = {"command": shlex.join(command)}  # printed at the end of the run: how to serve what it made
    return {"report": _write(ctx, found)}


def _write(ctx: RunContext, found: dict[str, Any]) -> Any:
    out = ctx.path("report")
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
    return out


def _stream(client: Any, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    started = time.perf_counter()
    first, text, usage = None, [], None
    for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0.7, seed=0,
        stream=True, stream_options={"include_usage": True},
    ):  # fmt: skip
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    done = time.perf_counter()
    return {
        "ttft": (first or done) - started,
        "seconds": done - started,
        "tokens": usage.completion_tokens if usage else 0,
        "text": "".join(text),
    }


def smoke(url: str, model: str, max_tokens: int = 32, concurrent: int = 4) -> dict[str, Any]:
    """Probe a running server with the openai client; raises on any failure."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="smoke", max_retries=0, timeout=120)
    listed = [m.id for m in client.models.list()]
    if model not in listed:
        raise RuntimeError(f"/v1/models lists {listed}, not {model}")
    started = time.perf_counter()
    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=max_tokens, temperature=0
    )
    chat_latency = time.perf_counter() - started
    if chat.usage is None or chat.usage.prompt_tokens < 1:
        raise RuntimeError("chat completion returned no usage")
    single = _stream(client, model, "Write a function that adds two numbers.", max_tokens)
    echo = client.completions.create(model=model, prompt="def add(a, b):", max_tokens=0, echo=True, logprobs=1)
    scores = echo.choices[0].logprobs.token_logprobs if echo.choices[0].logprobs else None
    if not scores or scores[0] is not None or any(s is None for s in scores[1:]):
        raise RuntimeError(f"completions echo returned malformed prompt log-probs: {scores}")
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrent) as pool:
        runs = list(pool.map(lambda i: _stream(client, model, f"Count to {i + 3}.", max_tokens), range(concurrent)))
    wall = time.perf_counter() - started
    ttfts = [r["ttft"] for r in [single, *runs]]
    return {
        "model": model,
        "models_listed": listed,
        "chat_latency_s": round(chat_latency, 3),
        "chat_reply": chat.choices[0].message.content,
        "ttft_p50_s": round(statistics.median(ttfts), 3),
        "tokens_per_s_1": round(single["tokens"] / max(single["seconds"], 1e-9), 1),
        f"tokens_per_s_{concurrent}": round(sum(r["tokens"] for r in runs) / max(wall, 1e-9), 1),
        "echo_prompt_tokens": len(scores),
    }


def structured(url: str, model: str, response_format: ResponseFormat, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One chat request with the output constraint, through the openai client as a user sends it; raises unless the
    reply follows it (JSON valid against the schema, or the regex/choice matched whole)."""
    import re

    import openai

    client = openai.OpenAI(base_url=url, api_key="smoke", max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0, **response_format.openai()
    )
    text = reply.choices[0].message.content or ""
    if reply.choices[0].finish_reason == "length":
        raise RuntimeError(f"the structured reply did not finish in {max_tokens} tokens (raise structured_max_tokens): {text!r}")
    if (schema := response_format.schema_dict) is not None:
        import jsonschema

        try:
            jsonschema.validate(json.loads(text), schema)
        except (ValueError, jsonschema.ValidationError) as exc:
            raise RuntimeError(f"the server's structured reply does not follow response_format: {exc}: {text!r}") from None
    elif response_format.type in ("regex", "choice"):
        allowed = response_format.pattern if response_format.type == "regex" else "|".join(map(re.escape, response_format.choices or []))
        if not re.fullmatch(allowed or "", text):
            raise RuntimeError(f"the server's structured reply does not match response_format: {text!r}")
    return {"structured_reply": text, "structured_valid": True}
