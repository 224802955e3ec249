"""Conformance: what OpenAI-API clients send, on every engine, through the real `openai` client over loopback.

Tool calling (a tiny model that really calls a tool), log-probs checked against the model's own log-softmax,
batched prompt arrays, sampling parameters checked against a reference decode, embeddings, LoRA adapters served
unmerged, and a 400 naming the parameter for everything the server does not do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import serving_fixtures
from serving_fixtures import logprob_tolerance
from tool_model import ANSWER, CALL, QUESTION, TOOLS, answered

from halo_pipeline.serving.launch import Running

models, tool_models, loras = serving_fixtures.models, serving_fixtures.tool_models, serving_fixtures.loras
ENGINES = ["hf", "gguf", "mlx"]
CHAT = [{"role": "user", "content": "Say hello."}]


def client(srv: Running) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module", params=ENGINES)
def server(request: pytest.FixtureRequest, models: dict[str, Path]) -> Any:
    with Running(models[request.param]) as running:
        yield running


@pytest.fixture(scope="module", params=[*ENGINES, "gguf-file", "torch-special"])
def tool_server(request: pytest.FixtureRequest, tool_models: dict[str, Path]) -> Any:
    with Running(tool_models[request.param], name="tools") as running:
        if request.param == "gguf-file":  # llama.cpp's own tokenizer, the template stored in the file
            assert running.engine.tokenizer is None and running.engine.chat_template()
        if request.param == "torch-special":  # the markers are special tokens: a plain decode drops them
            assert running.engine.decode(running.engine.encode("<tool_call>")) == ""
        yield running


def hf_logprobs(path: Path, ids: list[int], adapter: Path | None = None) -> np.ndarray:
    """[len(ids), vocab] log P(next | ids[: i + 1]) from the HF model itself (float64)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1).numpy()


# -- function calling --------------------------------------------------------------------------------------------


def test_the_openai_tool_calling_flow(tool_server: Running) -> None:
    c = client(tool_server)
    first = c.chat.completions.create(model="tools", messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=60)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None, choice
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == CALL["name"] and json.loads(call.function.arguments) == CALL["arguments"]

    # streamed: the call arrives as tool_calls deltas the client accumulates
    names: dict[int, str] = {}
    args: dict[int, str] = {}
    reasons = []
    for chunk in c.chat.completions.create(model="tools", messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=60, stream=True):
        if not chunk.choices:
            continue
        for delta_call in chunk.choices[0].delta.tool_calls or []:
            names[delta_call.index] = names.get(delta_call.index, "") + (delta_call.function.name or "")
            args[delta_call.index] = args.get(delta_call.index, "") + (delta_call.function.arguments or "")
        if chunk.choices[0].finish_reason:
            reasons.append(chunk.choices[0].finish_reason)
    assert names == {0: CALL["name"]} and json.loads(args[0]) == CALL["arguments"] and reasons == ["tool_calls"]

    # the client runs the tool and sends its result back (role: tool): the model answers with it
    history = [*QUESTION, choice.message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    second = c.chat.completions.create(model="tools", messages=history, tools=TOOLS, temperature=0, max_tokens=20)
    assert second.choices[0].message.content == ANSWER and second.choices[0].finish_reason == "stop"
    assert not second.choices[0].message.tool_calls


def test_tool_choice_required_named_and_none(tool_server: Running) -> None:
    c = client(tool_server)
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        r = c.chat.completions.create(model="tools", messages=QUESTION, tools=TOOLS, tool_choice=choice, temperature=0, max_tokens=80)
        (call,) = r.choices[0].message.tool_calls
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}, r
    r = c.chat.completions.create(model="tools", messages=QUESTION, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=12)
    assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason in ("stop", "length")  # no tools in the prompt
    with pytest.raises(openai.BadRequestError) as bad:
        c.chat.completions.create(
            model="tools", messages=QUESTION, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}
        )
    assert bad.value.body["param"] == "tool_choice"
    strict = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "strict": True}}]  # constrained: test_structured.py
    r = c.chat.completions.create(model="tools", messages=QUESTION, tools=strict, temperature=0, max_tokens=80)
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"city": "Paris"}, r


