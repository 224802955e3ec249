"""The API that step kinds are written against: Params, artifacts, the run context and `@step`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_type_hints

from pydantic import BaseModel, ConfigDict, model_validator

SAME_AS = "same:"  # an output typed "same:dataset" has the type of the input named "dataset"
SCRATCH = ".scratch"  # a step's scratch area in its work dir: kept for a resume, removed once the result is committed


@dataclass(frozen=True)
class TypeByParam:
    """An output whose artifact type follows a param, e.g. `output: sft|preference`."""

    param: str
    types: dict[str, str]

    def __str__(self) -> str:
        return "|".join(dict.fromkeys(self.types.values()))


@dataclass(frozen=True)
class Renamed:
    """A setting's old spelling that still reads for one release: the key it is now, and its values' new names."""

    key: str
    values: dict[str, str] = field(default_factory=dict)


class Params(BaseModel):
    """Base of every step kind's parameters: unknown keys are errors; old spellings (`renamed`) read as the new
    ones, and validation warns with the new spelling (`old_spellings`)."""

    model_config = ConfigDict(extra="forbid")
    renamed: ClassVar[dict[str, Renamed]] = {}

    @model_validator(mode="before")
    @classmethod
    def _read_old_spellings(cls, data: Any) -> Any:
        return cls.old_spellings(data)[0] if cls.renamed and isinstance(data, dict) else data

    @classmethod
    def old_spellings(cls, data: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
        """`data` in today's spelling, and (key, message, fix) for each old spelling in it."""
        data, found = dict(data), []
        for old, now in cls.renamed.items():
            if old not in data:
                continue
            if now.key in data:
                raise ValueError(f"`{old}` is the old spelling of `{now.key}`: give only `{now.key}`")
            value = data.pop(old)
            data[now.key] = now.values.get(value, value) if isinstance(value, str) else value
            found.append((old, f"`{old}: {value}` is the old spelling of `{now.key}: {data[now.key]}` (it reads for one more release)",
                          f"write `{now.key}: {data[now.key]}`"))  # fmt: skip
        return data, found


@dataclass(frozen=True)
class Artifact:
    """A file or directory passed between steps by reference, with its type and metadata."""

    type: str
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None


@dataclass(frozen=True)
class StepKind:
    """A registered step kind: what it takes, what it makes, and the function that does it."""

    name: str
    params: type[Params]
    inputs: dict[str, tuple[str, ...]]
    outputs: dict[str, str | TypeByParam]
    fn: Callable[..., dict[str, Any]]
    version: str = "1"
    optional_inputs: frozenset[str] = frozenset()
    libraries: tuple[str, ...] = ()
    deterministic: bool | Callable[[Any], bool] = True
    check: Callable[[Any], list[Any]] | None = None  # problems: text, or (key under `with`, text)
    check_inputs: Callable[[Any, dict[str, tuple[Path, str]]], list[tuple[str, str]]] | None = None  # (key under the step, text)
    fingerprint: Callable[[Any], dict[str, Any]] | None = None
    accepts: Callable[[Any, str], tuple[str, ...]] | None = None  # input types that depend on params
    resumable: bool = False  # a rerun after a kill continues in the work dir the killed run left
    # held-out sets this step evaluates on, as plain dicts (`label`, and `ref` or a loader's `kind`); see data/decontaminate.py
    held_out: Callable[[Any], list[dict[str, Any]]] | None = None
    # a step that trains: checks its inputs against the recipe's held-out sets before it runs (cached or not)
    decontaminate: Callable[..., Any] | None = None
    doc: str = ""
    import_path: str = ""

    def output_type(self, name: str, input_types: dict[str, str], params: Any = None) -> str:
        declared = self.outputs[name]
        if isinstance(declared, TypeByParam):
            return declared.types[str(getattr(params, declared.param))]
        if declared.startswith(SAME_AS):
            return input_types.get(declared[len(SAME_AS) :], self.inputs[declared[len(SAME_AS) :]][0])
        return declared

    def accepted(self, name: str, params: Any = None) -> tuple[str, ...]:
        """Artifact types input `name` takes with these params (e.g. DPO takes preference datasets only)."""
        if self.accepts is not None and params is not None:
            return self.accepts(params, name)
        return self.inputs[name]

    def is_deterministic(self, params: Params) -> bool:
        return self.deterministic(params) if callable(self.deterministic) else bool(self.deterministic)


F = TypeVar("F", bound=Callable[..., Any])


