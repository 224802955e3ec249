"""Turn a composed recipe into a checked plan, reporting every problem at once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from halo_pipeline.engine import registry
from halo_pipeline.engine.config import Composed, CompositionError, compose
from halo_pipeline.engine.errors import Issue, RecipeError, Warn, did_you_mean
from halo_pipeline.engine.graph import CycleError, Ref, topo_order
from halo_pipeline.engine.recipe import FILE_PREFIX, RecipeModel, SourceMap, StepSpec
from halo_pipeline.engine.step import Params, StepKind


@dataclass
class PlannedStep:
    id: str
    kind: StepKind
    params: Params
    inputs: dict[str, Ref | Path]
    input_types: dict[str, str]
    output_types: dict[str, str]
    deps: list[str]
    spec: StepSpec


@dataclass
class Plan:
    composed: Composed
    recipe: RecipeModel
    steps: dict[str, PlannedStep]  # in topological order
    warnings: list[Issue] = field(default_factory=list)  # valid, but worth knowing (e.g. a gate too small to decide)

    @property
    def deps(self) -> dict[str, list[str]]:
        return {s.id: s.deps for s in self.steps.values()}

    @property
    def held_out(self) -> list[dict[str, Any]]:
        """What the steps evaluate on (probe, eval tasks): the data no train step of the recipe may train on."""
        return held_out_sets(self.steps)


def pydantic_issues(exc: ValidationError, prefix: tuple[str, ...], smap: SourceMap, model: type[BaseModel]) -> list[Issue]:
    issues = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        path = (*prefix, *loc)
        if err["type"] == "extra_forbidden":
            fields = _field_names(model, loc[:-1])
            hint = did_you_mean(loc[-1], fields) or (f"valid keys: {', '.join(fields)}" if fields else None)
            issues.append(smap.issue(path, f"unknown {'param' if 'with' in prefix else 'key'} '{loc[-1]}'", hint))
        elif err["type"] == "missing":
            issues.append(smap.issue(path, "required but missing", f"add `{loc[-1]}:`"))
        else:
            got = err.get("input")
            got_text = f" (got {got!r})" if not isinstance(got, dict | list) else ""
            hint = getattr(err.get("ctx", {}).get("error"), "hint", None)  # a validator's own fix (e.g. a did-you-mean)
            message = getattr(err.get("ctx", {}).get("error"), "message", None) if hint else None
            issues.append(smap.issue(path, f"{message or err['msg']}{got_text}", hint or _field_help(model, loc)))
    return issues


def _field_names(model: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    target: Any = model
    for part in loc:
        field = getattr(target, "model_fields", {}).get(part)
        if field is None:
            return []
        target = field.annotation
    fields = getattr(target, "model_fields", {})
    return [f.alias or name for name, f in fields.items()]


def _field_help(model: type[BaseModel], loc: tuple[str, ...]) -> str | None:
    field = getattr(model, "model_fields", {}).get(loc[0]) if loc else None
    return f"{loc[0]}: {field.description}" if field is not None and field.description else None


_last: dict[tuple[Any, ...], Plan] = {}  # the latest plan, for the flow that runs it right after validation
_one_command = 0  # > 0 while one command validates and runs: its plan is reused however often it is asked for


@contextlib.contextmanager
def one_command() -> Iterator[None]:
    """One command's validation, cache check and flow share one composed plan. Outside such a block a plan is
    reused once at most: a long-lived process (a deployment serving scheduled runs) composes each run afresh,
    since a config group file may have changed since."""
    global _one_command
    _one_command += 1
    try:
        yield
    finally:
        _one_command -= 1
        if not _one_command:
            _last.clear()


def _memo_key(recipe: str | Path, overrides: list[str]) -> tuple[Any, ...]:
    text = str(recipe)
    path = Path(text) if "\n" not in text else None
    stamp = None
    if path is not None and path.is_file():
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    return (text, tuple(overrides), stamp, str(Path.cwd()))


def plan_recipe(recipe: str | Path, overrides: list[str]) -> Plan:
    """Compose and validate a recipe. When Hydra cannot compose it, every other problem is still found
    (composing around each bad override or option in turn) and reported with the composition errors.

    The plan is remembered once: the terminal validates before Prefect starts, then the flow composes from
    its own parameters (as a run started from the UI does) and gets the same plan without composing twice."""
    key = _memo_key(recipe, overrides)
    if key in _last:
        return _last[key] if _one_command else _last.pop(key)
    plan = _plan(recipe, overrides)
    _last.clear()
    _last[key] = plan
    return plan


def _plan(recipe: str | Path, overrides: list[str]) -> Plan:
    issues: list[Issue] = []
    attempt = list(overrides)
    for _ in range(8):  # each retry removes one composition problem
        try:
            composed = compose(recipe, attempt)
        except CompositionError as exc:
            issues += exc.issues
            if exc.retry is None:
                break
            attempt = exc.retry
            continue
        if not issues:
            return build_plan(composed)
        try:
            build_plan(composed)
        except RecipeError as more:
            issues += [i for i in more.issues if i not in issues]
        break
    raise RecipeError(issues)


@dataclass
class _Draft:
    """What the passes of `build_plan` fill in, in order; `issues` collects every problem they find."""

    composed: Composed
    raw_steps: dict[Any, Any]
    recipe: RecipeModel | None = None
    issues: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    specs: dict[str, StepSpec] = field(default_factory=dict)
    kinds: dict[str, StepKind] = field(default_factory=dict)
    params: dict[str, Params] = field(default_factory=dict)
    deps: dict[str, list[str]] = field(default_factory=dict)
    inputs: dict[str, dict[str, Ref | Path]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    in_types: dict[str, dict[str, str]] = field(default_factory=dict)
    out_types: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def smap(self) -> SourceMap:
        return self.composed.source


def build_plan(composed: Composed) -> Plan:
    """Validate everything before anything runs; raise RecipeError listing all problems.

    Six passes, in order, each adding to one draft: the recipe's own fields, each step's kind and params,
    the wiring (references, needs), the order, the artifact types along the edges, the recipe-wide keys
    that name steps."""
    draft = _recipe_fields(composed)
    _kinds_and_params(draft)
    _wiring(draft)
    _order(draft)
    _artifact_types(draft)
    _recipe_references(draft)
    return _finish(draft)


def _recipe_fields(composed: Composed) -> _Draft:
    """The recipe's top-level keys against `RecipeModel`; no `steps:` mapping is the one problem that stops here."""
    cfg = composed.config
    raw_steps = cfg.get("steps")
    draft = _Draft(composed, raw_steps if isinstance(raw_steps, dict) else {})
    try:
        draft.recipe = RecipeModel.model_validate({**cfg, "steps": {}} if isinstance(raw_steps, dict) else cfg)
    except ValidationError as exc:
        draft.issues += pydantic_issues(exc, (), draft.smap, RecipeModel)
    if not draft.raw_steps:
        if not any(i.key == "steps" for i in draft.issues):
            draft.issues.append(draft.smap.issue("steps", "a recipe needs a `steps:` mapping keyed by step id", "see docs/recipes.md"))
        raise RecipeError(draft.issues)
    return draft


