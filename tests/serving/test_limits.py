"""A server that cannot be wedged: slots come back on every path, every endpoint is bounded, bad input is a 400."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import serving_fixtures

from halo_pipeline.serving.launch import Running

models, smollm2_gguf = serving_fixtures.models, serving_fixtures.smollm2_gguf  # the fixtures the serving tests share

CHAT = [{"role": "user", "content": "Say hello."}]


def health(srv: Running) -> dict[str, Any]:
    return httpx.get(srv.url.removesuffix("/v1") + "/health", timeout=10).json()


def settle(srv: Running, seconds: float = 20) -> dict[str, Any]:
    """/health once nothing is queued or running any more (or after `seconds`)."""
    deadline = time.time() + seconds
    h = health(srv)
    while (h["queue_depth"] or h["active_requests"] or h["engine_sequences"]) and time.time() < deadline:
        time.sleep(0.1)
        h = health(srv)
    return h


def raw_request(srv: Running, path: str, body: dict[str, Any]) -> None:
    """Send a whole request over a real socket and hang up before the first byte of the answer."""
    payload = json.dumps(body).encode()
    head = f"POST /v1{path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(head.encode() + payload)


def test_clients_that_hang_up_give_every_queue_slot_back(models: dict[str, Path]) -> None:
    # capacity 8 + queue 16: before the fix, three n=8 streams that hung up before their first token held the queue forever
    with Running(models["hf"], parallel=4, max_queue=16) as srv:
        chat = {"model": srv.model_id, "messages": CHAT, "n": 8, "max_tokens": 400, "ignore_eos": True, "stream": True}
        completion = {"model": srv.model_id, "prompt": "Once", "n": 8, "max_tokens": 400, "ignore_eos": True, "stream": True}
        statuses = []
        for i in range(12):
            body = chat if i % 2 else completion
            path = "/chat/completions" if i % 2 else "/completions"
            if i % 3 == 0:
                raw_request(srv, path, body)  # gone before the first byte
                continue
            with httpx.stream("POST", srv.url + path, json=body, timeout=60) as r:
                statuses.append(r.status_code)
                if i % 3 == 2 and r.status_code == 200:
                    next(r.iter_lines())  # gone mid-stream
        assert set(statuses) <= {200, 429}, statuses
        h = settle(srv)
        assert h["queue_depth"] == 0 and h["active_requests"] == 0 and h["engine_sequences"] == 0, h
        reply = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0).chat.completions.create(
            model=srv.model_id, messages=CHAT, max_tokens=4
        )
        assert reply.choices[0].message.content is not None


def test_a_non_streaming_request_whose_client_left_frees_its_slots(smollm2_gguf: Path) -> None:
    with Running(smollm2_gguf, parallel=1) as srv:
        body = {"model": srv.model_id, "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{srv.url}/completions", json=body, timeout=httpx.Timeout(10, read=1.5))  # 400 tokens take ~10 s
        left = time.time()
        h = settle(srv, 5)
        assert h["active_requests"] == 0 and h["engine_sequences"] == 0, h
        assert time.time() - left < 5


def test_echo_scoring_is_bounded_admitted_and_off_the_event_loop(smollm2_gguf: Path) -> None:
    with Running(smollm2_gguf, parallel=1, max_queue=0) as srv:
        c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)
        started = time.time()
        with pytest.raises(openai.BadRequestError) as too_long:  # before: scored on the event loop for seconds, then a 500
            c.completions.create(model=srv.model_id, prompt=[1] * 8000, max_tokens=0, echo=True, logprobs=5)
        assert too_long.value.body["code"] == "context_length_exceeded" and time.time() - started < 5
        with pytest.raises(openai.BadRequestError, match="context"):
            c.completions.create(model=srv.model_id, prompt=[1] * 3000, max_tokens=1, echo=True, logprobs=1)

        ids = [(i * 37) % 20000 + 100 for i in range(800)]  # a long prompt: seconds of scoring on one thread
        result: dict[str, Any] = {}

        def score() -> None:
            r = c.completions.create(model=srv.model_id, prompt=ids, max_tokens=0, echo=True, logprobs=5)
            result["scores"] = r.choices[0].logprobs.token_logprobs

        worker = threading.Thread(target=score)
        started = time.perf_counter()
        worker.start()
        waits, seen_active = [], False
        while worker.is_alive():
            t0 = time.perf_counter()
            h = health(srv)
            waits.append(time.perf_counter() - t0)
            if h["active_requests"] == 1 and not seen_active:  # early in seconds of scoring: the only slot is held
                seen_active = True
                with pytest.raises(openai.RateLimitError):
                    c.completions.create(model=srv.model_id, prompt="hi", max_tokens=0, echo=True, logprobs=1)
            time.sleep(0.1)
        worker.join()
        scoring = time.perf_counter() - started
        assert seen_active and len(result["scores"]) == len(ids) and result["scores"][0] is None
        # /health answered while the prompt was scored: scoring on the event loop would hold one /health for
        # about the whole scoring time; relative to it, so that a busy machine slows both alike
        assert max(waits) < max(2.0, scoring / 3), (scoring, waits)
        assert settle(srv)["active_requests"] == 0


def test_bad_token_ids_are_400_and_never_a_500(models: dict[str, Path]) -> None:
    for engine in ("hf", "gguf"):
        with Running(models[engine]) as srv:
            c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0)
            for prompt in ([1, 2, 10**6], [5, -1], [2**70]):
                for echo in (False, True):
                    with pytest.raises(openai.BadRequestError) as bad:
                        c.completions.create(model=srv.model_id, prompt=prompt, max_tokens=2, echo=echo, logprobs=1 if echo else None)
                    assert bad.value.body["param"] == "prompt" and "token id" in bad.value.body["message"], bad.value.body
            ok = c.completions.create(model=srv.model_id, prompt=[5, 6, 7], max_tokens=2, echo=True, logprobs=1)
            assert len(ok.choices[0].logprobs.token_logprobs) >= 3


def test_embeddings_are_admitted_and_bounded(models: dict[str, Path]) -> None:
    with Running(models["hf"], parallel=1, max_queue=0, max_embedding_inputs=4) as srv:  # capacity 2, no queue
        c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0)
        with pytest.raises(openai.BadRequestError) as many:
            c.embeddings.create(model=srv.model_id, input=["a"] * 5)
        assert many.value.body["param"] == "input"
        with pytest.raises(openai.BadRequestError) as long:
            c.embeddings.create(model=srv.model_id, input=["hello", "the quick brown fox " * 200])
        assert long.value.body["code"] == "context_length_exceeded" and "input[1]" in long.value.body["message"]
        busy = {"model": srv.model_id, "prompt": "Once", "n": 2, "max_tokens": 480, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{srv.url}/completions", json=busy, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)
            with pytest.raises(openai.RateLimitError):
                c.embeddings.create(model=srv.model_id, input="hello")
        settle(srv)
        assert len(c.embeddings.create(model=srv.model_id, input=["hello", "world"]).data) == 2


def test_echo_tokens_and_offsets_match_decoding_the_prefixes(models: dict[str, Path]) -> None:
    with Running(models["hf"]) as srv:
        prompt = "naïve 🦙 café: def f(x):\n    return x * 2\n" * 3
        r = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0).completions.create(
            model=srv.model_id, prompt=prompt, max_tokens=0, echo=True, logprobs=2
        )
        block = r.choices[0].logprobs
        engine = srv.engine
        ids = engine.encode(prompt)
        pieces = [engine.decode(ids[: i + 1])[len(engine.decode(ids[:i])) :] for i in range(len(ids))]  # the definition
        assert block.tokens == pieces
        assert block.text_offset == [len("".join(pieces[:i])) for i in range(len(ids))]
        assert all(len(t) == 2 for t in block.top_logprobs[1:])


def test_streamed_text_equals_the_full_decode_at_a_constant_cost_per_token(models: dict[str, Path], smollm2_gguf: Path) -> None:
    from halo_pipeline.serving.detokenize import TextStream
    from halo_pipeline.serving.engines import GGUFEngine, MLXEngine

    text = "naïve 🦙 café — 東京 — def f(x):\n    return x * 2\n" * 80
    for engine in (MLXEngine(models["mlx"]), GGUFEngine(smollm2_gguf, parallel=1)):  # an HF tokenizer; llama.cpp's own
        ids = engine.encode(text)
        for stops in ([], ["return x"]):
            stream = TextStream(engine, stops)
            started = time.perf_counter()
            deltas = []
            for token in ids:
                deltas.append(stream.push(token))
                if stream.stopped:
                    break
            deltas.append(stream.flush())
            seconds = time.perf_counter() - started
            whole = engine.decode(ids)
            assert "".join(deltas) == (whole[: whole.index("return x")] if stops else whole)
            assert seconds < 1.0, seconds  # before: every token decoded the whole text again (5 s for 2,000 tokens)
        assert len(ids) > 1500
