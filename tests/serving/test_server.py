"""The server, hit by the real openai client over loopback, for all three engines on the tiny model."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import serving_fixtures

from halo_pipeline.runtimes.catalog import build_tiny
from halo_pipeline.serving.detokenize import TextStream
from halo_pipeline.serving.launch import Running, ServeRefused, preflight

models, smollm2_gguf = serving_fixtures.models, serving_fixtures.smollm2_gguf  # the fixtures the serving tests share

CHAT = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module", params=["hf", "gguf", "mlx"])
def server(request: pytest.FixtureRequest, models: dict[str, Path]) -> Running:
    with Running(models[request.param]) as running:
        yield running


def client(server: Running, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, **kw)  # type: ignore[arg-type]


def test_chat_sync_async_and_models(server: Running) -> None:
    c = client(server)
    assert [m.id for m in c.models.list()] == [server.model_id]
    reply = c.chat.completions.create(model=server.model_id, messages=CHAT, max_tokens=8, temperature=0)
    text = reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length") and text
    assert reply.usage.completion_tokens == len(server.engine.encode(text)) or reply.usage.completion_tokens <= 8  # real token counts
    assert reply.usage.prompt_tokens == len(server.engine.encode(server.engine.chat_prompt(CHAT)))

    async def twice() -> list[str]:
        a = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0)
        replies = await asyncio.gather(
            *[a.chat.completions.create(model=server.model_id, messages=CHAT, max_tokens=8, temperature=0) for _ in range(2)]
        )
        return [r.choices[0].message.content or "" for r in replies]

    assert asyncio.run(twice()) == [text, text]  # greedy: concurrent (batched) requests answer like a single one


def test_streaming_chunks_in_openai_shapes(server: Running) -> None:
    body = {
        "model": server.model_id,
        "messages": CHAT,
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    whole = client(server).chat.completions.create(model=server.model_id, messages=CHAT, max_tokens=8, temperature=0)
    assert streamed == whole.choices[0].message.content
    parts = list(client(server).chat.completions.create(model=server.model_id, messages=CHAT, max_tokens=8, temperature=0, stream=True))
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == streamed  # the openai client reads it too


def test_echo_logprobs_equal_the_hf_models_own(server: Running) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    prompt = "def add(a, b):\n    return a + b"
    r = client(server).completions.create(model=server.model_id, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    got = r.choices[0].logprobs.token_logprobs
    ids = server.engine.encode(prompt)
    model = AutoModelForCausalLM.from_pretrained(build_tiny())
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1).numpy()
    want = [None] + [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert got[0] is None and len(got) == len(want) and r.choices[0].text == prompt
    tol = serving_fixtures.logprob_tolerance(server.engine.name, build_tiny(), ids)
    assert np.allclose(got[1:], want[1:], rtol=1e-3, atol=tol), (got, want)  # aligned: position i scored by logits at i - 1


def test_errors_map_to_openai_classes(server: Running) -> None:
    c = client(server)
    with pytest.raises(openai.BadRequestError) as bad:
        c.chat.completions.create(model=server.model_id, messages=CHAT, temperature=3)
    assert bad.value.body["param"] == "temperature" and bad.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        c.chat.completions.create(model=server.model_id, messages=CHAT, max_tokens=10**6)
    any_id = c.chat.completions.create(model="no-such-model", messages=CHAT, max_tokens=2)  # one model: any id, as llama.cpp's
    assert any_id.model == server.model_id  # (with adapters an unserved id is a 404: test_conformance's LoRA test)
    assert httpx.get(f"{server.url}/nope").status_code == 404
    with pytest.raises(openai.APIStatusError) as big:
        c.chat.completions.create(model=server.model_id, messages=[{"role": "user", "content": "x" * (2 << 20)}])
    assert big.value.status_code == 413


def test_health_reports_the_runtime(server: Running) -> None:
    h = httpx.get(server.url.removesuffix("/v1") + "/health").json()
    assert h["status"] == "ok" and h["loaded"] and h["streaming"] and h["model"] == server.model_id
    assert {"runtime", "started_at", "queue_depth", "active_requests"} <= set(h) and h["runtime"] in ("hf", "gguf", "mlx")


def test_api_key_is_required_on_every_route_but_health(models: dict[str, Path]) -> None:
    with Running(models["gguf"], api_key="s3cret") as srv:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url, api_key="wrong", max_retries=0).models.list()
        assert httpx.post(f"{srv.url}/chat/completions", json={}).status_code == 401
        assert httpx.get(srv.url.removesuffix("/v1") + "/health").status_code == 200
        ok = openai.OpenAI(base_url=srv.url, api_key="s3cret", max_retries=0)
        assert ok.chat.completions.create(model=srv.model_id, messages=CHAT, max_tokens=4).choices
    with pytest.raises(ServeRefused, match="API key"):
        preflight(models["gguf"], "auto", "0.0.0.0", 0, None)
    assert preflight(models["gguf"], "auto", "0.0.0.0", 0, "k")["auth"] == "bearer API key"


LONG = {"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True, "stream": True}


def test_full_queue_answers_429_with_retry_after(smollm2_gguf: Path) -> None:
    with (
        Running(smollm2_gguf, parallel=1, max_queue=0) as srv,  # one context, no queue
        httpx.stream("POST", f"{srv.url}/completions", json={"model": srv.model_id, **LONG}, timeout=60) as busy,
    ):
        lines = busy.iter_lines()  # kept: a dropped iterator closes the response (a disconnect)
        next(lines)
        with pytest.raises(openai.RateLimitError) as limited:
            client(srv).chat.completions.create(model=srv.model_id, messages=CHAT, max_tokens=4)
        assert limited.value.response.headers["retry-after"] == "1" and limited.value.body["code"] == "queue_full"


def test_disconnect_frees_the_slot(smollm2_gguf: Path) -> None:
    with Running(smollm2_gguf, parallel=1) as srv:
        health = srv.url.removesuffix("/v1") + "/health"
        with httpx.stream("POST", f"{srv.url}/completions", json={"model": srv.model_id, **LONG}, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)
            assert httpx.get(health).json()["engine_sequences"] == 1
        left = time.time()  # 400 tokens would take ~10 s more
        while httpx.get(health).json()["engine_sequences"] and time.time() < left + 1.0:
            time.sleep(0.02)
        h = httpx.get(health).json()
        assert h["engine_sequences"] == 0 and h["active_requests"] == 0, h  # the engine stopped generating for it
        assert time.time() - left < 1.0
        reply = client(srv).chat.completions.create(model=srv.model_id, messages=CHAT, max_tokens=4)  # and the slot serves again
        assert reply.choices[0].message.content


def test_64_requests_8_at_a_time_without_5xx(models: dict[str, Path]) -> None:
    with Running(models["hf"], max_queue=64) as srv:
        statuses: list[int] = []
        lock = threading.Lock()

        def worker(i: int) -> None:
            r = httpx.post(
                f"{srv.url}/chat/completions",
                json={"model": srv.model_id, "messages": [{"role": "user", "content": f"n{i}"}], "max_tokens": 8, "seed": i},
                timeout=120,
            )
            with lock:
                statuses.append(r.status_code)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(worker, range(64)))
    assert len(statuses) == 64 and all(s == 200 for s in statuses), statuses


def test_text_stream_is_utf8_and_stop_safe(models: dict[str, Path]) -> None:
    from halo_pipeline.serving.engines import MLXEngine

    engine = MLXEngine(models["mlx"])  # any engine: the text layer only uses its tokenizer
    text = "naïve 🦙 café END tail"
    ids = engine.encode(text)
    assert len(ids) > len(text.split())  # byte-level pieces: multi-byte characters span tokens
    stream = TextStream(engine, [])
    deltas = [stream.push(t) for t in ids] + [stream.flush()]
    assert "".join(deltas) == text and not any("\ufffd" in d for d in deltas)
    stream = TextStream(engine, ["END"])
    out = []
    for t in ids:
        out.append(stream.push(t))
        if stream.stopped:
            break
    assert "".join(out) == "naïve 🦙 café " and stream.stopped


def test_lm_eval_local_chat_completions_against_the_server(models: dict[str, Path], tmp_path: Path) -> None:
    from helpers import run_kind

    with Running(models["gguf"]) as srv:
        params = {
            "base_url": f"{srv.url}/chat/completions",
            "endpoint_model": srv.model_id,
            "tasks": ["halo_capitals"],
            "limit": 4,
        }
        outputs, _ = run_kind("eval", params, {}, tmp_path)
    assert "exact_match" in json.loads((outputs["report"] / "eval.json").read_text())["halo_capitals"]


def test_serve_step_smoke_and_cli(models: dict[str, Path], tmp_path: Path) -> None:
    from conftest import cli
    from halo_pipeline.engine.step import Artifact
    from helpers import run_kind

    outputs, ctx = run_kind("serve", {"max_tokens": 8, "concurrent": 2}, {"model": Artifact("model", models["gguf"])}, tmp_path)
    report = json.loads((outputs["report"] / "serve.json").read_text())
    assert report["runtime"] == "gguf" and report["command"].startswith("halo-pipeline serve --model ")
    assert ctx.metrics["tokens_per_s_1"] > 0 and report["echo_prompt_tokens"] > 1
    check = cli("serve", "--model", str(models["mlx"]), "--check")
    assert check.returncode == 0 and "preflight ok" in check.stdout and "mlx" in check.stdout
    refused = cli("serve", "--model", str(models["hf"]), "--host", "0.0.0.0", "--check", env={"HALO_PIPELINE_API_KEY": ""})
    assert refused.returncode == 2 and "API key" in refused.stderr


@pytest.mark.parametrize("engine", ["hf", "gguf", "mlx"])
def test_prefix_reuse_changes_speed_not_answers(models: dict[str, Path], engine: str) -> None:
    shared = "def f(x):\n    return x * 2\n" * 6  # a long common prefix, then different endings
    prompts = [shared + "for i in range(10):\n", shared + "print(i)\n"]
    answers = {}
    for reuse in (True, False):
        with Running(models[engine], prefix_reuse=reuse, parallel=1) as srv:
            c = client(srv)
            answers[reuse] = [
                c.completions.create(model=srv.model_id, prompt=p, max_tokens=12, temperature=0).choices[0].text for p in prompts
            ]
            hits = httpx.get(srv.url.removesuffix("/v1") + "/health").json()["prefix_cache_hits"]
            assert (hits >= 1) is reuse  # the second prompt reused the first one's KV
    assert answers[True] == answers[False]


def test_the_torch_engine_runs_on_the_backends_device_and_dtype(models: dict[str, Path]) -> None:
    """`--backend` is the device group: the hf runtime loads the model in its dtype (bf16 here, on the CPU)."""
    import torch

    with Running(models["hf"], backend={"name": "cpu", "dtype": "bfloat16"}) as srv:
        assert srv.engine.model.dtype == torch.bfloat16 and srv.facts["device"] == "cpu bfloat16"
        client = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0)
        reply = client.chat.completions.create(model=srv.model_id, messages=CHAT, max_tokens=4, temperature=0)
        assert reply.usage is not None and reply.usage.completion_tokens >= 1