def _kinds_and_params(d: _Draft) -> None:
    """Each step's spec, its kind from the registry (or a "did you mean"), its `with:` as the kind's `Params`,
    and the kind's own checks of those params (problems and warnings)."""
    smap, base_dir = d.smap, d.composed.base_dir
    registry.importable(base_dir, Path.cwd())  # `uses: my_pkg.steps.upper:run` beside the recipe or here
    for sid, raw in d.raw_steps.items():
        sid = str(sid)
        try:
            spec = StepSpec.model_validate(raw or {})
        except ValidationError as exc:
            d.issues += pydantic_issues(exc, ("steps", sid), smap, StepSpec)
            continue
        d.specs[sid] = spec
        uses = spec.uses or sid
        try:
            kind = registry.get(uses)
        except registry.UnknownStepKind as exc:
            where = ("steps", sid, "uses") if spec.uses else ("steps", sid)
            if exc.known:
                hint = did_you_mean(uses, exc.known) or f"known kinds: {', '.join(exc.known)}; or set `uses:` to one"
            elif "cannot import" in str(exc):
                hint = registry.search_path_hint()
            else:
                hint = "`uses: package.module:function` names a function decorated with @halo_pipeline.engine.step.step"
            d.issues.append(smap.issue(where, str(exc), hint))
            continue
        d.kinds[sid] = kind
        try:
            d.params[sid] = kind.params.model_validate(spec.with_, context={"base_dir": base_dir})  # files: beside the recipe
        except ValidationError as exc:
            d.issues += pydantic_issues(exc, ("steps", sid, "with"), smap, kind.params)
            continue
        if kind.params.renamed and isinstance(spec.with_, dict):
            for key, message, fix in kind.params.old_spellings(spec.with_)[1]:
                d.warnings.append(smap.issue(("steps", sid, "with", key), message, fix))
        if kind.check:  # a problem is text, or (key under `with`, text) to report it at that key
            for problem in kind.check(d.params[sid]):
                if isinstance(problem, Warn):
                    warn_at = ("steps", sid, "with", *[p for p in problem.key.split(".") if p])
                    d.warnings.append(smap.issue(warn_at, problem.message, problem.hint))
                    continue
                key, text = problem if isinstance(problem, tuple) else ("", problem)
                d.issues.append(smap.issue(("steps", sid, "with", *[p for p in key.split(".") if p]), text))


