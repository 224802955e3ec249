"""The output-constraint module on its own (no server, no model): what requests turn into, the 400s' parameter and
reason, the compile cache, forced and strict tool-call grammars, and the token mask against the tiny tokenizer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from halo_pipeline.serving.api import ChatRequest, CompletionRequest
from halo_pipeline.serving.constraints import ConstraintError, Grammars, Spec, from_request, tool_call


class FakeEngine:
    """What `Grammars` asks of an engine: the vocabulary as llguidance reads it, and its size."""

    def __init__(self, broken: bool = False) -> None:
        from transformers import AutoTokenizer

        from halo_pipeline.runtimes.catalog import build_tiny

        self.tokenizer = AutoTokenizer.from_pretrained(build_tiny())
        self.vocab_size, self.eos_ids, self.broken = len(self.tokenizer), {self.tokenizer.eos_token_id}, broken

    def guidance_tokenizer(self) -> Any:
        from halo_pipeline.serving.constraints import from_hf

        if self.broken:
            raise ValueError("Only fast tokenizers are supported")
        return from_hf(self.tokenizer, self.vocab_size, sorted(self.eos_ids))


@pytest.fixture(scope="module")
def engine() -> FakeEngine:
    return FakeEngine()


def chat(**kwargs: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}], **kwargs})


def walk(grammars: Grammars, spec: Spec, text: str) -> bool:
    """Whether the grammar takes `text` token by token, each token inside the mask, and is then complete."""
    guide = grammars.compile(spec).start()
    tok = grammars.engine.tokenizer
    for token in tok(text, add_special_tokens=False)["input_ids"]:
        if not guide.allowed()[token]:
            return False
        guide.advance(token)
    return bool(guide.matcher.is_accepting())


def test_requests_become_one_spec_each() -> None:
    assert from_request(chat()) is None and from_request(chat(response_format={"type": "text"})) is None
    assert from_request(chat(response_format={"type": "json_object"})).param == "response_format"  # type: ignore[union-attr]
    schema = {"type": "object"}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    assert from_request(chat(response_format=fmt)).param == "response_format"  # type: ignore[union-attr]
    for key, value in [("guided_json", schema), ("guided_regex", "a+"), ("guided_choice", ["a"]), ("guided_grammar", 'start: "a"')]:
        assert from_request(chat(**{key: value})).param == key  # type: ignore[union-attr]
    completion = CompletionRequest.model_validate({"model": "m", "prompt": "x", "json_schema": json.dumps(schema)})
    assert from_request(completion).param == "json_schema"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kwargs", "param", "words"),
    [
        ({"response_format": {"type": "xml"}}, "response_format", "xml"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "schema"),
        ({"guided_json": "{oops"}, "guided_json", "not valid JSON"),
        ({"guided_choice": []}, "guided_choice", "strings"),
        ({"guided_regex": "a", "guided_grammar": 'start: "a"'}, "guided_grammar", "both"),
    ],
)
def test_bad_requests_name_the_parameter(kwargs: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(ConstraintError) as bad:
        from_request(chat(**kwargs))
    assert bad.value.param == param and words in bad.value.message


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"guided_json": {"type": "objec"}}, "objec"), ({"guided_json": {"if": {}}}, "if"), ({"guided_regex": "a(b"}, "unclosed")],
)
def test_what_does_not_compile_is_a_constraint_error(engine: FakeEngine, kwargs: dict[str, Any], words: str) -> None:
    spec = from_request(chat(**kwargs))
    assert spec is not None
    with pytest.raises(ConstraintError) as bad:
        Grammars(engine).compile(spec)
    assert bad.value.param == next(iter(kwargs)) and words in bad.value.message


def test_an_unreadable_tokenizer_is_a_constraint_error_not_a_crash() -> None:
    with pytest.raises(ConstraintError, match="cannot be constrained"):
        Grammars(FakeEngine(broken=True)).compile(from_request(chat(guided_regex="a")))  # type: ignore[arg-type]


def test_masks_follow_the_grammar_and_compiles_are_cached(engine: FakeEngine) -> None:
    grammars = Grammars(engine)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    spec = from_request(chat(guided_json=schema))
    assert spec is not None
    assert walk(grammars, spec, '{"n": 12}') and not walk(grammars, spec, '{"m": 1}') and not walk(grammars, spec, '{\n  "n": 1}')
    assert grammars.hits >= 2  # one compile, then the cache
    choice = from_request(chat(guided_choice=["yes", "no"]))
    assert choice is not None and walk(grammars, choice, "no") and not walk(grammars, choice, "nope")


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "f",
            "strict": True,
            "parameters": {"type": "object", "properties": {"x": {"enum": [1, 2]}}, "required": ["x"], "additionalProperties": False},
        },
    },
    {
        "type": "function",
        "function": {"name": "g", "parameters": {"type": "object", "properties": {"y": {"type": "string"}}, "required": ["y"]}},
    },
]


def test_tool_call_grammars(engine: FakeEngine) -> None:
    grammars = Grammars(engine)
    named = tool_call(TOOLS, named="f")  # after the forced opening `..."arguments": `
    assert walk(grammars, named, '{"x": 2}}') and not walk(grammars, named, '{"x": 3}}')
    required = tool_call(TOOLS)  # after `<tool_call>\n`: any tool, its own schema (strict or not)
    assert walk(grammars, required, '{"name": "g", "arguments": {"y": "a"}}')
    assert not walk(grammars, required, '{"name": "g", "arguments": {"z": 1}}')
    auto = tool_call(TOOLS, forced=False)  # strict tools under auto: text, or calls that follow the strict schemas
    assert walk(grammars, auto, "Hello.") and walk(grammars, auto, '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>')
    assert not walk(grammars, auto, '<tool_call>\n{"name": "f", "arguments": {"x": 5}}\n</tool_call>')
    assert walk(grammars, auto, '<tool_call>{"name": "g", "arguments": {"anything": true}}</tool_call>')  # g is not strict
    one = tool_call(TOOLS, forced=False, parallel=False)
    call = '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>'
    assert walk(grammars, auto, call + "\n" + call) and not walk(grammars, one, call + "\n" + call)
