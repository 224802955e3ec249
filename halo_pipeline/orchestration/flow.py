"""One Prefect flow per run, one task per step: the path every run takes, from the terminal, a sweep job,
a schedule or the Prefect UI.

`run` (the terminal, sweeps) calls the `pipeline` flow with the run's options in a context variable;
the flow composes the recipe from its own parameters (`recipe`, `overrides`) — a run started from the UI
takes the same road — and `_run_steps` submits each selected step as a `run_step` task, which calls
the engine's `execute` (cache lookup, lock, run, commit). The manifest and report.html are written
when the run starts and whenever it ends: completed, failed or interrupted.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from typing import Any

from prefect import flow, tags, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from prefect.logging.handlers import APILogHandler
from prefect.states import Completed

from halo_pipeline.engine import manifest
from halo_pipeline.engine.execute import StepCall, StepError, StepResult, execute, step_calls, write_state
from halo_pipeline.engine.graph import select
from halo_pipeline.engine.plan import Plan, plan_recipe
from halo_pipeline.orchestration import storage, tracking
from halo_pipeline.orchestration.runners import make_task_runner
from halo_pipeline.orchestration.runs import RunOptions, code_execution, fresh_dir, objective_value, record, upstream_from_cache

_options: contextvars.ContextVar[RunOptions | None] = contextvars.ContextVar("halo_run_options", default=None)


def current_options() -> RunOptions:
    # A function, not the ContextVar itself, is what the flow's code refers to: workers that
    # pickle the flow by value (dask) can pickle a function reference but not a ContextVar.
    return _options.get() or RunOptions()


def set_options(opts: RunOptions) -> contextvars.Token[RunOptions | None]:
    return _options.set(opts)


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what a retry can fix (network trouble, timeouts): never a full disk or a missing file."""
    try:
        state.result()
    except StepError as exc:
        return exc.transient
    except Exception:
        return False
    return False


def _step(call: StepCall, upstream: dict[str, StepResult]) -> Any:
    """Run one step; a verified cache hit returns Prefect's `Cached` state without running it."""
    step_logger = logging.getLogger(f"halo_pipeline.steps.{call.id}")
    step_logger.propagate = False  # the terminal shows states; the log goes to the file and to Prefect
    api_handler = APILogHandler()
    step_logger.addHandler(api_handler)
    try:
        result = execute(call, upstream)
    finally:
        step_logger.removeHandler(api_handler)
    if result.state == "cached":  # the run that made it published its artifact already
        return Completed(name="Cached", message=f"cache hit {result.key[:12] if result.key else ''}", data=result)
    _publish(call, result)
    return result


# The task wraps a module-level function of another name, so that workers (processes, dask)
# unpickle it by reference instead of by value.
run_step = task(cache_policy=NO_CACHE, persist_result=False)(_step)


def _publish(call: StepCall, result: StepResult) -> None:
    lines = [f"### {call.id} ({result.kind}) — {result.state}", ""]
    lines += result.summary
    if result.metrics:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(result.metrics.items()) if not isinstance(v, dict | list)]
    if result.outputs:
        lines += ["", "| output | type | sha256 |", "|---|---|---|"]
        lines += [f"| {n} | {o.type} | `{o.sha256[:12]}` |" for n, o in result.outputs.items()]
    key = "".join(c if c.isalnum() else "-" for c in f"{call.id}-{result.kind}".lower()).strip("-")
    with contextlib.suppress(Exception):  # an artifact is a nicety; never fail a step for it
        create_markdown_artifact(key=key, markdown="\n".join(lines), description=f"{call.id}: {result.state}")


@flow(name="halo-pipeline", persist_result=False, validate_parameters=False)
def pipeline(recipe: str, overrides: list[str] | None = None, tags: list[str] | None = None) -> dict[str, Any]:  # noqa: A002
    """Compose the recipe with its overrides, validate it, and run its steps as Prefect tasks."""
    from halo_pipeline.orchestration.environment import apply_defaults

    apply_defaults()  # a scheduled run gets the environment the terminal sets
    plan = plan_recipe(recipe, list(overrides or []))  # what the terminal just validated comes from plan_recipe's memo
    return _run_steps(plan, current_options(), list(tags or []))