def _wiring(d: _Draft) -> None:
    """Each step's inputs parsed once (a `Ref` to a step's output, or a file), checked against the kinds'
    inputs and outputs, plus `needs:`: the edges of the DAG."""
    smap, raw_steps = d.smap, d.raw_steps
    for sid, spec in d.specs.items():
        d.deps[sid] = []
        d.inputs[sid] = {}
        step_kind = d.kinds.get(sid)
        for name, value in spec.inputs.items():
            at: tuple[str, ...] = ("steps", sid, "inputs", name)
            if step_kind and name not in step_kind.inputs:
                hint = did_you_mean(name, step_kind.inputs) or f"inputs of '{step_kind.name}': {', '.join(step_kind.inputs) or 'none'}"
                d.issues.append(smap.issue(at, f"'{step_kind.name}' has no input '{name}'", hint))
                continue
            ref = _parse_input(str(value), d.composed.base_dir)
            if isinstance(ref, Issue):
                d.issues.append(smap.issue(at, ref.message, ref.hint))
                continue
            if isinstance(ref, Path):
                if not ref.exists():
                    d.issues.append(smap.issue(at, f"file not found: {ref}", "paths after `file:` are relative to the recipe's folder"))
                d.inputs[sid][name] = ref
                continue
            if ref.step not in raw_steps:
                hint = did_you_mean(ref.step, raw_steps) or f"steps: {', '.join(map(str, raw_steps))}"
                d.issues.append(smap.issue(at, f"reference to missing step '{ref.step}'", hint))
                continue
            up = d.kinds.get(ref.step)
            if up and ref.output not in up.outputs:
                hint = did_you_mean(ref.output, up.outputs) or f"outputs of '{ref.step}': {', '.join(up.outputs)}"
                d.issues.append(smap.issue(at, f"step '{ref.step}' has no output '{ref.output}'", hint))
                continue
            d.inputs[sid][name] = ref
            if ref.step not in d.deps[sid]:
                d.deps[sid].append(ref.step)
        if step_kind:
            missing = [n for n in step_kind.inputs if n not in spec.inputs and n not in step_kind.optional_inputs]
            for name in missing:
                types = " or ".join(step_kind.inputs[name])
                d.issues.append(
                    smap.issue(("steps", sid, "inputs"), f"missing input '{name}' ({types})", f"add `inputs: {{{name}: <step>.<output>}}`")
                )
        for i, need in enumerate(spec.needs):
            if need not in raw_steps:
                d.issues.append(smap.issue(("steps", sid, "needs", str(i)), f"needs unknown step '{need}'", did_you_mean(need, raw_steps)))
            elif need not in d.deps[sid]:
                d.deps[sid].append(need)


def _order(d: _Draft) -> None:
    """The topological order of the steps, or the cycle reported at its first step."""
    try:
        d.order = topo_order(d.deps)
    except CycleError as exc:
        d.issues.append(d.smap.issue(("steps", exc.cycle[0]), f"the steps form a {exc}", "remove one of these references or needs"))