def test_a_template_without_tools_is_a_clear_400(server: Running) -> None:
    c = client(server)
    with pytest.raises(openai.BadRequestError) as bad:
        c.chat.completions.create(model=server.model_id, messages=QUESTION, tools=TOOLS)
    assert bad.value.body["param"] == "tools" and bad.value.body["code"] == "tools_unsupported"
    assert "does not render tools" in bad.value.body["message"]
    with pytest.raises(openai.BadRequestError) as result:
        c.chat.completions.create(model=server.model_id, messages=answered())
    assert result.value.body["param"] == "messages" and result.value.body["code"] == "tools_unsupported"


def test_tool_call_parser_streams_at_any_split() -> None:
    from halo_pipeline.serving.tools import ToolCallParser, forced_opening

    text = 'Let me check. <tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call><tool_call>{"name": "g"}</tool_call> done <tool'
    want = [("text", "Let me check. "), ("call", {"name": "f", "arguments": '{"x": 1}'}), ("call", {"name": "g", "arguments": "{}"})]
    for size in range(1, len(text) + 1):
        parser = ToolCallParser()
        events = [e for i in range(0, len(text), size) for e in parser.feed(text[i : i + size])] + parser.finish()
        merged: list[Any] = []
        for kind, value in events:  # adjacent text pieces join
            if merged and kind == "text" and merged[-1][0] == "text":
                merged[-1] = ("text", merged[-1][1] + value)
            else:
                merged.append((kind, value))
        assert merged == [*want, ("text", " done <tool")], (size, merged)
    broken = ToolCallParser()
    assert broken.feed("<tool_call>{not json</tool_call>") == [("text", "<tool_call>{not json</tool_call>")]  # given back, not dropped
    unclosed = ToolCallParser()
    assert unclosed.feed('<tool_call>{"name": "f", "arguments": {}}') == [] and unclosed.finish() == [
        ("call", {"name": "f", "arguments": "{}"})
    ]
    forced = ToolCallParser(forced_opening("f"), named="f")  # the model writes the arguments of a named call
    assert forced.feed("{'x': oops}}\n</tool_call>") == [("call", {"name": "f", "arguments": "{'x': oops}"})]


