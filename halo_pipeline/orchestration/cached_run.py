"""A run with nothing to do: every selected step's verified result is already in the cache.

Such a run leaves exactly what the flow would leave — a run directory whose `steps/<id>` link into the
cache, the manifest, report.html, and a flow run of `pipeline` in the Prefect UI whose task runs are all
`Cached` — but without importing Prefect (seconds) or starting its engine: the Prefect record is
written with a handful of REST calls, alongside the local work. Anything that may need a step to run,
or Prefect's engine, takes the flow instead: `--no-cache`, `replay --check`, a tracker, a Dask/Ray
runner, Prefect Cloud, no API URL, any step that is not a verified cache hit, or
HALO_PIPELINE_CACHED_FAST_PATH=0.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from halo_pipeline.engine import manifest
from halo_pipeline.engine.errors import RecipeError
from halo_pipeline.engine.execute import StepResult, cached_result, execute, step_calls, write_state
from halo_pipeline.engine.graph import select
from halo_pipeline.engine.plan import Plan
from halo_pipeline.orchestration.prefect_api import PrefectAPI, PrefectAPIError
from halo_pipeline.orchestration.runs import code_execution, fresh_dir, objective_value, record, upstream_from_cache


def _eligible(plan: Plan, opts: Any) -> bool:
    if os.environ.get("HALO_PIPELINE_CACHED_FAST_PATH", "1") == "0":  # always through Prefect's engine (debugging, benchmarks)
        return False
    runner = (plan.composed.config.get("runner") or {}).get("name", "threads")
    return not opts.no_cache and not opts.check and plan.recipe.tracking.name == "none" and runner in ("threads", "processes")


def _keys_if_all_cached(plan: Plan, selected: set[str]) -> dict[str, str] | None:
    """Each selected step's cache key when all of them are verified hits (nothing written), else None."""
    calls = step_calls(plan, Path("/nonexistent"))
    try:
        known: dict[str, StepResult] = upstream_from_cache(plan, calls, selected)
    except RecipeError:
        return None  # the flow reports it
    keys = {}
    for sid, ps in plan.steps.items():
        if sid not in selected:
            continue
        if not ps.spec.cache:
            return None
        key, hit = cached_result(calls[sid], {d: known[d] for d in ps.deps if d in known})
        if hit is None:
            return None
        known[sid], keys[sid] = hit, key
    return keys


def run_if_cached(recipe: str, overrides: list[str], plan: Plan, opts: Any, tag_list: list[str]) -> dict[str, Any] | None:
    """Run `plan` without Prefect's engine when every selected step is a verified cache hit; None otherwise
    (the caller then runs the flow)."""
    api = PrefectAPI.from_env()
    if api is None or "prefect.cloud" in api.api_url or not _eligible(plan, opts):
        return None
    selected = select(plan.deps, opts.only, opts.from_, opts.until)
    keys = _keys_if_all_cached(plan, selected)
    if keys is None:
        return None
    try:
        flow_run = api.start_flow_run({"recipe": recipe, "overrides": overrides, "tags": tag_list}, [*tag_list, plan.recipe.name])
    except PrefectAPIError:
        return None  # the flow says what is wrong with the API
    steps = [
        {
            "id": sid,
            "name": f"{sid}:{plan.steps[sid].kind.name}",
            "upstream": plan.steps[sid].deps,
            "message": f"cache hit {keys[sid][:12]}",
        }
        for sid in plan.steps
        if sid in selected
    ]
    recorder = _Recorder(api, flow_run["id"], steps)
    recorder.start()  # the task runs go to the API while the run directory is written here
    run_dir = fresh_dir(plan.composed.run_dir.resolve())
    (run_dir / "steps").mkdir(parents=True, exist_ok=True)
    calls = step_calls(plan, run_dir)
    results = upstream_from_cache(plan, calls, selected)
    for sid in results:
        results[sid].state = "cached"
        write_state(calls[sid], "cached", seconds=0)
    prefect = {"flow_run_id": flow_run["id"], "flow_run_name": flow_run.get("name"), "ui_url": api.ui_url(flow_run["id"])}
    extra: dict[str, Any] = {
        "run_dir": str(run_dir), "selected": sorted(selected), "check": False, "prefect": prefect, "code_execution": code_execution(plan),
    }  # fmt: skip
    started = time.time()
    state = "completed"
    try:
        for sid, ps in plan.steps.items():
            if sid in selected:
                results[sid] = execute(calls[sid], {d: results[d] for d in ps.deps if d in results})
                if opts.progress is not None:
                    print(f"[{time.time() - started:6.1f} s] {sid}: {results[sid].state} (0.00 s)", flush=True)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the CLI raises Terminated, a KeyboardInterrupt)
        state = "interrupted"
        raise
    except BaseException:
        state = "failed"
        raise
    finally:
        ended = time.time()
        objective = objective_value(plan, results)
        extra.update(started=started, ended=ended, seconds=round(ended - started, 3), objective=objective)
        record(run_dir, manifest.build(plan, results, opts.command, state, extra))
        recorder.finish(state)
    return {
        "run_dir": str(run_dir),
        "prefect_ui": prefect["ui_url"],
        "state": state,
        "objective": objective,
        "steps": {sid: r.state for sid, r in results.items()},
    }


class _Recorder(threading.Thread):
    """Writes the task runs and their log lines to the API in the background; `finish` waits for them and
    sets the flow run's final state. A failure here never fails the run: it is said on stderr."""

    def __init__(self, api: PrefectAPI, flow_run_id: str, steps: list[dict[str, Any]]) -> None:
        super().__init__(daemon=True, name="halo-prefect-record")
        self.api, self.flow_run_id, self.steps = api, flow_run_id, steps
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            ids = self.api.record_task_runs(self.flow_run_id, self.steps)
            self.api.log(self.flow_run_id, [(ids[s["id"]], f"{s['name']}: {s['message']}") for s in self.steps])
        except PrefectAPIError as exc:
            self.error = exc

    def finish(self, state: str) -> None:
        self.join()
        try:
            final = {"completed": "COMPLETED", "interrupted": "CANCELLED"}.get(state, "FAILED")
            self.api.finish_flow_run(self.flow_run_id, final)
        except PrefectAPIError as exc:
            self.error = self.error or exc
        if self.error is not None:
            print(f"warning: the run completed, but its record in Prefect is incomplete: {self.error}", file=sys.stderr)
