"""Datasets from where they live: a Hugging Face dataset (`hf:<id>[:<config>][:<split>]`: the hub when online,
the local `datasets` cache offline), a data file (parquet, CSV/TSV, JSON/JSONL, arrow) or a directory written
by `Dataset.save_to_disk`, read with `datasets` and mapped onto our row fields with `columns:`.

`columns:` maps our field to their column: `{prompt: question, completion: answer, id: task_id}`; columns not
mapped pass through unchanged (task fields such as `test` and `entry_point` reach the verifier). Chat
columns are normalized: ShareGPT turns (`from`/`value`, human/gpt) become `role`/`content` messages, and
preference pairs given as conversations become the prompt and the two final assistant replies. A row
without an `id` gets its row number.

What a source holds is checked when a recipe is validated without importing `datasets` (which would make
`validate` slow): column names come from the file's header or schema, a saved dataset's
`dataset_info.json`, or the prepared copy of a hub dataset in the local `datasets` cache.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from halo_pipeline.data import refs
from halo_pipeline.engine.errors import did_you_mean

HF = refs.HF
BUILDERS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}
# the fields a row of each artifact type needs: any one group, complete
REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = {
    "prompts": (("prompt",),),
    "sft_dataset": (("prompt", "completion"), ("messages",)),
    "preference_dataset": (("prompt", "chosen", "rejected"), ("chosen", "rejected")),  # conversations carry their prompt
}
TEXT_FIELDS = ("id", "prompt", "completion", "chosen", "rejected")  # what a number becomes text in
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant", "model": "assistant"}
ROLES |= {"system": "system", "tool": "tool"}


class SourceError(ValueError):
    """A source that cannot be read as asked: named, with what it does hold and the fix."""


Source = refs.DatasetRef  # one parsed reference type for every dataset (see refs)


def is_source(spec: str) -> bool:
    """Whether a string names a hub dataset (local paths are told apart by `is_dataset_path`)."""
    return spec.startswith(HF)


def parse(spec: str | Path, base_dir: Path | None = None) -> Source:
    """`hf:<id>[:<config>][:<split>]` or a path (relative to `base_dir`), parsed by `refs.parse`.

    Raises:
        SourceError: a malformed reference or an unknown split (with its did-you-mean).
    """
    try:
        return refs.parse(spec, base_dir, allow=("hf", "file"))
    except refs.RefError as exc:
        raise SourceError(str(exc)) from None


def is_dataset_path(path: Path) -> bool:
    """A file or directory `datasets` reads (as opposed to our own JSONL): parquet, CSV/TSV, arrow, a JSON array,
    or a `save_to_disk` directory."""
    if path.is_dir():
        return any((path / name).is_file() for name in ("dataset_info.json", "dataset_dict.json", "state.json"))
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _json_array(path)
    return suffix in BUILDERS and suffix != ".jsonl"


def _json_array(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096).lstrip()
    except OSError:
        return False
    return head.startswith("[")


# ------------------------------------------------------------------ what a source holds (no `datasets` import)


def datasets_cache() -> Path:
    """Where `datasets` keeps prepared datasets (HF_DATASETS_CACHE, else HF_HOME/datasets), read when asked."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "huggingface")
    return Path(home).expanduser() / "datasets"


def offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _snake(name: str) -> str:
    """The folder name `datasets` gives a dataset in its cache (its camelcase_to_snakecase)."""
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z\d])([A-Z])", r"\1_\2", name).lower()


def cached_info(source: Source) -> tuple[Path, dict[str, Any]] | None:
    """The newest prepared copy of a hub dataset in the local cache (the folder and its dataset_info.json)."""
    assert source.hf_id is not None
    parts = source.hf_id.split("/")
    parts[-1] = _snake(parts[-1])
    root = datasets_cache() / "___".join(parts)
    found = [p for p in root.glob(f"{source.config or '*'}/*/*/dataset_info.json") if p.is_file()]
    if not found:
        return None
    newest = max(found, key=lambda p: p.parent.stat().st_mtime)
    return newest.parent, json.loads(newest.read_text(encoding="utf-8"))


