"""Dataset rows as typed contracts between steps: JSONL read with per-line validation, written atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator


class Row(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str


class PromptRow(Row):
    prompt: str


class SftRow(Row):
    prompt: str | None = None
    completion: str | None = None
    messages: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _shape(self) -> SftRow:
        if self.messages is None and (self.prompt is None or self.completion is None):
            raise ValueError("needs `prompt` and `completion`, or `messages`")
        return self


class PreferenceRow(Row):
    prompt: str
    chosen: str
    rejected: str
    chosen_reward: float | None = None
    rejected_reward: float | None = None


ROW_MODELS: dict[str, type[Row]] = {"prompts": PromptRow, "sft_dataset": SftRow, "preference_dataset": PreferenceRow}
OnBadRows = Literal["error", "skip"]


class BadRow(ValueError):
    """A malformed dataset row, named by file, line and field."""


def read_rows(
    path: Path, artifact_type: str, on_bad_rows: OnBadRows = "error", bad: list[str] | None = None, columns: dict[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """Yield validated rows as dicts; a bad row raises (naming file:line and field) or is counted in `bad`."""
    for _, row in read_numbered_rows(path, artifact_type, on_bad_rows, bad, columns):
        yield row


def read_numbered_rows(
    path: Path, artifact_type: str, on_bad_rows: OnBadRows = "error", bad: list[str] | None = None, columns: dict[str, str] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Like `read_rows`, with each row's line number (its row number in a dataset file).

    Our JSONL is read line by line. A dataset file (parquet, CSV, arrow, a JSON array, a `save_to_disk`
    folder) is read with `datasets` (`data/sources.py`); with `columns:` (our field -> their column), rows of
    either are mapped onto our fields first, and a row without an `id` gets its row number."""
    from halo_pipeline.data import sources

    model = ROW_MODELS.get(artifact_type, Row)
    dataset = sources.is_dataset_path(Path(path))
    numbered: Iterable[tuple[int, Any]] = enumerate(sources.raw_rows(sources.parse(path), columns), 1) if dataset else _json_lines(path)
    where = f"{path}: row " if dataset else f"{path}:"
    for lineno, data in numbered:
        try:
            if isinstance(data, Exception):
                raise data
            if not isinstance(data, dict):
                raise ValueError("a row must be a JSON object")
            if dataset or columns:
                data = sources.map_row(data, columns or {}, lineno)
            else:
                data = sources.text_fields(data)  # `"completion": 42` is the text 42, as in a data file
            if "id" in data and not isinstance(data["id"], str):
                data["id"] = str(data["id"])
            model.model_validate(data)
        except (ValueError, ValidationError) as exc:
            msg = _describe(exc)
            if on_bad_rows == "skip":
                if bad is not None:
                    bad.append(f"{where}{lineno}: {msg}")
                continue
            raise BadRow(f"{where}{lineno}: {msg} ({_fix(msg, dataset or bool(columns))})") from None
        yield lineno, data


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, the parsed row or the error parsing it) for each non-empty line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield lineno, json.loads(line)
                except ValueError as exc:
                    yield lineno, exc


def _fix(msg: str, mapped: bool) -> str:
    if "field 'id'" in msg and not mapped:
        return "rows of our JSONL carry an `id`; with a `columns:` mapping, rows without one get their line number"
    return "set `on_bad_rows: skip` to count and skip such rows"


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts: list[str] = []
        for e in exc.errors():
            field = ".".join(str(p) for p in e["loc"]) or "row"
            parts.append(f"field '{field}': {e['msg']}")
        return "; ".join(parts)
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    return str(exc)


def read_complete_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of an append-only JSONL file a killed writer may have left torn: a last line without its
    newline (or one that does not parse) is cut off, so that appending continues on a clean line."""
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    good = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good += len(line)
    if good != path.stat().st_size:
        os.truncate(path, good)
    return rows


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one row and make it durable before going on (a kill loses at most the line being written)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def row_text(row: dict[str, Any], fields: list[str]) -> str:
    """The text of the named fields of a row (`messages` flattened to its contents)."""
    parts: list[str] = []
    for field in fields:
        value = row.get(field)
        if value is None:
            continue
        if field == "messages" and isinstance(value, list):
            parts.extend(str(m.get("content", "")) for m in value)
        else:
            parts.append(str(value))
    return "\n".join(parts)


def default_text_fields(artifact_type: str, row: dict[str, Any]) -> list[str]:
    if artifact_type == "preference_dataset":
        return ["prompt", "chosen", "rejected"]
    if "messages" in row and row.get("completion") is None:
        return ["messages"]
    return ["prompt", "completion"]