def _run_steps(plan: Plan, opts: RunOptions, tag_list: list[str]) -> dict[str, Any]:
    run_dir = fresh_dir(plan.composed.run_dir.resolve())
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "steps").mkdir(exist_ok=True)
    storage.check(plan.composed.config.get("runner", {}), run_dir)  # workers of an existing cluster must see the cache and run dir
    selected = select(plan.deps, opts.only, opts.from_, opts.until)
    calls = step_calls(plan, run_dir, no_cache=opts.no_cache, check=opts.check)
    tracking.start(plan, run_dir, calls)  # the tracker's pipeline run; each step learns where to report
    results: dict[str, StepResult] = upstream_from_cache(plan, calls, selected)
    for sid, res in results.items():
        res.state = "cached"
        write_state(calls[sid], "cached", seconds=0)
    prefect_run = _flow_run_info()
    extra = {
        "run_dir": str(run_dir), "selected": sorted(selected), "check": opts.check, "prefect": prefect_run,
        "code_execution": code_execution(plan),
    }  # fmt: skip
    manifest.write(run_dir, manifest.build(plan, {}, opts.command, "running", extra))
    started = time.time()
    runner = make_task_runner(plan.composed.config.get("runner", {}))
    futures: dict[str, Any] = {}
    with runner, tags(*tag_list, plan.recipe.name):
        for sid, ps in plan.steps.items():
            if sid not in selected:
                continue
            call = calls[sid]
            up = {d: futures.get(d, results.get(d)) for d in ps.deps if d in futures or d in results}
            t = run_step.with_options(
                name=f"{sid}:{ps.kind.name}",
                task_run_name=f"{sid}:{ps.kind.name}",
                retries=ps.spec.retries,
                retry_delay_seconds=ps.spec.retry_delay_seconds,
                retry_condition_fn=_retry_transient,
            )
            futures[sid] = runner.submit(
                t, parameters={"call": call, "upstream": up}, wait_for=[futures[d] for d in ps.deps if d in futures]
            )
        try:
            if opts.progress:
                opts.progress(run_dir, plan, futures, selected)
            for f in futures.values():
                f.wait()
        except (KeyboardInterrupt, TerminationSignal):  # Ctrl-C, or SIGTERM (Prefect raises its own inside a flow)
            results.update(finished_results(futures))  # finished steps stay in the cache and are recorded as such
            for sid in futures:
                if sid not in results:
                    results[sid] = StepResult(id=sid, kind=plan.steps[sid].kind.name, state="interrupted", error="interrupted")
            record(run_dir, manifest.build(plan, results, opts.command, "interrupted", extra))
            _abandon(runner)
            raise
    results.update(finished_results(futures))
    failed = False
    for sid in futures:  # topological order: an upstream failure is known before its dependents
        if sid in results:
            continue
        failed = True
        broken = next((d for d in plan.steps[sid].deps if d in futures and results[d].state in ("failed", "skipped")), None)
        if broken is not None:
            reason = f"skipped: upstream step {broken} {'failed' if results[broken].state == 'failed' else 'was skipped'}"
            results[sid] = StepResult(id=sid, kind=plan.steps[sid].kind.name, state="skipped", error=reason)
            write_state(calls[sid], "skipped", error=reason)
            continue
        checked = None  # a train step stopped by decontamination: what it found, for the manifest and report
        try:
            futures[sid].state.result()
            err = futures[sid].state.message
        except Exception as exc:
            err, checked = str(exc), getattr(exc, "decontamination", None)
        results[sid] = StepResult(id=sid, kind=plan.steps[sid].kind.name, state="failed", error=err, decontamination=checked)
        write_state(calls[sid], "failed", error=err)
    ended = time.time()
    objective = objective_value(plan, results)
    extra.update(started=started, ended=ended, seconds=round(ended - started, 3), objective=objective)
    record(run_dir, manifest.build(plan, results, opts.command, "failed" if failed else "completed", extra))
    return {
        "run_dir": str(run_dir),
        "prefect_ui": prefect_run.get("ui_url"),
        "state": "failed" if failed else "completed",
        "objective": objective,
        "steps": {sid: r.state for sid, r in results.items()},
    }


def _abandon(runner: Any) -> None:
    """Stop the task runner without waiting for running steps: an interrupted run ends now, and the
    steps' sandboxes and child processes die with the process (the manifest already says where it stopped)."""
    executor = getattr(runner, "_executor", None)  # Prefect's thread and process runners would otherwise join their workers
    if executor is None:
        return
    for process in getattr(executor, "_processes", {}).values():
        process.terminate()
    executor.shutdown(wait=False, cancel_futures=True)
    runner._executor = None


def finished_results(futures: dict[str, Any]) -> dict[str, StepResult]:
    """The results of the steps whose tasks completed (ran or cached), without waiting for the others."""
    done: dict[str, StepResult] = {}
    for sid, fut in futures.items():
        state = fut.state
        if state.is_completed():
            done[sid] = state.result()
            if state.name == "Cached":
                done[sid].state = "cached"
    return done


def _flow_run_info() -> dict[str, Any]:
    """Where this run is in Prefect, so a manifest leads to its flow run and back."""
    from prefect.runtime import flow_run

    url = flow_run.get_flow_run_ui_url()  # "None/flow-runs/…" when the server has no UI address (Prefect's temporary one)
    return {
        "flow_run_id": flow_run.get_id(),
        "flow_run_name": flow_run.get_name(),
        "ui_url": None if not url or url.startswith("None") else url,
    }


def run(recipe: str, overrides: list[str], opts: RunOptions, tag_list: list[str] | None = None) -> dict[str, Any]:
    """Run a recipe as a Prefect flow; the flow's own parameters are only recipe, overrides and tags."""
    token = set_options(opts)
    try:
        return pipeline(recipe=str(recipe), overrides=overrides, tags=tag_list or [])
    finally:
        _options.reset(token)
