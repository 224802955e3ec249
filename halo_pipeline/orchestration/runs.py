"""What a run leaves behind, whoever runs its steps: a fresh run directory, the results of unselected
steps from the cache, the manifest, report.html and the tracker's record, the objective. Nothing here
imports Prefect: the flow (`flow.py`) and a run with nothing to do (`cached_run.py`) both use it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from halo_pipeline.engine import manifest
from halo_pipeline.engine.errors import Issue, RecipeError, did_you_mean
from halo_pipeline.engine.execute import StepCall, StepResult, cached_result
from halo_pipeline.engine.plan import Plan
from halo_pipeline.orchestration import tracking


@dataclass
class RunOptions:
    """Choices of one invocation that are not part of the recipe's config (and so not flow parameters)."""

    only: list[str] = field(default_factory=list)
    from_: str | None = None
    until: str | None = None
    no_cache: bool = False
    check: bool = False  # replay --check: re-execute deterministic steps outside the cache
    command: list[str] = field(default_factory=list)
    progress: Any = None  # a callable(run_dir, plan, futures, selected) -> None that shows progress


def upstream_from_cache(plan: Plan, calls: dict[str, StepCall], selected: set[str]) -> dict[str, StepResult]:
    """Results of unselected steps that selected ones read, taken from the cache; an error if absent."""

    def data_deps(sid: str) -> set[str]:
        return {r.step for r in plan.steps[sid].inputs.values() if not isinstance(r, Path)}

    needed: set[str] = set()
    stack = [d for sid in selected for d in data_deps(sid) if d not in selected]
    while stack:  # unselected steps read by selected ones, and what those read in turn
        sid = stack.pop()
        if sid not in needed:
            needed.add(sid)
            stack.extend(data_deps(sid))
    have: dict[str, StepResult] = {}
    for sid in plan.steps:  # topological order, so a step's own upstream is known first
        if sid not in needed:
            continue
        _, hit = cached_result(_as_cached_call(calls[sid]), have)
        if hit is None:
            raise RecipeError(
                [
                    Issue(
                        f"step '{sid}' is not selected and has no cached result",
                        key=f"steps.{sid}",
                        hint=f"run it first, or add it to --only ({sid})",
                    )
                ]
            )
        have[sid] = hit
    return have


def _as_cached_call(call: StepCall) -> StepCall:
    from dataclasses import replace

    return replace(call, cached=True)


def record(run_dir: Path, built: dict[str, Any]) -> None:
    """The manifest, then the report a person reads (written from it)."""
    from halo_pipeline.views.report import write_report

    manifest.write(run_dir, built)
    write_report(run_dir, built)
    tracking.finish(run_dir, built)  # every step's params, metrics and outputs into the tracker (tracking=...)


def code_execution(plan: Plan) -> dict[str, Any]:
    """Which steps run model-written code (a verifier with allow_code_execution) and how it is isolated:
    the weakest isolation any of them asked for (`sandbox: rlimits` carries its warning here)."""
    from halo_pipeline.verifiers import code_execution_modes

    modes: dict[str, set[str]] = {}
    for sid, ps in plan.steps.items():
        for key, value in ps.params.model_dump(mode="json").items():
            if "verifier" in key and (found := code_execution_modes(value)):
                modes.setdefault(sid, set()).update(found)
    if not modes:
        return {"enabled": False}
    import halo_pipeline.sandbox as sandbox

    weakest = "rlimits" if any("rlimits" in m for m in modes.values()) else None
    return {"enabled": True, "steps": sorted(modes), **sandbox.describe(weakest)}


RUN_CLAIM = ".run-claim"  # created exclusively by the run that takes the directory


def fresh_dir(run_dir: Path) -> Path:
    """Never write over another run: runs started in the same second get `-1`, `-2`... suffixes.

    The directory is claimed by creating a file in it with O_EXCL, so that concurrent runs (two
    terminals, overlapping schedules) cannot both take it; a directory holding an older run's
    manifest counts as taken too. A sweep job's directory, made by the launcher, is claimed the same way.
    """
    candidate, n = run_dir, 0
    while True:
        candidate.mkdir(parents=True, exist_ok=True)
        if not (candidate / manifest.MANIFEST).exists():
            try:
                os.close(os.open(candidate / RUN_CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                return candidate
            except FileExistsError:
                pass
        n += 1
        candidate = run_dir.with_name(f"{run_dir.name}-{n}")


def objective_value(plan: Plan, results: dict[str, StepResult]) -> float | None:
    if not plan.recipe.objective:
        return None
    step, _, metric = plan.recipe.objective.partition(".")
    res = results.get(step)
    value: Any = res.metrics if res else None
    for part in metric.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) else None


def check_selection(plan: Any, only: list[str], from_: str | None, until: str | None) -> None:
    """`--only/--from/--until` name steps of the recipe (checked before anything runs)."""
    unknown = [s for s in [*only, from_, until] if s and s not in plan.steps]
    if unknown:
        raise RecipeError(
            [Issue(f"no step '{s}' in the recipe", hint=did_you_mean(s, plan.steps) or f"steps: {', '.join(plan.steps)}") for s in unknown]
        )
