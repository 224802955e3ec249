"""Token ids to text: the incremental decoder behind every stream (UTF-8- and stop-string-safe) and the
legacy completions log-probs block (each token's text and offset)."""

from __future__ import annotations

from typing import Any

from halo_pipeline.serving.core import Engine

DECODE_WINDOW = 8  # tokens decoded before each one to find its text (a character spans at most 4 byte-level tokens)


class TextStream:
    """Token ids -> text deltas: UTF-8-safe (a character split across tokens waits for its last byte)
    and stop-string-safe (text that may begin a stop string is held back until it cannot).

    Incremental: each token is decoded with the few tokens of the last piece before it (what it adds is
    the difference), not with the whole generation, so a long stream costs the event loop O(1) per token.
    `special` keeps special tokens in the text (a template's tool-call markers may be special tokens)."""

    def __init__(self, engine: Engine, stops: list[str], special: bool = False) -> None:
        self.engine, self.stops, self.special = engine, stops, special
        self.ids: list[int] = []
        self.text = ""  # the decoded text of ids[: self.read]
        self.start = self.read = 0  # ids[start:read] is the last piece decoded: the context for the next one
        self.sent = 0  # characters of the text already emitted
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.engine.decode(ids, self.special) if self.special else self.engine.decode(ids)

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.start : self.read])
        after = self._decode(self.ids[self.start :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""  # nothing visible yet, or an incomplete multi-byte character
        self.text += after[len(before) :]
        self.start, self.read = self.read, len(self.ids)
        for stop in self.stops:
            at = self.text.find(stop, max(0, self.sent - len(stop)))
            if at != -1:
                self.stopped = True
                return self._take(at)
        return self._take(max(self.sent, len(self.text) - self.hold))

    def flush(self) -> str:
        if self.stopped:
            return ""
        before = self._decode(self.ids[self.start : self.read])
        self.text += self._decode(self.ids[self.start :])[len(before) :].rstrip("\ufffd")
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        delta = self.text[self.sent : upto]
        self.sent = max(self.sent, upto)
        return delta


def scored_entries(ids: list[int], scored: list[tuple[float | None, dict[int, float]]]) -> list[tuple[int, float | None, dict[int, float]]]:
    return [(token, lp, top) for token, (lp, top) in zip(ids, scored, strict=True)]


def legacy_logprobs(
    engine: Engine,
    ids: list[int],
    entries: list[tuple[int, float | None, dict[int, float]]],
    top: int | None,
    context: list[int],
    offset: int,
) -> dict[str, Any]:
    """OpenAI's legacy completions logprobs for `entries` (the last len(entries) tokens of `ids`; the ones before
    are context): tokens, token_logprobs, top_logprobs, text_offset (from `offset`).

    A token's text is what it adds to the decoded text. Decoding a short window before it, not the whole
    prefix, gives the same text and keeps this linear in the prompt's length (it runs in a thread)."""
    tokens, offsets, length = [], [], offset
    first = len(ids) - len(entries)
    for i in range(first, len(ids)):
        start = max(0, i - DECODE_WINDOW)
        piece = engine.decode(ids[start : i + 1])[len(engine.decode(ids[start:i])) :]
        offsets.append(length)
        length += len(piece)
        tokens.append(piece)
    token_logprobs = [e[1] for e in entries]
    tops = [None if e[1] is None else {engine.decode([t]): lp for t, lp in list(e[2].items())[:top]} for e in entries] if top else None
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}
