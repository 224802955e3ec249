"""Experiment tracking of a pipeline run (the recipe's `tracking` group): what ran, with which params, what
it measured and where its outputs are, in the tracker practitioners already use.

- mlflow: one run per pipeline run (its group choices, overrides and seed as params; its time, state and
  objective as metrics; replay.json, config.yaml and report.html as artifacts), a nested run per step
  (`with.*` params, metrics, state, cache key and `output.*` tags linking each output's path and sha256).
- tensorboard: event files under `<dir>/<recipe>/<run>/`: `pipeline/` holds every step's metrics as
  scalars and its params and outputs as text; a train step's curves sit beside it in `<step>/`.
- wandb, trackio: one run per pipeline run (config: groups and each step's params; summary: each step's
  metrics and state; a table of the steps) in a group named after the pipeline run, which the train
  steps' own runs join.

`start` runs as the flow starts: it opens the pipeline's run and tells each step where to report
(`StepCall.tracking`, which the step sees as `RunContext.tracking`), so a train step's TRL callback logs
its curves live into a run of its own (nested under the pipeline's for MLflow). `finish` runs whenever the
manifest is recorded at the end (completed, failed or interrupted) and logs every step from it; a step's
`metrics.jsonl` history is logged too when nothing logged it live (a cached train step, RAFT, mlx).
Tracking never fails a run: a tracker that cannot be reached is a warning in the terminal.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

from halo_pipeline.engine.cache import atomic_write_json
from halo_pipeline.engine.execute import StepCall
from halo_pipeline.engine.plan import Plan

STATE = "tracking.json"  # in the run directory: the tracker and its run ids, between `start` and `finish`
DEFAULT_MLFLOW_URI = "sqlite:///outputs/mlflow.db"
ARTIFACTS = ("replay.json", "config.yaml", "report.html")
MLFLOW_STATUS = {"ran": "FINISHED", "cached": "FINISHED", "failed": "FAILED", "skipped": "KILLED", "interrupted": "KILLED"}
RUN_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


def start(plan: Plan, run_dir: Path, calls: dict[str, StepCall]) -> None:
    """Open the pipeline's run in the recipe's tracker and give every step its reporting settings."""
    node = plan.recipe.tracking
    if node.name == "none":
        return
    run_name = f"{plan.recipe.name}/{run_dir.name}"
    settings = node.resolved(plan.recipe.name)  # the recipe's values, else the tracker's own environment, else ours
    info: dict[str, Any] = {
        "name": node.name,
        "report_to": node.report_to(),
        "run_name": run_name,
        "group": run_name,
        "experiment": settings.get("experiment") or plan.recipe.name,
        "log_artifacts": node.log_artifacts,
    }
    try:
        if node.name == "mlflow":
            info.update(_mlflow_start(settings["uri"], info["experiment"], run_name, plan, run_dir))
        elif node.name == "tensorboard":
            info["dir"] = str(Path(settings["dir"]).resolve() / plan.recipe.name / run_dir.name)
        elif node.name == "wandb":
            info.update(dir=str(Path(settings["dir"]).resolve()), mode=settings["mode"], entity=settings["entity"])
    except Exception as exc:  # a tracker that cannot be reached must not stop the run
        _warn(node.name, "start", exc)
        return
    atomic_write_json(run_dir / STATE, info)
    for sid, call in calls.items():
        call.tracking = {**info, "step": sid, "run_name": f"{run_name}/{sid}"}


def finish(run_dir: Path, built: dict[str, Any]) -> None:
    """Log every step of the recorded run (its manifest) and close the pipeline's run with its state."""
    path = run_dir / STATE
    if not path.is_file():
        return
    info = json.loads(path.read_text())
    if info.get("finished"):
        return
    try:
        if info["name"] == "mlflow":
            _mlflow_finish(info, run_dir, built)
        elif info["name"] == "tensorboard":
            _tensorboard_finish(info, run_dir, built)
        elif info["name"] in ("wandb", "trackio"):
            _wandb_like_finish(info, run_dir, built)
    except Exception as exc:
        _warn(info["name"], "finish", exc)
    atomic_write_json(path, {**info, "finished": True})


