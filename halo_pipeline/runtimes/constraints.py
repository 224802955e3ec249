"""Output constraints: JSON schemas, regular expressions, choices and grammars turned into token masks.

Every runtime that constrains what a model writes uses one library, llguidance: a constraint becomes an llguidance
grammar (`Spec`), which is compiled once per vocabulary and cached by its text (`Grammars`); each generation then
walks its own copy of the compiled matcher (`Guide`): before each token it gets the set of tokens the grammar allows
next, after it the token sampled. The mask is applied to the logits before sampling, so temperature, top-p and seeds
work as usual on what the grammar allows. `serve` builds specs from requests (serving/constraints.py); the steps
(synthesize, probe, eval) from their `response_format` (`ResponseFormat`).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from halo_pipeline.engine.groups import recipe_json_file

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


def as_schema(value: Any, param: str) -> dict[str, Any]:
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

    return Spec(llguidance.LLMatcher.grammar_from_json_schema(as_schema(schema, param), defaults=JSON_OPTIONS), param)  # type: ignore[arg-type]


def regex(pattern: Any, param: str) -> Spec:
    import llguidance

    if not isinstance(pattern, str) or not pattern:
        raise ConstraintError(param, f"{param}: a regular expression is a non-empty string")
    return Spec(llguidance.LLMatcher.grammar_from_regex(pattern), param)


def choice(options: Any, param: str) -> Spec:
    import llguidance

    if not isinstance(options, list) or not options or not all(isinstance(o, str) and o for o in options):
        raise ConstraintError(param, f"{param}: a list of one or more non-empty strings")
    return Spec(llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(lark_string(o) for o in options)), param)


def grammar(text: Any, param: str) -> Spec:
    """A Lark grammar (llguidance's dialect) or a GBNF one (llama.cpp's), told apart by llguidance."""
    import llguidance

    if not isinstance(text, str) or not text.strip():
        raise ConstraintError(param, f"{param}: a grammar is a non-empty string (Lark or GBNF)")
    try:
        return Spec(llguidance.grammar_from("grammar", text), param)
    except ValueError as exc:
        raise ConstraintError(param, f"{param}: {exc}") from None


def lark_string(text: str) -> str:
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

    def pick(self, logits: np.ndarray, eos_id: int) -> int | None:
        """Greedy decoding under the grammar: the most likely token it allows next, taken; None once the output is
        complete (the grammar stopped, or end-of-sequence was the pick)."""
        if self.done:
            return None
        allowed = self.allowed(logits.shape[-1])
        token = int(np.argmax(np.where(allowed, logits, -np.inf)))
        self.advance(token)
        return None if token == eos_id else token


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


# -- from a step's settings -------------------------------------------------------------------------------------


class ResponseFormat(BaseModel):
    """A step's output constraint (`response_format:` of synthesize, probe and eval), in OpenAI's words plus vLLM's
    guided kinds: `{type: json_object}`, `{type: json_schema, schema: <a schema, or a .json file>}` (OpenAI's
    `json_schema: {name, schema, strict}` also reads), `{type: regex, pattern: ...}`, `{type: choice, choices: [...]}`,
    `{type: grammar, grammar: <Lark or GBNF>}`. A schema file is read when the recipe is validated (relative to the
    recipe's folder), so the schema itself is in the step's settings, its cache key and the manifest."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["json_object", "json_schema", "regex", "choice", "grammar"] = Field(description="What constrains the output.")
    json_schema_: dict[str, Any] | str | None = Field(
        None, alias="schema", description="json_schema: the JSON schema, inline or a .json file (relative to the recipe)."
    )
    schema_file: str | None = Field(None, description="The file the schema was read from, as the recipe names it (set for you).")
    json_schema: dict[str, Any] | None = Field(None, description="OpenAI's form: {name, schema, strict}.")
    pattern: str | None = Field(None, description="regex: the regular expression the whole output matches.")
    choices: list[str] | None = Field(None, description="choice: the output is exactly one of these.")
    grammar: str | None = Field(None, description="grammar: a Lark (llguidance) or GBNF (llama.cpp) grammar.")

    @model_validator(mode="before")
    @classmethod
    def _read_schema_file(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("schema"), str):
            return data
        schema = recipe_json_file(data["schema"], info)
        return {**data, "schema": schema, "schema_file": data["schema"]}  # as written: the key holds the schema, not where it lay

    @model_validator(mode="after")
    def _fields_of_type(self) -> ResponseFormat:
        needs = {"json_schema": ("schema", "json_schema"), "regex": ("pattern",), "choice": ("choices",), "grammar": ("grammar",)}
        given = {"schema": self.json_schema_, "json_schema": self.json_schema, "pattern": self.pattern, "choices": self.choices}
        given["grammar"] = self.grammar
        wanted = needs.get(self.type, ())
        if wanted and all(given[k] is None for k in wanted):
            raise ValueError(f"type {self.type} needs {' or '.join(wanted)}")
        stray = [k for k, v in given.items() if v is not None and k not in wanted]
        if stray:
            raise ValueError(f"{', '.join(stray)} does not go with type {self.type}")
        return self

    @property
    def schema_dict(self) -> dict[str, Any] | None:
        """The JSON schema this format asks for (json_object: any object), or None for regex/choice/grammar."""
        if self.type == "json_object":
            return {"type": "object"}
        if self.type != "json_schema":
            return None
        if self.json_schema is not None:
            return as_schema(self.json_schema.get("schema"), "response_format.json_schema.schema")
        return as_schema(self.json_schema_, "response_format.schema")

    def spec(self) -> Spec:
        """The llguidance grammar; ConstraintError (naming response_format) when the library cannot compile it."""
        param = "response_format"
        if (schema := self.schema_dict) is not None:
            return json_schema(schema, param)
        if self.type == "regex":
            return regex(self.pattern, param)
        if self.type == "choice":
            return choice(self.choices, param)
        return grammar(self.grammar, param)

    def openai(self) -> dict[str, Any]:
        """The `openai` client's keyword arguments for this constraint: response_format for JSON, vLLM's guided_* (which
        `serve` reads too) in extra_body else."""
        if self.type == "json_object":
            return {"response_format": {"type": "json_object"}}
        if self.type == "json_schema":
            spec = {"name": "output", "schema": self.schema_dict, "strict": True, **(self.json_schema or {})}
            return {"response_format": {"type": "json_schema", "json_schema": spec}}
        guided = {"regex": self.pattern, "choice": self.choices, "grammar": self.grammar}[self.type]
        return {"extra_body": {f"guided_{self.type}": guided}}


def response_format_problems(response_format: ResponseFormat | None) -> list[tuple[str, str]]:
    """Validation: (key, why) when the library cannot compile the format (an unsupported schema keyword, a bad regex)."""
    if response_format is None:
        return []
    import llguidance

    try:
        spec = response_format.spec()
    except ConstraintError as exc:
        return [("response_format", exc.message)]
    error = llguidance.LLMatcher.validate_grammar(spec.grammar, None)  # what compiling it for any vocabulary would say
    return [("response_format", f"llguidance cannot compile it: {_reason(error)}")] if error else []


class GuidedLogits:
    """A transformers logits processor: each row of a `generate` batch walks its own copy of the constraint.

    Called before each new token with the ids so far; the token sampled last for a row is fed to that row's guide,
    then every token the guide does not allow next gets -inf. Once a row's output is complete its guide allows only
    end-of-sequence (and takes no more tokens: generate pads a finished row until the batch ends)."""

    def __init__(self, constraint: Constraint, rows: int, prompt_length: int) -> None:
        self.guides = [constraint.start() for _ in range(rows)]
        self.prompt_length = prompt_length

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        fed = input_ids.shape[1] > self.prompt_length
        last = input_ids[:, -1].tolist() if fed else []
        allowed = np.empty(tuple(scores.shape), dtype=bool)
        for row, guide in enumerate(self.guides):
            if fed and not guide.done:
                guide.advance(int(last[row]))
            allowed[row] = guide.allowed(scores.shape[-1])
        return scores.masked_fill(~torch.from_numpy(allowed).to(scores.device), float("-inf"))  # one mask for the batch