def test_a_template_that_refuses_the_messages_is_a_400(models: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    model = tmp_path / "strict"
    shutil.copytree(models["hf"], model)
    template = model / "chat_template.jinja"
    template.write_text(
        "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" + template.read_text()
    )
    with Running(model) as srv:
        c = client(srv)
        with pytest.raises(openai.BadRequestError) as bad:
            c.chat.completions.create(model=srv.model_id, messages=[{"role": "system", "content": "Be brief."}, *CHAT], max_tokens=2)
        assert bad.value.body["param"] == "messages" and "System role not supported" in bad.value.body["message"]
        assert c.chat.completions.create(model=srv.model_id, messages=CHAT, max_tokens=2).choices  # what it accepts is served


# -- log-probs -----------------------------------------------------------------------------------------------------


def test_chat_logprobs_are_the_models_own_log_softmax(server: Running) -> None:
    c = client(server)
    r = c.chat.completions.create(model=server.model_id, messages=CHAT, max_tokens=6, temperature=0, logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    prompt = server.engine.encode(server.engine.chat_prompt(CHAT))
    generated = reference_greedy(serving_fixtures_tiny(), prompt, 6, {}, 0, 0)  # what greedy decoding picks
    assert [x.token for x in content] == [server.engine.decode([t]) for t in generated]
    assert "".join(x.token for x in content) == r.choices[0].message.content
    logp = hf_logprobs(serving_fixtures_tiny(), prompt + generated)
    tol = logprob_tolerance(server.engine.name, serving_fixtures_tiny(), prompt + generated)
    for i, entry in enumerate(content):
        row = logp[len(prompt) - 1 + i]
        assert entry.logprob == pytest.approx(row[generated[i]], rel=1e-3, abs=tol)
        assert bytes(entry.bytes).decode() == entry.token
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 5 and tops == sorted(tops, reverse=True)
        assert np.allclose(tops, np.sort(row)[::-1][:5], rtol=1e-3, atol=tol)
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-6)  # greedy: the chosen one is the top
    streamed = [
        lp
        for chunk in c.chat.completions.create(
            model=server.model_id, messages=CHAT, max_tokens=6, temperature=0, logprobs=True, top_logprobs=5, stream=True
        )
        if chunk.choices and chunk.choices[0].logprobs
        for lp in chunk.choices[0].logprobs.content
    ]
    assert [(x.token, round(x.logprob, 4)) for x in streamed] == [(x.token, round(x.logprob, 4)) for x in content]


def serving_fixtures_tiny() -> Path:
    from halo_pipeline.runtimes.catalog import build_tiny

    return build_tiny()


def test_completion_logprobs_streamed_and_echoed(server: Running) -> None:
    c = client(server)
    prompt = "def f(x):"
    whole = c.completions.create(model=server.model_id, prompt=prompt, max_tokens=5, temperature=0, logprobs=2, echo=True)
    block = whole.choices[0].logprobs
    ids = server.engine.encode(prompt)
    assert block.token_logprobs[0] is None and len(block.tokens) == len(ids) + 5
    generated = ids + [server.engine.encode(t)[0] for t in block.tokens[len(ids) :]]
    logp = hf_logprobs(serving_fixtures_tiny(), generated)
    want = [logp[i - 1, generated[i]] for i in range(1, len(generated))]
    tol = logprob_tolerance(server.engine.name, serving_fixtures_tiny(), generated)
    assert np.allclose(block.token_logprobs[1:], want, rtol=1e-3, atol=tol)
    assert "".join(block.tokens) == whole.choices[0].text and block.text_offset[len(ids)] == len(prompt)
    chunks = list(c.completions.create(model=server.model_id, prompt=prompt, max_tokens=5, temperature=0, logprobs=2, stream=True))
    streamed = [lp for ch in chunks if ch.choices and ch.choices[0].logprobs for lp in ch.choices[0].logprobs.token_logprobs]
    tokens = [t for ch in chunks if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.tokens]
    assert np.allclose(streamed, block.token_logprobs[len(ids) :], atol=1e-4) and tokens == block.tokens[len(ids) :]
    assert all(len(t) == 2 for ch in chunks if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.top_logprobs)


def test_prompt_arrays_are_batched_and_numbered_like_openai(server: Running) -> None:
    c = client(server)
    prompts = ["def f(x):", "for i in", "The quick"]
    singles = [c.completions.create(model=server.model_id, prompt=p, max_tokens=4, temperature=0).choices[0].text for p in prompts]
    r = c.completions.create(model=server.model_id, prompt=prompts, max_tokens=4, temperature=0, n=2)
    assert [ch.index for ch in r.choices] == list(range(6))
    assert [ch.text for ch in sorted(r.choices, key=lambda ch: ch.index)] == [s for s in singles for _ in range(2)]
    assert r.usage.prompt_tokens == sum(len(server.engine.encode(p)) for p in prompts)
    ids = [server.engine.encode(p) for p in prompts]
    tokenized = c.completions.create(model=server.model_id, prompt=ids, max_tokens=4, temperature=0)
    assert [ch.text for ch in tokenized.choices] == singles
    echoed = c.completions.create(model=server.model_id, prompt=ids, max_tokens=0, echo=True, logprobs=1)  # lm-eval's scoring batch
    assert [len(ch.logprobs.token_logprobs) for ch in echoed.choices] == [len(i) for i in ids]
    streamed: dict[int, str] = {}
    for chunk in c.completions.create(model=server.model_id, prompt=prompts, max_tokens=4, temperature=0, stream=True):
        for ch in chunk.choices:
            streamed[ch.index] = streamed.get(ch.index, "") + ch.text
    assert [streamed[i] for i in range(3)] == singles


def test_lm_eval_local_completions_scores_like_the_model(server: Running) -> None:
    """lm-eval's `local-completions` model: log-likelihoods through batched token-id prompts with `echo`, and
    generation with `until` stops, equal to the HF model's own."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    tiny = serving_fixtures_tiny()
    lm = LocalCompletionsAPI(
        base_url=f"{server.url}/completions", model=server.model_id, tokenizer=str(tiny), tokenizer_backend="huggingface", batch_size=3
    )
    context = server.engine.encode("def f(x):")
    greedy = server.engine.decode(reference_greedy(tiny, context, 3, {}, 0, 0))
    longer = [server.engine.decode([t]) for t in reference_greedy(tiny, context, 8, {}, 0, 0)]
    stop = next(t for t in longer[1:] if t.strip())  # a stop string the greedy answer reaches, whatever the model says
    pairs = [("def f(x):", greedy), ("The quick brown", " fox"), ("for i in", " range(10):")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)], disable_tqdm=True)
    for (ctx, cont), (logprob, is_greedy) in zip(pairs, got, strict=True):
        ids, n = server.engine.encode(ctx + cont), len(server.engine.encode(ctx))
        logp = hf_logprobs(tiny, ids)
        tol = logprob_tolerance(server.engine.name, tiny, ids) * (len(ids) - n)  # a sum of that many log-probs
        assert logprob == pytest.approx(sum(logp[i - 1, ids[i]] for i in range(n, len(ids))), rel=1e-3, abs=max(tol, 5e-3)), (ctx, cont)
        assert is_greedy is (cont == greedy)
    (text,) = lm.generate_until([Instance("generate_until", {}, ("def f(x):", {"until": [stop], "max_gen_toks": 8}), 0)], disable_tqdm=True)
    assert text == "".join(longer)[: "".join(longer).index(stop)]


# -- sampling ------------------------------------------------------------------------------------------------------


def reference_greedy(path: Path, prompt: list[int], n: int, bias: dict[int, float], presence: float, frequency: float) -> list[int]:
    """Greedy decoding with OpenAI's definitions: logit_bias added, and for each token generated so far its count
    times frequency_penalty plus presence_penalty (once) subtracted."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    eos = model.generation_config.eos_token_id
    ids, out = list(prompt), []
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].double()
        for token, b in bias.items():
            logits[token] += b
        for token in set(out):
            logits[token] -= out.count(token) * frequency + presence
        if int(logits.argmax()) == eos:  # the end of the answer
            break
        out.append(int(logits.argmax()))
        ids.append(out[-1])
    return out