def _warn(tracker: str, when: str, exc: Exception) -> None:
    """On the terminal, where the run's own progress is: the run goes on, its record in the tracker is incomplete."""
    print(f"warning: tracking={tracker} failed at {when} and is skipped for this run: {type(exc).__name__}: {exc}", file=sys.stderr)


# ------------------------------------------------------------------ what a step's record becomes


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (`algorithm.learning_rate`); lists stay values."""
    if not isinstance(node, dict):
        return {prefix: node} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def numbers(node: Any) -> dict[str, float]:
    """The numeric leaves of a step's metrics (booleans as 0/1), for trackers that take numbers only."""
    out = {}
    for key, value in flat(node).items():
        if isinstance(value, bool | int | float) and not (isinstance(value, float) and not math.isfinite(value)):
            out[key] = float(value)
    return out


def metric_key(key: str) -> str:
    """MLflow keys take letters, digits and `_-. /:`; `pass@1` becomes `pass_at_1`."""
    return re.sub(r"[^\w\-. /:]", "_", key.replace("@", "_at_"))


def selected_steps(built: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {sid: step for sid, step in built.get("steps", {}).items() if step.get("state") != "not-selected"}


def history(run_dir: Path, sid: str) -> list[dict[str, Any]]:
    """The step's per-step log (`metrics.jsonl`: training curves), when it wrote one."""
    from halo_pipeline.data.rows import read_complete_jsonl

    path = run_dir / "steps" / sid / "metrics.jsonl"
    try:
        return [row for row in read_complete_jsonl(path) if isinstance(row.get("step"), int)] if path.is_file() else []
    except OSError:
        return []


def _ms(seconds: Any) -> int | None:
    return int(float(seconds) * 1000) if isinstance(seconds, int | float) else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


# ------------------------------------------------------------------ MLflow


def mlflow_uri(uri: str) -> str:
    """A local store's path made absolute (steps may run in other processes, with another working directory)."""
    for scheme in ("sqlite:///", "file:"):
        if uri.startswith(scheme):
            rest = uri[len(scheme) :]
            if scheme == "file:" and rest.startswith("//"):
                return uri
            path = Path(rest).expanduser().resolve()
            if scheme == "sqlite:///":
                path.parent.mkdir(parents=True, exist_ok=True)
                return f"sqlite:///{path}"
            return path.as_uri()
    return uri


def _mlflow_start(uri: str, experiment: str, run_name: str, plan: Plan, run_dir: Path) -> dict[str, Any]:
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    uri = mlflow_uri(uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        # a local database keeps its artifacts beside it (MLflow would otherwise use ./mlruns of whoever runs)
        where = Path(uri[len("sqlite:///") :]).parent / "mlartifacts" / experiment if uri.startswith("sqlite:///") else None
        experiment_id = client.create_experiment(experiment, artifact_location=where.as_uri() if where else None)
    else:
        experiment_id = found.experiment_id
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(experiment_id)
    composed = plan.composed
    tags = {
        "halo.recipe": plan.recipe.name,
        "halo.run_dir": str(run_dir),
        "mlflow.source.name": str(composed.recipe_path),
        "mlflow.note.content": f"halo-pipeline run of `{composed.recipe_path}`; run directory `{run_dir}`",
    }
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    params = {f"group.{g}": choice for g, choice in sorted(composed.choices.items())}
    params |= {"seed": str(plan.recipe.seed), "overrides": " ".join(composed.overrides) or "(none)"}
    client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
    return {"uri": uri, "experiment_id": experiment_id, "parent_run_id": run.info.run_id}


def _mlflow_finish(info: dict[str, Any], run_dir: Path, built: dict[str, Any]) -> None:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(info["uri"])
    parent = info["parent_run_id"]
    children = {
        run.data.tags.get("halo.step"): run
        for run in client.search_runs([info["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    }
    now = int(time.time() * 1000)
    counts: dict[str, int] = {}
    for sid, step in selected_steps(built).items():
        state = step["state"]
        counts[state] = counts.get(state, 0) + 1
        child = children.get(sid)
        live = child is not None and child.data.tags.get("halo.live") == "true"  # a train step's TRL callback logged into it
        if child is None:
            nest = {"mlflow.parentRunId": parent, "halo.step": sid, "halo.kind": step["kind"]}
            child = client.create_run(info["experiment_id"], run_name=sid, start_time=_ms(step.get("started")), tags=nest)
        run_id = child.info.run_id
        ended = _ms(step.get("ended")) or now
        params = [Param(metric_key(f"with.{k}"), _text(v)[:6000]) for k, v in flat(step.get("params") or {}).items()]
        metrics = [Metric(metric_key(k), v, ended, 0) for k, v in numbers(step.get("metrics") or {}).items()]
        if isinstance(step.get("seconds"), int | float):
            metrics.append(Metric("seconds", float(step["seconds"]), ended, 0))
        tags = [RunTag("halo.state", state), RunTag("halo.kind", step["kind"]), RunTag("halo.cache_key", str(step.get("cache_key") or ""))]
        if step.get("error"):
            tags.append(RunTag("halo.error", str(step["error"])[:5000]))
        for name, out in (step.get("outputs") or {}).items():  # links to the outputs where they live (the cache)
            tags += [
                RunTag(f"output.{name}", out["path"]),
                RunTag(f"output.{name}.type", out["type"]),
                RunTag(f"output.{name}.sha256", out["sha256"]),
            ]
        if not live:  # curves no callback logged: from the step's metrics.jsonl
            for row in history(run_dir, sid):
                metrics += [Metric(metric_key(k), v, ended, row["step"]) for k, v in numbers(row).items() if k != "step"]
        _log_batches(client, run_id, metrics, params, tags)
        client.set_terminated(run_id, MLFLOW_STATUS.get(state, "FAILED"), end_time=ended)
    totals = {"seconds": built.get("seconds"), "objective": built.get("objective")} | {f"steps_{s}": n for s, n in counts.items()}
    client.log_batch(
        parent,
        metrics=[Metric(k, float(v), now, 0) for k, v in totals.items() if isinstance(v, int | float)],
        tags=[RunTag(k, str(v)) for k, v in _run_tags(built).items()],
    )
    if info.get("log_artifacts"):
        for name in ARTIFACTS:
            if (run_dir / name).is_file():
                client.log_artifact(parent, str(run_dir / name))
    client.set_terminated(parent, RUN_STATUS.get(built.get("state", ""), "FAILED"), end_time=_ms(built.get("ended")) or now)


def _log_batches(client: Any, run_id: str, metrics: list[Any], params: list[Any], tags: list[Any]) -> None:
    """MLflow takes at most 100 params, 100 tags and 1000 metrics per batch."""
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    for i in range(0, len(tags), 100):
        client.log_batch(run_id, tags=tags[i : i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def _run_tags(built: dict[str, Any]) -> dict[str, Any]:
    tags = {"halo.state": built.get("state"), "halo.command": " ".join(built.get("command") or [])}
    tags |= {"prefect.flow_run_url": (built.get("prefect") or {}).get("ui_url"), "git.commit": (built.get("git") or {}).get("commit")}
    return {k: v for k, v in tags.items() if v}


# ------------------------------------------------------------------ TensorBoard


class EventWriter:
    """TensorBoard event files written with tensorboard's own protos (no TensorFlow, no torch)."""

    def __init__(self, logdir: Path):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        logdir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(logdir))

    def scalar(self, tag: str, value: float, step: int, wall_time: float) -> None:
        from tensorboard.compat.proto import event_pb2

        event = event_pb2.Event(wall_time=wall_time, step=step)
        event.summary.value.add(tag=tag, simple_value=float(value))
        self._writer.add_event(event)

    def text(self, tag: str, markdown: str, wall_time: float) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.text import metadata
        from tensorboard.util import tensor_util

        event = event_pb2.Event(wall_time=wall_time, step=0)
        meta: summary_pb2.SummaryMetadata = metadata.create_summary_metadata(display_name=tag, description="")
        event.summary.value.add(tag=tag, metadata=meta, tensor=tensor_util.make_tensor_proto(markdown.encode()))
        self._writer.add_event(event)

    def close(self) -> None:
        self._writer.close()


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows])


def _tensorboard_finish(info: dict[str, Any], run_dir: Path, built: dict[str, Any]) -> None:
    root = Path(info["dir"])
    writer = EventWriter(root / "pipeline")
    now = time.time()
    try:
        for sid, step in selected_steps(built).items():
            wall = float(step.get("ended") or now)
            for key, value in numbers(step.get("metrics") or {}).items():
                writer.scalar(f"{sid}/{key}", value, 0, wall)
            if isinstance(step.get("seconds"), int | float):
                writer.scalar(f"{sid}/seconds", float(step["seconds"]), 0, wall)
            writer.text(
                f"{sid}/params", _table([(k, _text(v)) for k, v in flat(step.get("params") or {}).items()], ("param", "value")), wall
            )
            outputs = [(n, o["type"], o["path"], o["sha256"][:12]) for n, o in (step.get("outputs") or {}).items()]
            state = f"**{step['state']}** ({step['kind']})" + (f": {step['error']}" if step.get("error") else "")
            writer.text(f"{sid}/state", state + ("\n\n" + _table(outputs, ("output", "type", "path", "sha256")) if outputs else ""), wall)
            live = (root / sid).is_dir() and any((root / sid).glob("events.out.tfevents.*"))  # TRL's callback wrote the curves
            rows = [] if live else history(run_dir, sid)
            if rows:
                curves = EventWriter(root / sid)
                for row in rows:
                    for key, value in numbers(row).items():
                        if key != "step":
                            curves.scalar(key, value, row["step"], wall)
                curves.close()
        summary = [("state", built.get("state")), ("seconds", built.get("seconds")), ("objective", built.get("objective"))]
        summary += [("overrides", " ".join(built.get("overrides") or []) or "(none)"), ("run directory", str(run_dir))]
        summary += [(f"group {g}", c) for g, c in sorted((built.get("groups") or {}).items())] + list(_run_tags(built).items())
        writer.text("run", _table(summary, ("", "")), now)
        if isinstance(built.get("seconds"), int | float):
            writer.scalar("run/seconds", float(built["seconds"]), 0, now)
        if isinstance(built.get("objective"), int | float):
            writer.scalar("run/objective", float(built["objective"]), 0, now)
    finally:
        writer.close()


# ------------------------------------------------------------------ W&B and trackio (the same API)


def _wandb_like_finish(info: dict[str, Any], run_dir: Path, built: dict[str, Any]) -> None:
    steps = selected_steps(built)
    config = {
        "recipe": built.get("name"),
        "groups": built.get("groups") or {},
        "overrides": built.get("overrides") or [],
        "seed": built.get("seed"),
        "run_dir": str(run_dir),
        "steps": {sid: step.get("params") or {} for sid, step in steps.items()},
    }
    summary: dict[str, Any] = {"state": built.get("state"), "seconds": built.get("seconds"), "objective": built.get("objective")}
    for sid, step in steps.items():
        summary |= {f"{sid}/{k}": v for k, v in numbers(step.get("metrics") or {}).items()}
        summary |= {f"{sid}/state": step["state"], f"{sid}/seconds": step.get("seconds")}
    summary = {k: v for k, v in summary.items() if v is not None}
    if info["name"] == "trackio":
        import trackio

        trackio.init(project=info["experiment"], name=info["run_name"], group=info["group"], config=config)
        trackio.log({k: v for k, v in summary.items() if isinstance(v, int | float)})
        trackio.finish()
        return
    import wandb

    Path(info["dir"]).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=info["experiment"], entity=info.get("entity"), name=info["run_name"], group=info["group"], job_type="pipeline",
        mode=info.get("mode", "offline"), dir=info["dir"], config=config, settings=wandb.Settings(silent=True, console="off"),
    )  # fmt: skip
    try:
        table = wandb.Table(columns=["step", "kind", "state", "seconds", "outputs"])
        for sid, step in steps.items():
            outputs = ", ".join(f"{n}: {o['path']}" for n, o in (step.get("outputs") or {}).items())
            table.add_data(sid, step["kind"], step["state"], step.get("seconds"), outputs)
        run.log({"steps": table})
        run.summary.update(summary)
        if info.get("log_artifacts"):
            for name in ARTIFACTS:
                if (run_dir / name).is_file():
                    run.save(str(run_dir / name), base_path=str(run_dir), policy="now")
    finally:
        run.finish(exit_code=0 if built.get("state") == "completed" else 1)
