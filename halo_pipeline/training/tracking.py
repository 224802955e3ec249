"""The train step's side of experiment tracking: what TRL is told (`report_to`, the run name, the project)
and the tracker run its callback logs into while it trains.

The flow fills `RunContext.tracking` from the recipe's `tracking` group (`orchestration/tracking.py`);
here it becomes TrainingArguments and, around `trainer.train()`, the step's own run: for MLflow a run
nested under the pipeline run, for TensorBoard a folder beside the pipeline's event files, for W&B a
run in the pipeline run's group. The pipeline then adds the step's params, metrics and outputs to it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def training_args(tracking: dict[str, Any] | None) -> dict[str, Any]:
    """TrainingArguments for the run's tracker: `report_to`, `run_name` (the pipeline run and step), trackio's project."""
    if not tracking or tracking.get("name", "none") == "none":
        return {"report_to": "none"}
    args: dict[str, Any] = {"report_to": list(tracking["report_to"]), "run_name": tracking["run_name"]}
    if tracking["name"] == "trackio":
        args["project"] = tracking["experiment"]
    return args


@contextlib.contextmanager
def session(tracking: dict[str, Any] | None, trainer: Any) -> Iterator[None]:
    """Open the step's tracker run around training, so that TRL's callback logs the curves live into it."""
    name = (tracking or {}).get("name", "none")
    if name == "mlflow":
        with _mlflow_run(tracking or {}):
            yield
    elif name == "tensorboard":
        from transformers.integrations import TensorBoardCallback

        for cb in trainer.callback_handler.callbacks:  # what TENSORBOARD_LOGGING_DIR sets, without a process-wide variable
            if isinstance(cb, TensorBoardCallback):
                cb.logging_dir = str(Path((tracking or {})["dir"]) / (tracking or {})["step"])
        yield
    elif name == "wandb":
        with _wandb_run(tracking or {}):
            yield
    else:  # trackio: TRL's callback opens its run (project and run name from TrainingArguments)
        yield


@contextlib.contextmanager
def _mlflow_run(tracking: dict[str, Any]) -> Iterator[None]:
    """The step's run, nested under the pipeline run and active in this thread: TRL's MLflowCallback finds an
    active run and logs into it instead of starting its own. The pipeline closes it with the step's state."""
    import mlflow

    mlflow.set_tracking_uri(tracking["uri"])
    tags = {"halo.step": tracking["step"], "halo.kind": "train", "halo.live": "true"}
    mlflow.start_run(experiment_id=tracking["experiment_id"], run_name=tracking["step"], parent_run_id=tracking["parent_run_id"], tags=tags)
    try:
        yield
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()


_WANDB = threading.Lock()  # W&B has one active run per process: train steps in threads take turns


@contextlib.contextmanager
def _wandb_run(tracking: dict[str, Any]) -> Iterator[None]:
    """A W&B run in the pipeline run's group; TRL's WandbCallback logs into the process's active run."""
    with _WANDB:
        yield from _wandb_active(tracking)


def _wandb_active(tracking: dict[str, Any]) -> Iterator[None]:
    import wandb

    Path(tracking["dir"]).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=tracking["experiment"], entity=tracking.get("entity"), name=tracking["run_name"], group=tracking["group"], job_type="train",
        mode=tracking.get("mode", "offline"), dir=tracking["dir"], settings=wandb.Settings(silent=True, console="off"),
    )  # fmt: skip
    try:
        yield
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()
