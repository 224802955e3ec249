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


def build_plan(composed: Composed) -> Plan:
    """Validate everything before anything runs; raise RecipeError listing all problems."""
    smap = composed.source
    cfg = composed.config
    issues: list[Issue] = []
    warnings: list[Issue] = []
    raw_steps = cfg.get("steps")
    try:
        recipe = RecipeModel.model_validate({**cfg, "steps": {}} if isinstance(raw_steps, dict) else cfg)
    except ValidationError as exc:
        issues += pydantic_issues(exc, (), smap, RecipeModel)
        recipe = None  # type: ignore[assignment]
    if not isinstance(raw_steps, dict) or not raw_steps:
        if not any(i.key == "steps" for i in issues):
            issues.append(smap.issue("steps", "a recipe needs a `steps:` mapping keyed by step id", "see docs/recipes.md"))
        raise RecipeError(issues)

    specs: dict[str, StepSpec] = {}
    kinds: dict[str, StepKind] = {}
    params: dict[str, Params] = {}
    registry.importable(composed.base_dir, Path.cwd())  # `uses: my_pkg.steps.upper:run` beside the recipe or here
    for sid, raw in raw_steps.items():
        sid = str(sid)
        try:
            spec = StepSpec.model_validate(raw or {})
        except ValidationError as exc:
            issues += pydantic_issues(exc, ("steps", sid), smap, StepSpec)
            continue
        specs[sid] = spec
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
            issues.append(smap.issue(where, str(exc), hint))
            continue
        kinds[sid] = kind
        try:
            params[sid] = kind.params.model_validate(spec.with_, context={"base_dir": composed.base_dir})  # files: beside the recipe
        except ValidationError as exc:
            issues += pydantic_issues(exc, ("steps", sid, "with"), smap, kind.params)
            continue
        if kind.check:  # a problem is text, or (key under `with`, text) to report it at that key
            for problem in kind.check(params[sid]):
                if isinstance(problem, Warn):
                    warn_at = ("steps", sid, "with", *[p for p in problem.key.split(".") if p])
                    warnings.append(smap.issue(warn_at, problem.message, problem.hint))
                    continue
                key, text = problem if isinstance(problem, tuple) else ("", problem)
                issues.append(smap.issue(("steps", sid, "with", *[p for p in key.split(".") if p]), text))

    deps: dict[str, list[str]] = {}
    inputs: dict[str, dict[str, Ref | Path]] = {}
    for sid, spec in specs.items():
        deps[sid] = []
        inputs[sid] = {}
        step_kind = kinds.get(sid)
        for name, value in spec.inputs.items():
            at: tuple[str, ...] = ("steps", sid, "inputs", name)
            if step_kind and name not in step_kind.inputs:
                hint = did_you_mean(name, step_kind.inputs) or f"inputs of '{step_kind.name}': {', '.join(step_kind.inputs) or 'none'}"
                issues.append(smap.issue(at, f"'{step_kind.name}' has no input '{name}'", hint))
                continue
            ref = _parse_input(str(value), composed.base_dir)
            if isinstance(ref, Issue):
                issues.append(smap.issue(at, ref.message, ref.hint))
                continue
            if isinstance(ref, Path):
                if not ref.exists():
                    issues.append(smap.issue(at, f"file not found: {ref}", "paths after `file:` are relative to the recipe's folder"))
                inputs[sid][name] = ref
                continue
            if ref.step not in raw_steps:
                hint = did_you_mean(ref.step, raw_steps) or f"steps: {', '.join(map(str, raw_steps))}"
                issues.append(smap.issue(at, f"reference to missing step '{ref.step}'", hint))
                continue
            up = kinds.get(ref.step)
            if up and ref.output not in up.outputs:
                hint = did_you_mean(ref.output, up.outputs) or f"outputs of '{ref.step}': {', '.join(up.outputs)}"
                issues.append(smap.issue(at, f"step '{ref.step}' has no output '{ref.output}'", hint))
                continue
            inputs[sid][name] = ref
            if ref.step not in deps[sid]:
                deps[sid].append(ref.step)
        if step_kind:
            missing = [n for n in step_kind.inputs if n not in spec.inputs and n not in step_kind.optional_inputs]
            for name in missing:
                types = " or ".join(step_kind.inputs[name])
                issues.append(
                    smap.issue(("steps", sid, "inputs"), f"missing input '{name}' ({types})", f"add `inputs: {{{name}: <step>.<output>}}`")
                )
        for i, need in enumerate(spec.needs):
            if need not in raw_steps:
                issues.append(smap.issue(("steps", sid, "needs", str(i)), f"needs unknown step '{need}'", did_you_mean(need, raw_steps)))
            elif need not in deps[sid]:
                deps[sid].append(need)

    order: list[str] = []
    try:
        order = topo_order(deps)
    except CycleError as exc:
        issues.append(smap.issue(("steps", exc.cycle[0]), f"the steps form a {exc}", "remove one of these references or needs"))

    out_types: dict[str, dict[str, str]] = {}
    in_types: dict[str, dict[str, str]] = {}
    for sid in order:
        if sid not in kinds:
            continue
        kind = kinds[sid]
        in_types[sid] = {}
        for name, ref in inputs[sid].items():
            accepted = kind.accepted(name, params.get(sid))
            if isinstance(ref, Path):
                in_types[sid][name] = accepted[0]
                continue
            got = out_types.get(ref.step, {}).get(ref.output)
            if got is None:
                continue
            in_types[sid][name] = got
            if got not in accepted and "file" not in accepted:
                issues.append(
                    smap.issue(
                        ("steps", sid, "inputs", name),
                        f"'{ref}' is a {got}, but '{kind.name}' input '{name}' takes {' or '.join(accepted)}"
                        + (" with these params" if kind.accepts else ""),
                        "change the params that decide it (e.g. the algorithm), or wire an output of that type"
                        if kind.accepts
                        else "wire an output of the right type, or choose a step kind that takes this one",
                    )
                )
        files = {n: (r, in_types[sid][n]) for n, r in inputs[sid].items() if isinstance(r, Path) and r.exists()}
        if kind.check_inputs and files and sid in params:  # e.g. a data file's columns against the params' `columns:`
            for key, text in kind.check_inputs(params[sid], files):
                issues.append(smap.issue(("steps", sid, *[p for p in key.split(".") if p]), text))
        try:
            out_types[sid] = {o: kind.output_type(o, in_types[sid], params.get(sid)) for o in kind.outputs}
        except (AttributeError, KeyError):
            continue  # its params are invalid (reported above), so its output types are unknown

    if recipe is not None and (why := recipe.tracking.unavailable()):
        issues.append(smap.issue("tracking", why))
    if recipe is not None and recipe.objective:
        step_id = recipe.objective.split(".", 1)[0]
        if step_id not in raw_steps or "." not in recipe.objective:
            issues.append(
                smap.issue(
                    "objective", f"objective '{recipe.objective}' is not `<step>.<metric>` of a step", did_you_mean(step_id, raw_steps)
                )
            )

    if issues or recipe is None:
        raise RecipeError(_blame_overrides(issues, composed.overrides))
    steps = {
        sid: PlannedStep(
            id=sid,
            kind=kinds[sid],
            params=params[sid],
            inputs=inputs[sid],
            input_types=in_types[sid],
            output_types=out_types[sid],
            deps=deps[sid],
            spec=specs[sid],
        )
        for sid in order
    }
    return Plan(composed=composed, recipe=recipe, steps=steps, warnings=warnings)


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