def pick_split(splits: Iterable[str], wanted: str | None, label: str) -> str:
    """The split asked for (it must exist), or `train`, or the only one."""
    splits = list(splits)
    if wanted is not None:
        if wanted.split("[")[0] not in splits:
            close = did_you_mean(wanted.split("[")[0], splits)
            raise SourceError(
                f"{label} has no split '{wanted.split('[')[0]}'; its splits: {', '.join(splits)}" + (f"; {close}" if close else "")
            )
        return wanted
    if "train" in splits or len(splits) == 1:
        return "train" if "train" in splits else splits[0]
    raise SourceError(f"{label} has splits {', '.join(splits)}: name one (hf:<id>:<config>:<split>, or the split's own folder)")


def columns_of(source: Source) -> list[str] | None:
    """The source's column names, or None when they cannot be known before loading (a hub dataset not yet cached, online).
    Raises SourceError when the source is missing or unreadable."""
    if source.hf_id is not None:
        found = cached_info(source)
        other = cached_info(Source(source.spec, source.hf_id)) if found is None and source.config is not None else None
        if other is not None:  # cached, but not this config: a split given as a config, most likely
            configs = sorted(p.name for p in other[0].parents[2].iterdir() if p.is_dir())  # <cache>/<dataset>/<config>/<version>/<hash>
            raise SourceError(
                f"{source.spec}: the cache holds no config '{source.config}' of {source.hf_id} (cached: {', '.join(configs)}); "
                f"for a split write hf:{source.hf_id}::{source.config}"
            )
        if found is None:
            if offline():
                raise SourceError(
                    f"{source.spec} is not in the local datasets cache ({datasets_cache()}) and the hub is offline (HF_HUB_OFFLINE=1): "
                    "load it once online, or point HF_DATASETS_CACHE at a cache that holds it"
                )
            from halo_pipeline.data.hub import dataset_problem

            if why := dataset_problem(source.hf_id):  # unreachable or unknown: a validation error, not a run that retries
                raise SourceError(f"{source.spec}: {why}")
            return None
        _, info = found
        pick_split((info.get("splits") or {"train": {}}).keys(), source.split, source.spec)
        return list((info.get("features") or {}).keys())
    path = source.path
    assert path is not None
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    if path.is_dir():
        return _saved_columns(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        if suffix == ".arrow":
            return _arrow_columns(path)
        if suffix in (".csv", ".tsv"):
            with open(path, encoding="utf-8", newline="") as f:
                return next(csv.reader(f, delimiter="\t" if suffix == ".tsv" else ","), [])
        if suffix in (".json", ".jsonl"):
            return _json_columns(path)
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path} cannot be read as {BUILDERS.get(suffix, suffix)}: {exc}") from None
    return None


def _saved_columns(path: Path) -> list[str]:
    if (path / "dataset_dict.json").is_file():  # a DatasetDict: one saved Dataset per split folder
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        path = path / pick_split(splits, None, str(path))
    info = json.loads((path / "dataset_info.json").read_text(encoding="utf-8"))
    return list((info.get("features") or {}).keys())


def _arrow_columns(path: Path) -> list[str]:
    import pyarrow as pa

    with pa.memory_map(str(path)) as f:
        try:
            return list(pa.ipc.open_stream(f).schema.names)  # what datasets writes
        except pa.ArrowInvalid:
            f.seek(0)
            return list(pa.ipc.open_file(f).schema.names)


def _json_columns(path: Path, sample: int = 200) -> list[str]:
    seen: dict[str, None] = {}
    if _json_array(path):
        rows = json.loads(path.read_text(encoding="utf-8"))[:sample]
    else:
        rows = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rows.append(json.loads(line))
                if len(rows) >= sample:
                    break
    for row in rows:
        if isinstance(row, dict):
            seen.update(dict.fromkeys(row))
    return list(seen)


def column_problems(source: Source, columns: dict[str, str], required: tuple[tuple[str, ...], ...]) -> list[tuple[str, str]]:
    """What validation reports: `(field, text)` for a mapped column the source lacks, `("", text)` for a field
    no column provides (or a source that cannot be read). Nothing when the columns are unknown until loading."""
    try:
        have = columns_of(source)
    except SourceError as exc:
        return [("", str(exc))]
    if have is None:
        return []
    listing = ", ".join(have) or "none"
    problems = [
        (ours, f"{source.label} has no column '{theirs}' (mapped to {ours}); its columns: {listing}")
        for ours, theirs in columns.items()
        if theirs not in have
    ]
    fields = set(have) | {ours for ours, theirs in columns.items() if theirs in have}
    if required and not any(set(group) <= fields for group in required):
        missing = [f for f in required[0] if f not in fields]
        needs = " or ".join(" + ".join(g) for g in required)
        problems.append(
            ("", f"{source.label} has no column '{missing[0]}' (rows need {needs}); its columns: {listing}; "
                 f"map one with `columns: {{{missing[0]}: <column>}}`")
        )  # fmt: skip
    return problems


