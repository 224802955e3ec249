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
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

# Whitespace a JSON constraint allows between tokens: at most one space (JSON on one line, as OpenAI's structured
# outputs write it), so a model cannot fill its budget with whitespace. A schema's own "x-guidance" overrides it.
JSON_OPTIONS: dict[str, Any] = {"whitespace_pattern": "[ ]?"}
CACHE_SIZE = 256  # compiled grammars kept per engine


class ConstraintError(ValueError):
    """A constraint the request cannot have: which parameter, and why (the server answers 400 with both)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param, self.message = param, message


@dataclass(frozen=True)
class Spec:
    """A constraint as llguidance reads it (its serialized grammar), and the request parameter it came from."""

    grammar: str
    param: str


# -- from a request --------------------------------------------------------------------------------------------


def _schema(value: Any, param: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ConstraintError(param, f"{param}: the schema is not valid JSON ({exc})") from None
    if isinstance(value, bool):
        value = {} if value else {"not": {}}
    if not isinstance(value, dict):
        raise ConstraintError(param, f"{param}: a JSON schema is an object; got {type(value).__name__}")
    return value


def json_schema(schema: Any, param: str) -> Spec:
    """Output that is one JSON value valid under `schema` (a dict or its JSON text)."""
    import llguidance

    return Spec(llguidance.LLMatcher.grammar_from_json_schema(_schema(schema, param), defaults=JSON_OPTIONS), param)  # type: ignore[arg-type]


def regex(pattern: Any, param: str) -> Spec:
    import llguidance

    if not isinstance(pattern, str) or not pattern:
        raise ConstraintError(param, f"{param}: a regular expression is a non-empty string")
    return Spec(llguidance.LLMatcher.grammar_from_regex(pattern), param)


def choice(options: Any, param: str) -> Spec:
    import llguidance

    if not isinstance(options, list) or not options or not all(isinstance(o, str) and o for o in options):
        raise ConstraintError(param, f"{param}: a list of one or more non-empty strings")
    return Spec(llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(_lark_string(o) for o in options)), param)


def grammar(text: Any, param: str) -> Spec:
    """A Lark grammar (llguidance's dialect) or a GBNF one (llama.cpp's), told apart by llguidance."""
    import llguidance

    if not isinstance(text, str) or not text.strip():
        raise ConstraintError(param, f"{param}: a grammar is a non-empty string (Lark or GBNF)")
    try:
        return Spec(llguidance.grammar_from("grammar", text), param)
    except ValueError as exc:
        raise ConstraintError(param, f"{param}: {exc}") from None


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
        schema = dict(_schema({"type": "object"} if loose else (function.get("parameters") or {"type": "object"}), "tools"))
        schema["x-guidance"] = {**JSON_OPTIONS, **schema.get("x-guidance", {})}
        return "%json " + json.dumps(schema)

    def body(i: int, tool: dict[str, Any]) -> str:
        head = "{" + json.dumps("name") + ": " + json.dumps(tool["function"]["name"]) + ", " + json.dumps("arguments") + ": "
        return f'call_{i}: {_lark_string(head)} {args(tool)} "}}"'

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
            return f"({_lark_string(text)} | <[{token}]>)" if token is not None else _lark_string(text)

        tagged = f"tagged: {tag('<tool_call>')} /\\n?/ call /\\n?/ {tag('</tool_call>')}"
        calls = "calls: tagged (/\\n?/ tagged)*" if parallel else "calls: tagged"
        lark = "\n".join(["start: TEXT | calls", "TEXT: /([^<](?s:.*))?/", calls, tagged, one, *rules])
    return Spec(llguidance.LLMatcher.grammar_from_lark(lark), "tools")


def _lark_string(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a Lark string literal


# -- compiled, per engine ---------------------------------------------------------------------------------------


class Constraint:
    """A compiled grammar, shared by every generation that asks for it: `start()` gives each its own walk."""

    def __init__(self, matcher: Any, vocab: int) -> None:
        self.matcher, self.vocab = matcher, vocab

    def start(self) -> Guide:
        return Guide(self.matcher.deep_copy(), self.vocab)


class Guide:
    """One generation's place in its grammar: which tokens may come next, and the tokens that came."""

    def __init__(self, matcher: Any, vocab: int) -> None:
        self.matcher, self.vocab = matcher, vocab
        self.words = np.zeros((vocab + 31) // 32, dtype=np.int32)

    def allowed(self, size: int | None = None) -> np.ndarray:
        """A bool per token id in [0, size): True where the grammar allows it next (only end-of-sequence once done)."""
        self.matcher.unsafe_compute_mask_ptr(self.words.ctypes.data, self.words.nbytes)
        if self.matcher.is_error():
            raise RuntimeError(f"the output constraint failed: {self.matcher.get_error()}")
        bits = np.unpackbits(self.words.view(np.uint8), bitorder="little").astype(bool)
        size = self.vocab if size is None else size
        return bits[:size] if size <= bits.size else np.concatenate([bits, np.zeros(size - bits.size, dtype=bool)])

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the output constraint rejected token {token}: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        return bool(self.matcher.is_stopped())


class Grammars:
    """An engine's compiled grammars, LRU-cached by grammar text (a repeated schema compiles once), built against
    the engine's vocabulary as llguidance reads it (`Engine.guidance_tokenizer`, built on first use)."""

    def __init__(self, engine: Any, size: int = CACHE_SIZE) -> None:
        self.engine, self.size = engine, size
        self.tokenizer: Any = None
        self.cache: OrderedDict[str, Any] = OrderedDict()
        self.lock = threading.Lock()
        self.hits = 0

    def compile(self, spec: Spec) -> Constraint:
        """The compiled constraint; ConstraintError (the parameter and llguidance's reason) when it cannot be."""
        import llguidance

        with self.lock:
            if self.tokenizer is None:
                try:
                    self.tokenizer = self.engine.guidance_tokenizer()
                except Exception as exc:  # e.g. a slow (Python) tokenizer: llguidance reads fast ones
                    raise ConstraintError(spec.param, f"{spec.param}: this model's tokenizer cannot be constrained ({exc})") from None
            if spec.grammar in self.cache:
                self.cache.move_to_end(spec.grammar)
                self.hits += 1
                return Constraint(self.cache[spec.grammar], self.engine.vocab_size)
            tokenizer = self.tokenizer
        matcher = llguidance.LLMatcher(tokenizer, spec.grammar, log_level=0)
        if matcher.is_error():
            raise ConstraintError(spec.param, f"{spec.param}: {_reason(matcher.get_error())}")
        Guide(matcher.deep_copy(), self.engine.vocab_size).allowed()  # warms the lexer its copies share (~15 ms, once)
        with self.lock:
            self.cache[spec.grammar] = matcher
            while len(self.cache) > self.size:
                self.cache.popitem(last=False)
        return Constraint(matcher, self.engine.vocab_size)


def _reason(error: str) -> str:
    """llguidance's message, less its internal prefixes."""
    return error.strip().removeprefix("Error: ").strip()


def from_hf(tokenizer: Any, vocab: int, eos: list[int]) -> Any:
    """llguidance's tokenizer from a fast HF tokenizer (~1 s for a 50K vocabulary; built once per engine)."""
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab, eos_token=eos)