def test_penalties_and_logit_bias_follow_openais_definitions(server: Running) -> None:
    c = client(server)
    prompt = "def f(x):"
    ids = server.engine.encode(prompt)
    plain = reference_greedy(serving_fixtures_tiny(), ids, 10, {}, 0, 0)
    # the token the plain answer says most (penalties have something to act on) and one it never says
    said = max(set(plain), key=plain.count)
    unsaid = next(t for t in range(3, 400) if t not in plain and (piece := server.engine.decode([t])).strip() and piece.isascii())
    cases = ({"frequency_penalty": 1.5}, {"presence_penalty": 2.0}, {"logit_bias": {str(said): -100}}, {"logit_bias": {str(unsaid): 30}})
    for kwargs in cases:
        bias = {int(k): v for k, v in kwargs.get("logit_bias", {}).items()}  # type: ignore[attr-defined]
        want = reference_greedy(
            serving_fixtures_tiny(), ids, 10, bias, kwargs.get("presence_penalty", 0), kwargs.get("frequency_penalty", 0)
        )
        r = c.completions.create(model=server.model_id, prompt=prompt, max_tokens=10, temperature=0, **kwargs)  # type: ignore[arg-type]
        assert r.choices[0].text == server.engine.decode(want), kwargs
        if "logit_bias" in kwargs:  # -100 bans a token, +30 makes one all but certain
            assert (said not in want) if bias.get(said) else (unsaid in want), (kwargs, want)
        elif plain.count(said) > 1:  # a repeated token is penalised: the answer changes
            assert want != plain, kwargs
    served = c.completions.create(model=server.model_id, prompt=prompt, max_tokens=10, temperature=0).choices[0].text
    assert served == server.engine.decode(plain)


