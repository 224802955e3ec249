"""Structured outputs: JSON schemas, regular expressions, choices and grammars turned into token masks.

Every engine uses one library, llguidance: a request's constraint becomes an llguidance grammar (`Spec`), which
is compiled once per engine vocabulary and cached by its text (`Grammars`); each generation then walks its own
copy of the compiled matcher (`Guide`): before each token it gets the set of tokens the grammar allows next,
after it the token sampled. The mask is applied to the logits before sampling (after logit_bias and penalties),
so temperature, top-p/k and seeds work as usual on what the grammar allows; reported log-probs stay the model's.

Where the constraints come from (all validated before any token is generated; a bad one is a 400 naming the
parameter): OpenAI's `response_format` (`json_object`, `json_schema`), vLLM's `guided_json`, `guided_regex`,
`guided_choice`, `guided_grammar` (Lark or GBNF, as llguidance reads them), llama.cpp's `json_schema` and
`grammar`, and tool calls (`tool_choice` required or named, tools with `strict: true`).
"""

from __future__ import annotations

import json
from typing import Any

from halo_pipeline.runtimes.constraints import (
    JSON_OPTIONS,
    ConstraintError,
    Grammars,
    Spec,
    as_schema,
    choice,
    from_hf,
    grammar,
    json_schema,
    lark_string,
    regex,
)

__all__ = ["ConstraintError", "Grammars", "Spec", "from_hf", "from_request", "tool_call"]


def from_request(req: Any) -> Spec | None:
    """The one output constraint a chat or completion request asks for, or None. Two at once is a 400."""
    found: list[Spec] = []
    response_format = getattr(req, "response_format", None)
    if response_format is not None:
        kind = response_format.type
        if kind == "json_object":
            found.append(json_schema({"type": "object"}, "response_format"))
        elif kind == "json_schema":
            spec = (response_format.model_extra or {}).get("json_schema")
            if not isinstance(spec, dict) or "schema" not in spec:
                raise ConstraintError("response_format", "response_format json_schema needs json_schema: {name, schema, strict}")
            found.append(json_schema(spec["schema"], "response_format"))
        elif kind != "text":
            raise ConstraintError("response_format", f"response_format type {kind!r}: use text, json_object or json_schema")
    makers = {
        "guided_json": json_schema,
        "guided_regex": regex,
        "guided_choice": choice,
        "guided_grammar": grammar,
        "json_schema": json_schema,  # llama.cpp server's names
        "grammar": grammar,
    }
    for name, make in makers.items():
        value = getattr(req, name, None)
        if value is not None:
            found.append(make(value, name))
    if len(found) > 1:
        raise ConstraintError(found[1].param, f"{found[1].param} and {found[0].param} both constrain the output; send one")
    return found[0] if found else None


def tool_call(
    tools: list[dict[str, Any]],
    named: str | None = None,
    forced: bool = True,
    parallel: bool = True,
    markers: dict[str, int] | None = None,
) -> Spec:
    """Tool calls in the `<tool_call>{"name": ..., "arguments": ...}</tool_call>` format (`tools.py`).

    `forced` (tool_choice required or named): the continuation after the call's opening (`tools.forced_opening`):
    a named function's arguments then the call's closing brace, or a whole `{"name": ..., "arguments": ...}` of one
    of the tools; the arguments follow the function's parameter schema (an object when it has none). Otherwise
    (tool_choice auto with `strict` tools): the reply is either text that does not start with `<`, or calls (one
    unless `parallel`) whose arguments follow the schema of a strict function (any object for the others).
    `markers`: the call tags the vocabulary has as one token each (llguidance treats added tokens as special: the
    grammar names them by id, beside their spelling in ordinary tokens)."""
    import llguidance

    def args(tool: dict[str, Any]) -> str:
        function = tool["function"]
        loose = not forced and not function.get("strict")
        schema = dict(as_schema({"type": "object"} if loose else (function.get("parameters") or {"type": "object"}), "tools"))
        schema["x-guidance"] = {**JSON_OPTIONS, **schema.get("x-guidance", {})}
        return "%json " + json.dumps(schema)

    def body(i: int, tool: dict[str, Any]) -> str:
        head = "{" + json.dumps("name") + ": " + json.dumps(tool["function"]["name"]) + ", " + json.dumps("arguments") + ": "
        return f'call_{i}: {lark_string(head)} {args(tool)} "}}"'

    rules = [body(i, t) for i, t in enumerate(tools)]
    one = "call: " + " | ".join(f"call_{i}" for i in range(len(tools)))
    if forced and named is not None:
        (tool,) = [t for t in tools if t["function"]["name"] == named]
        lark = f'start: {args(tool)} "}}"'
    elif forced:
        lark = "\n".join(["start: call", one, *rules])
    else:

        def tag(text: str) -> str:
            token = (markers or {}).get(text)
            return f"({lark_string(text)} | <[{token}]>)" if token is not None else lark_string(text)

        tagged = f"tagged: {tag('<tool_call>')} /\\n?/ call /\\n?/ {tag('</tool_call>')}"
        calls = "calls: tagged (/\\n?/ tagged)*" if parallel else "calls: tagged"
        lark = "\n".join(["start: TEXT | calls", "TEXT: /([^<](?s:.*))?/", calls, tagged, one, *rules])
    return Spec(llguidance.LLMatcher.grammar_from_lark(lark), "tools")
