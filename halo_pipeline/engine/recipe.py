"""Pydantic models of a recipe, and a YAML reader that remembers where every key was written."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from halo_pipeline.engine.errors import Issue
from halo_pipeline.engine.groups import Runner, Tracking

FILE_PREFIX = "file:"
MAX_EXPANDED_NODES = 100_000  # a recipe is a few hundred nodes; YAML aliases can make a 300-byte file expand to gigabytes


class StepSpec(BaseModel):
    """One entry of `steps:` in a recipe."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    uses: str | None = Field(None, description="Step kind (a registered name or `pkg.module:function`); defaults to the step id.")
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="Input name -> `<step_id>.<output>` reference or `file:<path>` (relative to the recipe).",
    )
    needs: list[str] = Field(default_factory=list, description="Steps that must finish first, without passing data.")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with", description="The step kind's parameters.")
    retries: int = Field(0, ge=0, description="Retries on transient errors (OSError, timeouts, connection errors).")
    retry_delay_seconds: float = Field(2.0, ge=0, description="Seconds between retries.")
    cache: bool = Field(True, description="Reuse a cached result when its inputs and params are unchanged.")
    description: str | None = Field(None, description="Free text shown by `plan`.")


class Decontaminate(BaseModel):
    """`decontaminate:` — what happens when training rows overlap a held-out set the recipe evaluates on."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["stop", "drop", "warn", "off"] = Field(
        "stop",
        description="stop: the run stops before training; drop: train without the overlapping rows; warn: train on them, "
        "recorded; off: no check.",
    )
    n: int = Field(13, ge=1, le=100, description="Words in the n-grams compared (13: GPT-3's and lm-eval's choice).")

    @model_validator(mode="before")
    @classmethod
    def _mode_alone(cls, value: Any) -> Any:
        if isinstance(value, bool):  # YAML reads a bare `off` as false
            return {"mode": "stop" if value else "off"}
        return {"mode": value} if isinstance(value, str) else value  # `decontaminate: drop`


class RecipeModel(BaseModel):
    """The top level of a recipe after Hydra composition (group nodes and user variables pass through)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Run directory name.")
    seed: int = Field(0, description="Global seed, passed to steps that sample.")
    steps: dict[str, StepSpec] = Field(..., description="Steps keyed by id.")
    objective: str | None = Field(None, description="`<step>.<metric>` that sweeps optimize.")
    direction: Literal["minimize", "maximize"] = Field("maximize", description="Direction of `objective`.")
    tracking: Tracking = Field(default_factory=Tracking, description="Experiment tracker (the `tracking` group: tracking=mlflow).")
    runner: Runner = Field(default_factory=Runner, description="Task runner (the `runner` group: runner=dask).")
    decontaminate: Decontaminate = Field(
        default_factory=Decontaminate,
        description="Check what reaches each train step against the recipe's held-out sets (probe, eval): stop (default), "
        "drop, warn or off; `{mode: drop, n: 13}` sets the n-gram length too (docs/data-steps.md).",
    )


@dataclass
class SourceMap:
    """Where each key path of a YAML file was written (1-based line and column)."""

    file: str | None
    positions: dict[tuple[str, ...], tuple[int, int]] = field(default_factory=dict)
    # keys written in another file that the recipe pulls in through `defaults:` (`- quickstart`): path -> that file
    origins: dict[tuple[str, ...], str] = field(default_factory=dict)

    def locate(self, path: tuple[str, ...]) -> tuple[int | None, int | None]:
        # Fall back to the nearest written parent: a key added by an override has no line of its own.
        for n in range(len(path), 0, -1):
            if path[:n] in self.positions:
                return self.positions[path[:n]]
        return None, None

    def include(self, other: SourceMap) -> None:
        """Add the keys of a recipe this one includes; a key this file writes itself stays this file's."""
        for key, position in other.positions.items():
            if key not in self.positions:
                self.positions[key] = position
                self.origins[key] = other.origins.get(key, other.file or "")

    def _origin(self, path: tuple[str, ...]) -> str | None:
        for n in range(len(path), 0, -1):
            if path[:n] in self.positions:
                return self.origins.get(path[:n], self.file)
        return self.file

    def issue(self, path: tuple[str, ...] | str, message: str, hint: str | None = None) -> Issue:
        parts = tuple(path.split(".")) if isinstance(path, str) else path
        if parts[:1] == ("steps",) and len(parts) > 2 and parts[2] == "with_":
            parts = (*parts[:2], "with", *parts[3:])
        if (
            self.file is None
            or not self.positions
            or parts not in self.positions
            and not any(parts[:n] in self.positions for n in range(1, len(parts)))
        ):
            line, col, file = None, None, self.file
        else:
            line, col = self.locate(parts)
            file = self._origin(parts)
        return Issue(message=message, key=".".join(parts), file=file, line=line, col=col, hint=hint)


def read_yaml(path: Path) -> tuple[Any, SourceMap, list[Issue]]:
    """Parse a YAML file, returning its data, a source map and problems (duplicate keys, syntax)."""
    text = path.read_text(encoding="utf-8")
    return parse_yaml(text, str(path))


def parse_yaml(text: str, file: str | None) -> tuple[Any, SourceMap, list[Issue]]:
    smap = SourceMap(file=file)
    issues: list[Issue] = []
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)  # the node graph: aliases are shared, not yet expanded
        if node is not None and (size := expanded_size(node)) > MAX_EXPANDED_NODES:
            issues.append(
                Issue(
                    message=f"the YAML expands to more than {MAX_EXPANDED_NODES:,} values through its aliases ({size:,}); refused",
                    file=file,
                    line=1,
                    hint="a recipe does not need nested `*alias` references: write the values out, or use ${...} interpolation",
                )
            )
            return None, smap, issues
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        issues.append(
            Issue(
                message=f"unreadable YAML: {problem}",
                file=file,
                line=mark.line + 1 if mark else None,
                col=mark.column + 1 if mark else None,
                hint="check indentation and quoting near this line (a value with ': ' or '#' needs quotes)",
            )
        )
        return None, smap, issues
    if node is not None:
        _walk(node, (), smap, issues)
    return data, smap, issues


def expanded_size(root: yaml.Node) -> int:
    """How many values the node graph becomes once every alias is expanded (counted without expanding)."""
    sizes: dict[int, int] = {}
    order: list[yaml.Node] = []
    stack, seen = [root], set()
    while stack:  # children before parents, iteratively: a deep file must not exhaust the recursion limit
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(v for pair in node.value for v in pair)
    for node in reversed(order):
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [v for pair in node.value for v in pair]
        sizes[id(node)] = 1 + sum(sizes.get(id(c), 1) for c in children)
    return sizes[id(root)]


def _walk(node: yaml.Node, path: tuple[str, ...], smap: SourceMap, issues: list[Issue]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            here = (*path, key)
            line = key_node.start_mark.line + 1
            if key in seen:
                what = "step id" if path == ("steps",) else "key"
                issues.append(
                    Issue(
                        message=f"duplicate {what} '{key}' (first written on line {seen[key]})",
                        key=".".join(here),
                        file=smap.file,
                        line=line,
                        col=key_node.start_mark.column + 1,
                        hint="give each entry a unique name; YAML keeps only the last one",
                    )
                )
            seen[key] = line
            smap.positions.setdefault(here, (line, key_node.start_mark.column + 1))
            _walk(value_node, here, smap, issues)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            here = (*path, str(i))
            smap.positions.setdefault(here, (item.start_mark.line + 1, item.start_mark.column + 1))
            _walk(item, here, smap, issues)