def step(
    *,
    inputs: dict[str, str | tuple[str, ...]] | None = None,
    outputs: dict[str, str | TypeByParam],
    version: str = "1",
    optional_inputs: Iterable[str] = (),
    libraries: Iterable[str] = (),
    deterministic: bool | Callable[[Any], bool] = True,
    check: Callable[[Any], list[Any]] | None = None,
    check_inputs: Callable[[Any, dict[str, tuple[Path, str]]], list[tuple[str, str]]] | None = None,
    fingerprint: Callable[[Any], dict[str, Any]] | None = None,
    accepts: Callable[[Any, str], tuple[str, ...]] | None = None,
    resumable: bool = False,
    held_out: Callable[[Any], list[dict[str, Any]]] | None = None,
    decontaminate: Callable[..., Any] | None = None,
) -> Callable[[F], F]:
    """Declare a function `run(params, inputs, ctx) -> {output: path}` as a step kind.

    Args:
        inputs: input name -> accepted artifact type(s).
        outputs: output name -> artifact type, or `same:<input>` to mirror an input's type.
        version: bump when the outputs for the same inputs change; part of the cache key.
        optional_inputs: inputs a recipe may leave out.
        libraries: distributions whose installed versions enter the cache key.
        deterministic: whether the same key always gives the same bytes (`replay --check`).
        check: extra validation of params (run by `validate`), returning problems as text, or as
            `(key, text)` to report one at a key under `with` (e.g. `("verifier.timeout_s", ...)`).
        check_inputs: validation of the `file:` inputs against params (run by `validate`): gets
            `{input: (path, artifact type)}` and returns `(key under the step, text)` problems, e.g.
            `("with.columns.prompt", "no column 'question' in data.parquet")`.
        fingerprint: extra cache-key material derived from params (e.g. a model's digest).
        accepts: `(params, input) -> types` when what an input takes depends on params.
        resumable: the step continues from what a killed run left in its work dir (checkpoints,
            appended JSONL); other steps start from an empty work dir.
        held_out: `params -> [held-out set]`: the data this step evaluates on, which no train step of the
            recipe may train on (each a dict: `label`, and `ref` — a dataset reference — or `kind` with what
            its loader reads).
        decontaminate: for a step that trains: `(params, inputs, labels, held_out, settings, cache_root)
            -> (inputs, record) | None`, run before the step (cached or not) with the recipe's held-out sets
            and its `decontaminate:` settings; it may raise to stop the run, or replace inputs (rows dropped).
    """

    def wrap(fn: F) -> F:
        hints = get_type_hints(fn)
        params_type = hints.get("params") or next(iter(hints.values()))
        if not (isinstance(params_type, type) and issubclass(params_type, Params)):
            raise TypeError(f"{fn.__module__}.{fn.__name__}: first argument must be annotated with a Params model")
        kind = StepKind(
            name="",  # set by the registry: the module name for built-ins
            params=params_type,
            inputs={k: (v,) if isinstance(v, str) else tuple(v) for k, v in (inputs or {}).items()},
            outputs=dict(outputs),
            fn=fn,
            version=str(version),
            optional_inputs=frozenset(optional_inputs),
            libraries=tuple(libraries),
            deterministic=deterministic,
            check=check,
            check_inputs=check_inputs,
            fingerprint=fingerprint,
            accepts=accepts,
            resumable=resumable,
            held_out=held_out,
            decontaminate=decontaminate,
            doc=(getattr(sys.modules.get(fn.__module__), "__doc__", None) or fn.__doc__ or "").strip(),
            import_path=f"{fn.__module__}:{fn.__name__}",
        )
        fn.__halo_step__ = kind  # type: ignore[attr-defined]
        return fn

    return wrap


@dataclass
class RunContext:
    """What a running step may know about its run: where to write, its seed, a logger, metrics."""

    step_id: str
    kind: str
    out_dir: Path
    run_dir: Path
    seed: int
    log: logging.Logger
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)  # output name -> metadata
    summary_lines: list[str] = field(default_factory=list)
    # set by the engine: on_progress(done, total, **figures) feeds the terminal's progress column; figures such as
    # loss=, reward=, eta_s= are shown beside the bar
    on_progress: Callable[..., None] | None = None
    # where the run reports to an experiment tracker (set by the flow; empty when none): `name`, `report_to`,
    # `run_name` for this step, and the tracker's settings. Never part of the cache key.
    tracking: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        """Where to write an output file or directory named `name` (inside the step's work dir)."""
        return self.out_dir / name

    def scratch(self, name: str) -> Path:
        """A path for work files (checkpoints) that survive a kill for the resume, and go once the result is committed."""
        return self.out_dir / SCRATCH / name

    def summary(self, line: str) -> None:
        """Add a line to the step's markdown summary (shown in Prefect and the report)."""
        self.summary_lines.append(line)

    def progress(self, items: Iterable[Any], total: int | None = None, description: str = "") -> Iterator[Any]:
        """Iterate with progress logged every ~10% (the terminal shows step states separately)."""
        total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)  # type: ignore[arg-type]
        step_every = max(1, (total or 0) // 10)
        if total and self.on_progress:
            self.on_progress(0, total)
        for i, item in enumerate(items, 1):
            yield item
            if total and self.on_progress:
                self.on_progress(i, total)
            if total and (i % step_every == 0 or i == total):
                self.log.info("%s %d/%d (%.0f%%)", description or self.step_id, i, total, 100 * i / total)
