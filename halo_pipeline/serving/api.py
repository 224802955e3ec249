"""Request bodies of the OpenAI API subset the server speaks, validated with OpenAI's ranges.

Nothing a client sends is silently ignored when it would change the output: a parameter this server does
not implement gets a 400 naming it (`refused`). The few accepted and ignored are in `IGNORED`: they do not
change what the model generates.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Accepted and ignored: bookkeeping and routing that do not change the output (OpenAI's `user`, `metadata`,
# `store`, `service_tier`, prompt-cache routing keys; `prediction` only changes latency).
IGNORED = frozenset({"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier", "prediction"})

# Known OpenAI parameters this server does not implement, and why (the 400 says so).
NOT_IMPLEMENTED = {
    "functions": "the deprecated `functions` API is not supported: send `tools` (and `tool_choice`) instead",
    "function_call": "the deprecated `function_call` is not supported: send `tool_choice` instead",
    "audio": "audio output is not supported: the served models produce text",
    "reasoning_effort": "reasoning_effort is not supported by the served models",
    "verbosity": "verbosity is not supported by the served models",
    "web_search_options": "web search is not supported",
    "suffix": "suffix (fill-in-the-middle) is not supported",
    "dimensions": "dimensions is not supported: the embedding is the model's hidden size",
    "min_p": "min_p is not supported (use top_p or top_k)",
    "repetition_penalty": "repetition_penalty is not supported (use presence_penalty or frequency_penalty)",
    "min_tokens": "min_tokens is not supported (ignore_eos generates exactly max_tokens)",
}


def refused(body: BaseModel) -> tuple[str, str] | None:
    """(param, why) for the first parameter sent that this server would otherwise have to ignore."""
    for key, value in (body.model_extra or {}).items():
        if key in IGNORED or value is None:
            continue
        return key, NOT_IMPLEMENTED.get(key, f"{key} is not a parameter this server supports")
    return None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # collected, then refused or ignored by `refused`

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # vLLM's extension; 0 = off
    n: int = Field(1, ge=1, le=8)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False  # vLLM's extension: generate exactly max_tokens (benchmarks)
    # output constraints (constraints.py): vLLM's guided decoding, and llama.cpp server's json_schema / grammar
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    json_schema: dict[str, Any] | str | None = None
    grammar: str | None = None

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (v or {}).items():
            if not key.lstrip("-").isdigit():
                raise ValueError(f"keys are token ids; got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"values are in [-100, 100]; got {bias} for {key}")
        return v

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops


class FunctionCall(BaseModel):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = ""
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: text only (the caller refuses the others)
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""

    def non_text_part(self) -> str | None:
        if isinstance(self.content, list):
            for part in self.content:
                if part.get("type") != "text":
                    return str(part.get("type"))
        return None


class Function(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: Function


class NamedChoice(BaseModel):
    class Name(BaseModel):
        name: str

    type: Literal["function"]
    function: Name


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    modalities: list[str] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default for completions; 0 with echo scores the prompt only
    best_of: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None  # vLLM takes it on completions too


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
