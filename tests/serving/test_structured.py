"""Structured outputs on every engine, through the real `openai` client: JSON schemas (`response_format`, the client's
own `parse()`), vLLM's guided regex / choice / grammar, forced tool calls, streaming, mixed batches and the 400s.

The tiny model never writes valid JSON by itself (checked below), so every well-formed answer here is the
constraint's doing, not the model's.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
import serving_fixtures
from pydantic import BaseModel, Field
from tool_model import QUESTION, TOOLS

from halo_pipeline.serving.launch import Running

models, tool_models = serving_fixtures.models, serving_fixtures.tool_models
ENGINES = ["hf", "gguf", "mlx"]
ASK = [{"role": "user", "content": "Give me a person as JSON."}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "tags", "ok"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


class City(BaseModel):
    name: str = Field(max_length=12)
    population: int = Field(ge=0, le=10**7)
    capital: bool


def client(srv: Running) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module", params=ENGINES)
def server(request: pytest.FixtureRequest, models: dict[str, Path]) -> Any:
    with Running(models[request.param], parallel=4) as running:
        yield running


@pytest.fixture(scope="module", params=ENGINES)
def tool_server(request: pytest.FixtureRequest, tool_models: dict[str, Path]) -> Any:
    with Running(tool_models[request.param], name="tools") as running:
        yield running


def chat(srv: Running, **kwargs: Any) -> Any:
    body = {"model": srv.model_id, "messages": ASK, "max_tokens": 120, **kwargs}
    return client(srv).chat.completions.create(**body)


def test_the_tiny_model_does_not_write_json_by_itself(server: Running) -> None:
    for seed in range(3):
        text = chat(server, temperature=1, seed=seed, max_tokens=60).choices[0].message.content or ""
        with pytest.raises(ValueError):
            json.loads(text)


def test_json_schema_and_json_object(server: Running) -> None:
    for seed in range(3):
        r = chat(server, response_format=FORMAT, temperature=1, seed=seed)
        assert r.choices[0].finish_reason == "stop", r
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    r = chat(server, response_format={"type": "json_object"}, temperature=0.7, seed=1, max_tokens=200)
    if r.choices[0].finish_reason == "stop":  # an open object may run to max_tokens; what is there is its prefix
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    assert r.choices[0].message.content.startswith("{")


def test_the_clients_own_parse_with_a_pydantic_model(server: Running) -> None:
    r = client(server).chat.completions.parse(model=server.model_id, messages=ASK, response_format=City, max_tokens=120, seed=3)
    assert isinstance(r.choices[0].message.parsed, City), r


def test_guided_regex_choice_and_grammar(server: Running) -> None:
    r = chat(server, temperature=1, seed=0, extra_body={"guided_regex": r"[0-9]{3}-[a-z]{2,4}"})
    assert re.fullmatch(r"[0-9]{3}-[a-z]{2,4}", r.choices[0].message.content), r
    options = ["yes", "no", "maybe later"]
    for seed in range(3):
        r = chat(server, temperature=1, seed=seed, extra_body={"guided_choice": options})
        assert r.choices[0].message.content in options
    lark = 'start: "(" NUM ("+" NUM)* ")"\nNUM: /[1-9][0-9]?/'
    gbnf = 'root ::= "(" num ("+" num)? ")"\nnum ::= [1-9] [0-9]?'
    for grammar in (lark, gbnf):
        r = chat(server, temperature=1, seed=4, max_tokens=60, extra_body={"guided_grammar": grammar})
        assert r.choices[0].finish_reason == "stop" and re.fullmatch(r"\([1-9][0-9]?(\+[1-9][0-9]?)*\)", r.choices[0].message.content), r
    # completions take them too (vLLM's extension), as does llama.cpp server's json_schema
    c = client(server).completions.create(model=server.model_id, prompt="x", max_tokens=80, extra_body={"guided_json": PERSON})
    jsonschema.validate(json.loads(c.choices[0].text), PERSON)
    c = client(server).completions.create(model=server.model_id, prompt="x", max_tokens=80, extra_body={"response_format": FORMAT})
    jsonschema.validate(json.loads(c.choices[0].text), PERSON)
    r = chat(server, extra_body={"json_schema": PERSON}, seed=5)
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


def test_streaming_and_n_choices_are_constrained(server: Running) -> None:
    parts: dict[int, str] = {}
    for chunk in chat(server, response_format=FORMAT, temperature=1, seed=9, n=2, stream=True):
        for ch in chunk.choices:
            parts[ch.index] = parts.get(ch.index, "") + (ch.delta.content or "")
    assert set(parts) == {0, 1}
    for text in parts.values():
        jsonschema.validate(json.loads(text), PERSON)


def test_constrained_and_free_requests_share_a_batch(server: Running) -> None:
    """A seeded free request writes the same text alone and next to constrained ones (the mask is per sequence)."""
    free = {"temperature": 1, "seed": 11, "max_tokens": 24, "extra_body": {"ignore_eos": True}}
    alone = chat(server, **free).choices[0].message.content
    jobs = [dict(free)] + [{"response_format": FORMAT, "temperature": 1, "seed": s} for s in range(5)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        out = list(pool.map(lambda kw: chat(server, **kw), jobs))
    assert out[0].choices[0].message.content == alone
    for r in out[1:]:
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objec"}}}},
            "response_format",
            "objec",
        ),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"if": {}}}}}, "response_format", "if"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "schema"),
        ({"response_format": {"type": "yaml"}}, "response_format", "yaml"),
        ({"guided_json": "{not json"}, "guided_json", "JSON"),
        ({"guided_json": {"type": "string", "pattern": "a(b"}}, "guided_json", "regex"),
        ({"guided_regex": "a(b"}, "guided_regex", "unclosed"),
        ({"guided_choice": []}, "guided_choice", "strings"),
        ({"guided_grammar": "start: foo"}, "guided_grammar", "foo"),
        ({"guided_regex": "a+", "guided_choice": ["a"]}, "guided_choice", "both"),
    ],
)
def test_bad_constraints_are_a_400_naming_the_parameter(server: Running, extra: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        chat(server, max_tokens=4, extra_body=extra)
    assert bad.value.body["param"] == param and words in bad.value.body["message"], bad.value.body


def test_a_repeated_schema_compiles_once_and_prefixes_are_reused(server: Running) -> None:
    grammars = server.app.state.server.grammars
    before, hits = grammars.hits, server.engine.prefix_hits
    schema = {"type": "object", "properties": {"k": {"enum": ["x", "y"]}}, "required": ["k"], "additionalProperties": False}
    for _ in range(2):
        r = chat(server, extra_body={"guided_json": schema}, max_tokens=20)
        assert json.loads(r.choices[0].message.content)["k"] in ("x", "y")
    assert grammars.hits >= before + 1
    assert server.engine.prefix_hits > hits  # the same prompt twice: its KV reused, constrained or not


def test_log_probs_stay_the_models_own(server: Running) -> None:
    """Under a constraint the reported log-probs are the model's (the mask changes what is drawn, not them): the
    top alternatives include tokens the grammar forbids, and the drawn token's log-prob is among them or below."""
    r = chat(server, response_format=FORMAT, temperature=0, max_tokens=12, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert content and all(t.logprob <= 0 for t in content)
    first = content[0]  # the grammar allows only "{" (or a space) first; the model's own top-3 are other tokens
    assert first.token in ("{", " {", " ") and any(alt.token not in ("{", " {", " ") for alt in first.top_logprobs)


# -- tool calls ------------------------------------------------------------------------------------------------------

ODD = [{"role": "user", "content": "zq"}]  # nothing like what the tool model learned: left alone it calls nothing well-formed
STRICT_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 12}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                "required": ["city", "days"],
                "additionalProperties": False,
            },
        },
    },
    {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}},
]


