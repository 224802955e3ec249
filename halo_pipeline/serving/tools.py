"""Function calling: does a chat template render tools, the messages it is given, and tool calls parsed back.

The tools go into the prompt through the model's own chat template (`tools=`), as transformers renders them.
What the model writes back is parsed in the format its template teaches: `<tool_call>{"name": ..., "arguments":
{...}}</tool_call>` (Hermes, Qwen 2.5/3, SmolLM3 and most tool-tuned open models). A template that renders tools
in another format is refused with a 400 rather than parsed wrongly. `tool_choice: required` or a named function
starts the assistant's turn with the call's opening (the prompt ends in it), so the model's reply is a call.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

OPEN, CLOSE = "<tool_call>", "</tool_call>"


def tool_format(template: str | None) -> str | None:
    """ "hermes" when the template renders tools and teaches <tool_call> calls; "other" when it renders tools in
    a format this server does not parse; None when it does not render tools at all."""
    if not template or not re.search(r"\btools\b", template):
        return None
    return "hermes" if OPEN in template else "other"


def template_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """OpenAI messages as chat templates read them: text content, tool calls with their arguments as objects
    (what templates expect; OpenAI sends a JSON string), a tool result's call id and name."""
    out = []
    for m in messages:
        message: dict[str, Any] = {"role": m.role, "content": m.text()}
        if m.name:
            message["name"] = m.name
        if m.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": _arguments_object(c.function.arguments)},
                }
                for c in m.tool_calls
            ]
        if m.tool_call_id:
            message["tool_call_id"] = m.tool_call_id
        out.append(message)
    return out


def _arguments_object(arguments: str | dict[str, Any]) -> Any:
    if isinstance(arguments, dict):
        return arguments
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments  # not JSON: the template gets the string as sent


@dataclass
class ToolPlan:
    """What a chat request does with tools: those rendered into the prompt, the text the assistant's turn starts
    with (a forced call), whether calls are parsed out of the reply, and whether more than one is kept."""

    tools: list[dict[str, Any]] | None = None
    forced: str = ""
    named: str | None = None
    parse: bool = False
    parallel: bool = True
    special: bool = False  # keep special tokens in the decoded text (the model's tool-call markers are special)


def forced_opening(name: str | None) -> str:
    """The start of a call the prompt ends with: any call (`required`), or this function's (a named choice)."""
    if name is None:
        return OPEN + "\n"
    return OPEN + "\n" + '{"name": ' + json.dumps(name) + ', "arguments": '


class ToolCallParser:
    """Text deltas in, ("text", str) and ("call", {"name", "arguments"}) events out, as soon as each is certain:
    text that may begin a `<tool_call>` is held back until it cannot; a call is emitted once it closes. A call
    that does not parse is given back as text (never dropped); a forced named call keeps its name and the
    arguments as written (OpenAI's arguments are a string the client must validate)."""

    def __init__(self, forced: str = "", named: str | None = None) -> None:
        self.buffer = ""
        self.in_call = bool(forced)
        self.call = forced[len(OPEN) :] if forced else ""  # the call's text so far (after the opening tag)
        self.named = named

    def feed(self, text: str) -> list[tuple[str, Any]]:
        events: list[tuple[str, Any]] = []
        self.buffer += text
        while True:
            if not self.in_call:
                at = self.buffer.find(OPEN)
                if at == -1:
                    keep = _partial_suffix(self.buffer, OPEN)
                    safe = self.buffer[: len(self.buffer) - keep]
                    if safe:
                        events.append(("text", safe))
                    self.buffer = self.buffer[len(safe) :]
                    return events
                if at:
                    events.append(("text", self.buffer[:at]))
                self.buffer = self.buffer[at + len(OPEN) :]
                self.in_call = True
            else:
                at = self.buffer.find(CLOSE)
                if at == -1:
                    return events
                body = self.call + self.buffer[:at]
                self.buffer = self.buffer[at + len(CLOSE) :]
                self.in_call, self.call = False, ""
                events.append(self._parsed(body, closed=True))
                self.named = None  # a forced name applies to the first call only

    def finish(self) -> list[tuple[str, Any]]:
        """What is left when the generation ends: an unclosed call (parsed if it is complete JSON), or text."""
        events: list[tuple[str, Any]] = []
        if self.in_call:
            events.append(self._parsed(self.call + self.buffer, closed=False))
        elif self.buffer:
            events.append(("text", self.buffer))
        self.buffer, self.in_call, self.call = "", False, ""
        return events

    def _parsed(self, body: str, closed: bool) -> tuple[str, Any]:
        data = _first_json_object(body)
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            args = data.get("arguments", data.get("parameters", {}))
            return "call", {"name": data["name"], "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)}
        if self.named is not None:
            return "call", {"name": self.named, "arguments": _raw_arguments(body)}
        return "text", OPEN + body + (CLOSE if closed else "")


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (it may still become the tag)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


def _first_json_object(text: str) -> Any:
    start = text.find("{")
    if start == -1:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return None
    return value


def _raw_arguments(body: str) -> str:
    """A forced call's arguments as the model wrote them: what follows `"arguments":`, less the call's closing brace."""
    at = body.find('"arguments":')
    rest = (body[at + len('"arguments":') :] if at != -1 else body).strip()
    if rest.endswith("}") and rest.count("}") > rest.count("{"):
        rest = rest[:-1].rstrip()
    parsed = _first_json_object(rest)
    return json.dumps(parsed, ensure_ascii=False) if isinstance(parsed, dict) else rest