def test_seed_and_stop(server: Running) -> None:
    c = client(server)
    seeded = [
        c.completions.create(model=server.model_id, prompt="The", max_tokens=12, temperature=1.5, seed=s).choices[0].text for s in (3, 3, 4)
    ]
    assert seeded[0] == seeded[1] != seeded[2]
    text = c.completions.create(model=server.model_id, prompt="def f(x):", max_tokens=10, temperature=0).choices[0].text
    cut = c.completions.create(model=server.model_id, prompt="def f(x):", max_tokens=10, temperature=0, stop=["two"])
    assert cut.choices[0].text == text[: text.index("two")] and cut.choices[0].finish_reason == "stop"


def test_top_k_top_p_ignore_eos_and_max_completion_tokens(server: Running) -> None:
    c = client(server)
    greedy = c.completions.create(model=server.model_id, prompt="The", max_tokens=20, temperature=0)
    text = greedy.choices[0].text
    assert greedy.choices[0].finish_reason == "stop" and greedy.usage.completion_tokens < 20  # the model ends its answer
    for kwargs in ({"extra_body": {"top_k": 1}}, {"top_p": 1e-6}):  # only the most likely token is left to draw
        r = c.completions.create(model=server.model_id, prompt="The", max_tokens=20, temperature=1.5, seed=7, **kwargs)  # type: ignore[arg-type]
        assert r.choices[0].text == text, kwargs
    longer = c.completions.create(model=server.model_id, prompt="The", max_tokens=20, temperature=0, extra_body={"ignore_eos": True})
    assert longer.usage.completion_tokens == 20 and longer.choices[0].finish_reason == "length"
    assert longer.choices[0].text.startswith(text)
    chat = c.chat.completions.create(model=server.model_id, messages=CHAT, max_completion_tokens=3, extra_body={"ignore_eos": True})
    assert chat.usage.completion_tokens == 3 and chat.choices[0].finish_reason == "length"