def test_forced_tool_calls_follow_the_parameter_schema(tool_server: Running) -> None:
    c = client(tool_server)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in STRICT_TOOLS}
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        for seed in range(2):
            r = c.chat.completions.create(
                model="tools", messages=ODD, tools=STRICT_TOOLS, tool_choice=choice, temperature=1, seed=seed, max_tokens=80
            )
            (call,) = r.choices[0].message.tool_calls
            assert r.choices[0].finish_reason == "tool_calls"
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    # streamed: the constrained call arrives as tool_calls deltas
    args, reasons = "", []
    for chunk in c.chat.completions.create(
        model="tools", messages=ODD, tools=STRICT_TOOLS, tool_choice="required", temperature=1, seed=5, max_tokens=80, stream=True
    ):
        for ch in chunk.choices:
            for delta in ch.delta.tool_calls or []:
                args += delta.function.arguments or ""
            reasons.append(ch.finish_reason)
    assert "tool_calls" in reasons and isinstance(json.loads(args), dict)
    # the model's own well-formed call is still what it writes when the schema allows it
    r = c.chat.completions.create(model="tools", messages=QUESTION, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=80)
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"city": "Paris"}


def test_strict_tools_under_auto(tool_server: Running) -> None:
    """tool_choice auto with a strict tool: the model still chooses between text and a call; a call it makes follows
    the schema. Asked the question it learned, it calls; the call's arguments are what it learned."""
    c = client(tool_server)
    strict = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "strict": True}}]
    r = c.chat.completions.create(model="tools", messages=QUESTION, tools=strict, temperature=0, max_tokens=80)
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}, r
    for seed in range(3):  # sampled: text, or calls that validate
        r = c.chat.completions.create(model="tools", messages=ODD, tools=STRICT_TOOLS, temperature=1, seed=seed, max_tokens=60)
        for call in r.choices[0].message.tool_calls or []:
            params = {t["function"]["name"]: t["function"]["parameters"] for t in STRICT_TOOLS}[call.function.name]
            if call.function.name == "get_weather":
                jsonschema.validate(json.loads(call.function.arguments), params)
    with pytest.raises(openai.BadRequestError) as bad:
        c.chat.completions.create(model="tools", messages=QUESTION, tools=strict, response_format={"type": "json_object"})
    assert bad.value.body["param"] == "response_format"


def test_a_lone_gguf_file_uses_llama_cpps_vocabulary(tool_models: dict[str, Path]) -> None:
    """No HF tokenizer beside the file: llguidance reads llama.cpp's own vocabulary."""
    with Running(tool_models["gguf-file"], name="tools") as srv:
        assert srv.engine.tokenizer is None
        r = chat(srv, response_format=FORMAT, temperature=1, seed=2)
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
        r = chat(srv, temperature=1, seed=2, extra_body={"guided_choice": ["red", "green"]})
        assert r.choices[0].message.content in ("red", "green")