def fingerprint(source: Source) -> str:
    """What the cache key takes for a source: the file's (or folder's) digest, or the prepared hub copy it reads."""
    if source.hf_id is not None:
        found = cached_info(source)
        return f"{source.spec}@{found[0].name if found else 'hub'}"
    from halo_pipeline.engine.execute import external_digest

    assert source.path is not None
    return external_digest(source.path) if source.path.exists() else "missing"


# ------------------------------------------------------------------ loading rows


def load_rows(source: Source, columns: dict[str, str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The source's rows mapped onto our fields (see `map_row`); the first `limit` when given."""
    rows = []
    for n, row in enumerate(raw_rows(source, columns, limit), 1):
        try:
            rows.append(map_row(row, columns or {}, n))
        except ValueError as exc:
            raise SourceError(f"{source.label}: row {n}: {exc}") from None
    return rows


def raw_rows(source: Source, columns: dict[str, str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The source's rows as they are (JSON values), once its columns are known to hold what `columns:` maps;
    a CSV/TSV column that lands on a text field is read as the text its cells hold (`007` stays `007`)."""
    dataset = load_dataset(source, text_columns=[(columns or {}).get(field, field) for field in TEXT_FIELDS])
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    missing = [f"'{theirs}' (mapped to {ours})" for ours, theirs in (columns or {}).items() if theirs not in dataset.column_names]
    if missing:
        raise SourceError(f"{source.label} has no column {', '.join(missing)}; its columns: {', '.join(dataset.column_names)}")
    # a JSON round trip: dates, decimals and the like become what our JSONL rows can hold
    return list(json.loads(json.dumps(dataset.to_list(), default=str)))


def load_dataset(source: Source, text_columns: Iterable[str] = ()) -> Any:
    """A `datasets.Dataset` for the source: one split of a hub dataset, a data file, or a saved dataset.
    `text_columns` of a CSV/TSV file are read as text, not as the numbers pandas would infer."""
    import datasets

    datasets.disable_progress_bars()  # the step reports its own progress
    datasets.logging.set_verbosity_error()  # "using the latest cached version" is what offline means here
    cache_dir = str(datasets_cache())  # read now, not when datasets was imported: the environment may have changed
    if source.hf_id is not None:
        cached = cached_info(source)
        if cached is not None and source.split is not None:  # a split the cache lists as absent: said plainly, before loading
            pick_split((cached[1].get("splits") or {}).keys() or [source.split.split("[")[0]], source.split, source.spec)
        try:  # only the split asked for is downloaded (all of them when none is named: `train`, or the only one, is picked)
            loaded = datasets.load_dataset(source.hf_id, source.config, split=source.split, cache_dir=cache_dir)
        except (ConnectionError, FileNotFoundError, ValueError) as exc:
            where = "the hub is offline and the local cache does not hold it" if offline() else "it could not be loaded"
            raise SourceError(f"{source.spec}: {where} ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
        if isinstance(loaded, datasets.DatasetDict):
            return loaded[pick_split(loaded.keys(), None, source.spec)]
        return loaded
    path = source.path
    assert path is not None
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            return loaded[pick_split(loaded.keys(), None, str(path))]
        return loaded
    suffix = path.suffix.lower()
    if suffix not in BUILDERS:
        raise SourceError(f"{path}: unknown data file type '{suffix}' (parquet, csv, tsv, json, jsonl, arrow, or a save_to_disk folder)")
    extra: dict[str, Any] = {"delimiter": "\t"} if suffix == ".tsv" else {}
    if BUILDERS[suffix] == "csv":
        header = set(columns_of(source) or ())
        extra["converters"] = {name: str for name in dict.fromkeys(text_columns) if name in header}  # an empty cell stays None
    return datasets.load_dataset(BUILDERS[suffix], data_files=str(path), split="train", cache_dir=cache_dir, **extra)


def map_row(row: dict[str, Any], columns: dict[str, str], number: int) -> dict[str, Any]:
    """One source row as our row: mapped columns renamed to our fields, chat turns normalized, an `id` (the row
    number when the source has none)."""
    out = {k: v for k, v in row.items() if k not in set(columns.values()) - set(columns)}
    for ours, theirs in columns.items():
        if theirs not in row:
            raise ValueError(f"no column '{theirs}' (mapped to {ours}); the row has {', '.join(row)}")
        out[ours] = row[theirs]
    if out.get("messages") is not None:
        out["messages"] = chat(out["messages"])
    if isinstance(out.get("chosen"), list | str) and isinstance(out.get("rejected"), list | str):
        _preference_from_conversations(out)
    if isinstance(out.get("prompt"), list):  # a conversational prompt: the last user turn is the prompt
        turns = chat(out["prompt"])
        out["prompt"] = next((t["content"] for t in reversed(turns) if t["role"] == "user"), turns[-1]["content"] if turns else "")
    out["id"] = str(out["id"]) if out.get("id") is not None else str(number)
    return text_fields(out)


def as_text(value: Any) -> Any:
    """A number in a text field as text (`42`, `3.5`; a whole float without its `.0`); anything else as it is."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return str(value) if isinstance(value, int | float) else value


def text_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The row with numbers in its text fields (prompt, completion, chosen, rejected, id) turned into text: a
    numeric parquet/arrow column mapped onto a text field, or a JSONL row written with `"completion": 42`."""
    for field in TEXT_FIELDS:
        if field in row:
            row[field] = as_text(row[field])
    return row


def chat(value: Any) -> list[dict[str, Any]]:
    """Chat turns as `{role, content}` messages: OpenAI style as is, ShareGPT (`from`/`value`, human/gpt) converted,
    a JSON string (a CSV cell) parsed."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError("messages is text, not a list of turns") from None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ValueError("messages must be a list of turns ({role, content} or ShareGPT {from, value})")
    turns = []
    for turn in value:
        role = str(turn.get("role", turn.get("from", "")))
        content = as_text(turn.get("content", turn.get("value", "")))  # a number said in a turn is its text
        turns.append({**{k: v for k, v in turn.items() if k not in ("from", "value")}, "role": ROLES.get(role, role), "content": content})
    return turns


def _turns(value: Any) -> list[dict[str, Any]] | None:
    """A conversation (a list of turns, or its JSON text as in a CSV cell), else None: plain text stays text."""
    if isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if isinstance(value, list) and value and all(isinstance(t, dict) and ({"role", "from"} & set(t)) for t in value):
        return value
    return None


def _preference_from_conversations(row: dict[str, Any]) -> None:
    """Pairs given as whole conversations (chosen/rejected: turns ending in the assistant's reply) become our
    prompt + two replies; the prompt is the last user turn before the reply, when the row has none."""
    for side in ("chosen", "rejected"):
        conversation = _turns(row[side])
        if conversation is None:
            continue
        turns = chat(conversation)
        row[side] = str(turns[-1]["content"])
        if row.get("prompt") is None:
            users = [t["content"] for t in turns[:-1] if t["role"] == "user"]
            if users:
                row["prompt"] = str(users[-1])


# ------------------------------------------------------------------ for step kinds

COLUMNS_HELP = (
    "Our field -> the dataset's column, for a `file:` dataset input (parquet, CSV/TSV, JSON/JSONL, arrow, a save_to_disk folder): "
    "{prompt: question, completion: answer, id: task_id}."
)


def check_inputs(params: Any, files: dict[str, tuple[Path, str]]) -> list[tuple[str, str]]:
    """A step kind's `check_inputs`: each data file holds the columns its rows need, after the step's `columns:`."""
    columns = getattr(params, "columns", None) or {}
    problems = []
    for name, (path, artifact_type) in files.items():
        if not (is_dataset_path(path) or path.suffix.lower() in (".jsonl", ".json")):
            continue
        for field, text in column_problems(parse(path), columns, REQUIRED.get(artifact_type, ())):
            problems.append((f"with.columns.{field}" if field else f"inputs.{name}", text))
    return problems