def _artifact_types(d: _Draft) -> None:
    """Artifact types along the edges, in order: what each input receives against what its kind accepts with
    these params, the kind's checks of its input files, and the types of its outputs for the steps after it."""
    for sid in d.order:
        if sid not in d.kinds:
            continue
        kind = d.kinds[sid]
        d.in_types[sid] = {}
        for name, ref in d.inputs[sid].items():
            accepted = kind.accepted(name, d.params.get(sid))
            if isinstance(ref, Path):
                d.in_types[sid][name] = accepted[0]
                continue
            got = d.out_types.get(ref.step, {}).get(ref.output)
            if got is None:
                continue
            d.in_types[sid][name] = got
            if got not in accepted and "file" not in accepted:
                d.issues.append(
                    d.smap.issue(
                        ("steps", sid, "inputs", name),
                        f"'{ref}' is a {got}, but '{kind.name}' input '{name}' takes {' or '.join(accepted)}"
                        + (" with these params" if kind.accepts else ""),
                        "change the params that decide it (e.g. the algorithm), or wire an output of that type"
                        if kind.accepts
                        else "wire an output of the right type, or choose a step kind that takes this one",
                    )
                )
        files = {n: (r, d.in_types[sid][n]) for n, r in d.inputs[sid].items() if isinstance(r, Path) and r.exists()}
        if kind.check_inputs and files and sid in d.params:  # e.g. a data file's columns against the params' `columns:`
            for key, text in kind.check_inputs(d.params[sid], files):
                d.issues.append(d.smap.issue(("steps", sid, *[p for p in key.split(".") if p]), text))
        try:
            d.out_types[sid] = {o: kind.output_type(o, d.in_types[sid], d.params.get(sid)) for o in kind.outputs}
        except (AttributeError, KeyError):
            continue  # its params are invalid (reported above), so its output types are unknown


def _recipe_references(d: _Draft) -> None:
    """Recipe-wide keys checked against the steps and the machine: the tracker is usable, the objective is a step's metric."""
    recipe = d.recipe
    if recipe is None:
        return
    if why := recipe.tracking.unavailable():
        d.issues.append(d.smap.issue("tracking", why))
    if recipe.objective:
        step_id = recipe.objective.split(".", 1)[0]
        if step_id not in d.raw_steps or "." not in recipe.objective:
            d.issues.append(
                d.smap.issue(
                    "objective", f"objective '{recipe.objective}' is not `<step>.<metric>` of a step", did_you_mean(step_id, d.raw_steps)
                )
            )


def _finish(d: _Draft) -> Plan:
    """The plan, or every problem the passes found (with the overrides that caused them blamed)."""
    if d.issues or d.recipe is None:
        raise RecipeError(_blame_overrides(d.issues, d.composed.overrides))
    steps = {
        sid: PlannedStep(
            id=sid,
            kind=d.kinds[sid],
            params=d.params[sid],
            inputs=d.inputs[sid],
            input_types=d.in_types[sid],
            output_types=d.out_types[sid],
            deps=d.deps[sid],
            spec=d.specs[sid],
        )
        for sid in d.order
    }
    return Plan(composed=d.composed, recipe=d.recipe, steps=steps, warnings=d.warnings)


def _blame_overrides(issues: list[Issue], overrides: list[str]) -> list[Issue]:
    """A value set on the command line is reported there, not at the recipe line it replaced."""
    set_keys = {o.split("=", 1)[0].lstrip("+~"): o for o in overrides if "=" in o}
    out = []
    for issue in issues:
        hit = next((o for k, o in set_keys.items() if issue.key == k or issue.key.startswith(k + ".") or _within_group(k, issue.key)), None)
        if hit:
            issue = Issue(issue.message + f" (from override `{hit}`)", key=issue.key, hint=issue.hint)
        out.append(issue)
    return out


def _within_group(override_key: str, issue_key: str) -> bool:
    """An issue about a whole group node (`runner`) that an override of one of its keys (`runner.resources=`) set."""
    return "." not in issue_key and issue_key != "steps" and override_key.startswith(issue_key + ".")


def _parse_input(value: str, base_dir: Path) -> Ref | Path | Issue:
    if value.startswith(FILE_PREFIX):
        p = Path(value[len(FILE_PREFIX) :]).expanduser()
        return p if p.is_absolute() else (base_dir / p).resolve()
    step, dot, output = value.partition(".")
    if not dot or not step or not output:
        return Issue(f"'{value}' is not a reference", hint="write `<step_id>.<output>` or `file:<path>`")
    return Ref(step, output)


def held_out_sets(steps: dict[str, PlannedStep]) -> list[dict[str, Any]]:
    """The held-out sets the steps declare, each once, labelled with the first step that names it."""
    from halo_pipeline.engine.cache import canonical_json

    found: dict[str, dict[str, Any]] = {}
    for sid, ps in steps.items():
        for spec in ps.kind.held_out(ps.params) if ps.kind.held_out else []:
            same = canonical_json({k: v for k, v in spec.items() if k != "label"})
            found.setdefault(same, {**spec, "label": f"{sid}: {spec['label']}", "step": sid})
    return list(found.values())