# -- what is refused, and what is accepted and ignored ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "extra", "param"),
    [
        ("chat", {"response_format": {"type": "xml"}}, "response_format"),  # json_object/json_schema: test_structured.py
        ("chat", {"guided_regex": "a(b"}, "guided_regex"),
        ("chat", {"functions": [{"name": "f"}]}, "functions"),
        ("chat", {"reasoning_effort": "high"}, "reasoning_effort"),
        ("chat", {"top_logprobs": 2}, "top_logprobs"),
        ("chat", {"some_new_knob": 1}, "some_new_knob"),
        ("chat", {"stream_options": {"include_usage": True, "nope": 1}}, "stream_options"),
        ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]}, "messages"),
        ("chat", {"logit_bias": {"99999999": 1}}, "logit_bias"),
        ("chat", {"logit_bias": {"5": 101}}, "logit_bias"),
        ("chat", {"tool_choice": "required"}, "tool_choice"),
        ("completions", {"best_of": 3}, "best_of"),
        ("completions", {"suffix": "x"}, "suffix"),
        ("completions", {"logprobs": 6}, "logprobs"),
        ("completions", {"prompt": []}, "prompt"),
        ("completions", {"min_p": 0.1}, "min_p"),
        ("embeddings", {"dimensions": 8}, "dimensions"),
    ],
)
def test_what_the_server_does_not_do_is_a_400_naming_it(torch_server: Running, route: str, extra: dict[str, Any], param: str) -> None:
    srv = torch_server
    body: dict[str, Any] = {"model": srv.model_id}
    body.update(
        {"chat": {"messages": CHAT, "max_tokens": 2}, "completions": {"prompt": "hi", "max_tokens": 2}, "embeddings": {"input": "hi"}}[
            route
        ]
    )
    body.update(extra)
    path = {"chat": "chat/completions", "completions": "completions", "embeddings": "embeddings"}[route]
    r = httpx.post(f"{srv.url}/{path}", json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error


def test_bookkeeping_parameters_are_accepted_and_ignored(torch_server: Running) -> None:
    srv = torch_server
    body = {"model": srv.model_id, "messages": CHAT, "max_tokens": 3, "temperature": 0}
    plain = httpx.post(f"{srv.url}/chat/completions", json=body, timeout=60).json()
    extra = {"user": "u1", "metadata": {"k": "v"}, "store": False, "service_tier": "auto", "prompt_cache_key": "k", "stop": None}
    ignored = httpx.post(f"{srv.url}/chat/completions", json={**body, **extra}, timeout=60).json()
    assert ignored["choices"][0]["message"] == plain["choices"][0]["message"]


@pytest.fixture(scope="module")
def torch_server(models: dict[str, Path]) -> Any:
    """One torch server for the many small checks."""
    with Running(models["hf"]) as running:
        yield running


# -- embeddings, context size --------------------------------------------------------------------------------------


def test_embeddings_agree_across_engines(server: Running, torch_server: Running) -> None:
    texts = ["hello world", "def f(x):\n    return x * 2"]
    got = client(server).embeddings.create(model=server.model_id, input=texts)  # the openai client asks for base64
    want = torch_server.engine.embed([server.engine.encode(t) for t in texts])
    for row, ref in zip(got.data, want, strict=True):
        assert len(row.embedding) == 64 and float(np.dot(row.embedding, ref)) > 0.9999
    floats = httpx.post(f"{server.url}/embeddings", json={"model": server.model_id, "input": [1, 2, 3], "encoding_format": "float"}).json()
    assert len(floats["data"]) == 1 and len(floats["data"][0]["embedding"]) == 64


@pytest.mark.parametrize("engine", ENGINES)
def test_ctx_size_caps_the_context(models: dict[str, Path], engine: str) -> None:
    with Running(models[engine], ctx_size=64) as srv:
        assert httpx.get(srv.url.removesuffix("/v1") + "/health").json()["context_length"] == 64
        with pytest.raises(openai.BadRequestError) as bad:
            client(srv).completions.create(model=srv.model_id, prompt="the quick brown fox " * 20, max_tokens=4)
        assert bad.value.body["code"] == "context_length_exceeded"


# -- LoRA adapters, unmerged ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_adapters_are_served_unmerged_next_to_the_base(models: dict[str, Path], loras: dict[str, dict[str, Path]], engine: str) -> None:
    import asyncio

    from transformers import AutoTokenizer

    tiny = serving_fixtures_tiny()
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    prompt = "def f(x):"
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    want = {None: reference_greedy(tiny, ids, 8, {}, 0, 0)}
    for name in ("a1", "a2"):  # what the adapter merged into the base generates
        merged = _merged(tiny, loras[name]["hf"])
        want[name] = reference_greedy(merged, ids, 8, {}, 0, 0)
    assert len({tuple(v) for v in want.values()}) == 3  # each adapter changes the output
    with Running(models[engine], name="base", adapters={n: loras[n][engine] for n in ("a1", "a2")}) as srv:
        listed = {m.id: m for m in client(srv).models.list()}
        assert set(listed) == {"base", "a1", "a2"} and listed["a1"].model_extra["parent"] == "base"

        async def mixed() -> list[str]:  # the base and both adapters at once (one batch on torch)
            a = openai.AsyncOpenAI(base_url=srv.url, api_key="x", max_retries=0)
            replies = await asyncio.gather(
                *[a.completions.create(model=m, prompt=prompt, max_tokens=8, temperature=0) for m in ("base", "a1", "a2", "a1")]
            )
            return [r.choices[0].text for r in replies]

        texts = asyncio.run(mixed())
        assert texts == [tokenizer.decode(want[k]) for k in (None, "a1", "a2", "a1")]
        scored = client(srv).completions.create(model="a1", prompt=prompt, max_tokens=0, echo=True, logprobs=1).choices[0].logprobs
        logp = hf_logprobs(tiny, ids, loras["a1"]["hf"])
        tol = logprob_tolerance(engine, _merged(tiny, loras["a1"]["hf"]), ids)
        assert np.allclose(scored.token_logprobs[1:], [logp[i - 1, ids[i]] for i in range(1, len(ids))], rtol=1e-3, atol=tol)
        with pytest.raises(openai.NotFoundError):
            client(srv).completions.create(model="a3", prompt=prompt, max_tokens=2)


def _merged(base: Path, adapter: Path) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = adapter.parent / "merged"
    if not (out / "config.json").is_file():
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).merge_and_unload().save_pretrained(out)
        AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def test_serve_run_serves_a_runs_final_adapter_on_its_base(loras: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    import shutil

    from conftest import cli
    from halo_pipeline.serving.launch import run_target

    run = tmp_path / "run"
    adapter = run / "steps" / "sft" / "model"
    shutil.copytree(loras["a1"]["hf"], adapter)
    (adapter / "halo_provenance.json").write_text(json.dumps({"base": {"name": "tiny", "source": "builtin:tiny"}, "kind": "adapter"}))
    steps = {"sft": {"state": "ran", "ended": "2026-11-28T10:00:00", "outputs": {"model": {"type": "adapter"}}, "inputs": {}}}
    (run / "replay.json").write_text(json.dumps({"steps": steps}))
    base, adapters = run_target(run)
    assert base == serving_fixtures_tiny() and adapters == {"sft": adapter}
    check = cli("serve", "--run", str(run), "--check")
    assert check.returncode == 0 and "sft" in check.stdout and "preflight ok" in check.stdout, check.stderr
    with Running(base, adapters=adapters) as srv:
        assert [m.id for m in client(srv).models.list()] == [srv.model_id, "sft"]
    refused = cli("serve", "--model", str(serving_fixtures_tiny()), "--lora", f"x={loras['a1']['gguf']}", "--check")
    assert refused.returncode == 2 and "PEFT adapters" in refused.stderr
    threads = cli("serve", "--model", str(serving_fixtures_tiny()), "--threads", "2", "--check")
    assert threads.returncode == 2 and "gguf runtime" in threads.stderr


# -- engines' own knobs ----------------------------------------------------------------------------------------------


def test_a_lone_gguf_generation_uses_every_core_only_while_that_is_faster() -> None:
    from halo_pipeline.serving.gguf_engine import CpuIdle, ThreadPolicy

    class Idle(CpuIdle):
        cores = 1.0

        def quiet(self, cores: int) -> bool:
            return self.cores >= cores

    idle = Idle(set())
    policy = ThreadPolicy(solo=2, idle=idle)
    assert policy.choose(lone=False) == 1  # several at once: one thread each, always
    assert policy.choose(lone=True) == 1  # first one thread, timed
    policy.record(1, 0.015)
    assert policy.choose(lone=True, probe=False) == 1  # a prompt is never the probe
    idle.cores = 0.0
    assert policy.choose(lone=True) == 1  # another process holds the other core: stay on one thread
    idle.cores = 1.0
    assert policy.choose(lone=True) == 2  # the other core is idle: try both
    policy.record(2, 0.010)
    assert policy.choose(lone=True) == 2 and policy.choose(lone=True, probe=False) == 2  # faster: solo, prompts too
    policy.record(2, 0.500)  # then a token 30x slower (the machine got busy): leave at once
    assert policy.choose(lone=True) == 1 and policy.interval == 2 * ThreadPolicy.PROBE_S
    policy.when[2] -= ThreadPolicy.PROBE_S + 1
    assert policy.choose(lone=True) == 1  # lost lately: tried again only after twice the interval
    policy.when[2] -= ThreadPolicy.PROBE_S
    policy.record(1, 0.015)
    assert policy.choose(lone=True) == 2
    policy.record(2, 0.009)  # faster again: back to solo, the interval reset
    assert policy.choose(lone=True) == 2 and policy.interval == ThreadPolicy.PROBE_S
