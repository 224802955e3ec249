"""tracking=mlflow|tensorboard|wandb for real: a recipe (dedup -> SFT on the tiny model) runs through the CLI and a
Prefect server, and the tracker's own files are read back with the tracker's own readers: MLflow's local
database, TensorBoard's event files, W&B's offline run files."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from conftest import cli, write

pytestmark = pytest.mark.usefixtures("prefect_api")

RECIPE = """
defaults:
  - model: tiny
  - backend: cpu
  - algorithm: sft
  - tracking: none
  - _self_
name: track
steps:
  dedup:
    inputs: {dataset: file:data.jsonl}
  train:
    inputs: {dataset: dedup.dataset}
    with: {model: "${model}", backend: "${backend}", algorithm: "${algorithm}", max_steps: 4, logging_steps: 1, save_every: 50}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tracking")
    write(root / "recipes/track.yaml", RECIPE)
    rows = [{"id": f"r{i}", "prompt": f"What is {i}+{i}?", "completion": f"It is {2 * i}."} for i in range(8)]
    (root / "recipes/data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def run(project: Path, *overrides: str) -> tuple[Path, dict[str, Any]]:
    env = {"HALO_PIPELINE_CACHE": str(project / "cache"), "TRACKIO_DIR": str(project / "trackio")}
    res = cli("run", "recipes/track.yaml", "-q", *overrides, cwd=project, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "warning: tracking" not in res.stderr, res.stderr
    run_dir = Path(res.stdout.strip().splitlines()[-1])
    return run_dir, json.loads((run_dir / "replay.json").read_text())


def test_mlflow_logs_a_run_per_pipeline_run_with_a_nested_run_per_step(project: Path) -> None:
    from mlflow.tracking import MlflowClient

    run_dir, m = run(project, "tracking=mlflow")
    assert {s["state"] for s in m["steps"].values()} == {"ran"}
    client = MlflowClient(f"sqlite:///{project / 'outputs/mlflow.db'}")
    experiment = client.get_experiment_by_name("track")  # the recipe's name
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`halo.recipe` = 'track'")
    assert parent.info.run_name == f"track/{run_dir.name}" and parent.info.status == "FINISHED"
    assert parent.data.params["group.tracking"] == "mlflow" and parent.data.params["group.model"] == "tiny"
    assert parent.data.metrics["steps_ran"] == 2 and parent.data.metrics["seconds"] > 0
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"replay.json", "report.html", "config.yaml"}
    children = {
        r.info.run_name: r for r in client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    }
    assert set(children) == {"dedup", "train"}
    dedup, train = children["dedup"], children["train"]
    assert dedup.data.tags["halo.state"] == "ran" and dedup.info.status == "FINISHED"
    assert dedup.data.params["with.threshold"] == str(m["steps"]["dedup"]["params"]["threshold"])
    assert dedup.data.metrics["rows_out"] == m["steps"]["dedup"]["metrics"]["rows_out"]
    assert Path(dedup.data.tags["output.dataset"]).is_file() and dedup.data.tags["output.dataset.type"] == "sft_dataset"
    # the train step's TRL callback logged into its nested run while it trained: TrainingArguments and live loss
    assert train.data.tags["halo.live"] == "true" and train.data.tags["halo.state"] == "ran"
    assert train.data.params["max_steps"] == "4" and train.data.params["with.algorithm.name"] == "sft"
    assert [p.step for p in client.get_metric_history(train.info.run_id, "loss")] == [1, 2, 3, 4]
    assert train.data.metrics["final_loss"] == pytest.approx(m["steps"]["train"]["metrics"]["final_loss"])
    assert train.data.params["run_name"] == f"track/{run_dir.name}/train"  # TRL's run name, from the pipeline run
    log = (run_dir / "logs/train.log").read_text()  # live progress in the step's log: one line per logged step
    assert "step 1/4 · loss " in log and "step 4/4 · loss " in log and "ETA" in log

    # a cached rerun is a run of its own; the train step's curves come from its metrics.jsonl
    run_dir2, m2 = run(project, "tracking=mlflow")
    assert {s["state"] for s in m2["steps"].values()} == {"cached"}
    (parent2,) = client.search_runs([experiment.experiment_id], filter_string=f"attributes.run_name = 'track/{run_dir2.name}'")
    children2 = {
        r.info.run_name: r for r in client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent2.info.run_id}'")
    }
    assert children2["train"].data.tags["halo.state"] == "cached" and "halo.live" not in children2["train"].data.tags
    assert [p.step for p in client.get_metric_history(children2["train"].info.run_id, "loss")] == [1, 2, 3, 4]


def test_a_tracker_that_fails_is_a_warning_not_a_failed_run(project: Path) -> None:
    bad = "tracking.uri=sqlite:////proc/halo-no-such-dir/mlflow.db"  # a store that cannot be created
    res = cli("run", "recipes/track.yaml", "-q", "tracking=mlflow", bad, cwd=project, env={"HALO_PIPELINE_CACHE": str(project / "cache")})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "warning: tracking=mlflow failed at start and is skipped for this run" in res.stderr
    run_dir = Path(res.stdout.strip().splitlines()[-1])
    assert json.loads((run_dir / "replay.json").read_text())["state"] == "completed" and not (run_dir / "tracking.json").exists()


def test_tensorboard_event_files_hold_each_step_and_the_live_training_curves(project: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, m = run(project, "tracking=tensorboard", "+steps.train.cache=false")
    assert m["steps"]["train"]["state"] == "ran"
    root = project / "outputs/tensorboard/track" / run_dir.name
    pipeline = EventAccumulator(str(root / "pipeline"))
    pipeline.Reload()
    assert pipeline.Scalars("train/final_loss")[0].value == pytest.approx(m["steps"]["train"]["metrics"]["final_loss"], rel=1e-5)
    assert pipeline.Scalars("dedup/rows_out")[0].value == m["steps"]["dedup"]["metrics"]["rows_out"]
    params = pipeline.Tensors("train/params")[0].tensor_proto.string_val[0].decode()
    assert "| algorithm.name | sft |" in params and "| max_steps | 4 |" in params
    assert "sft_dataset" in pipeline.Tensors("dedup/state")[0].tensor_proto.string_val[0].decode()
    curves = EventAccumulator(str(root / "train"))  # written live by TRL's TensorBoard callback
    curves.Reload()
    assert [e.step for e in curves.Scalars("train/loss")] == [1, 2, 3, 4]


def wandb_records(run_dir: Path) -> list[Any]:
    """The records of a W&B offline run file (LevelDB-log framing of `Record` protos, as wandb-core writes it)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)  # W&B stores `train/loss` as the nested key (train, loss)


def test_wandb_offline_runs_share_the_pipeline_runs_group(project: Path) -> None:
    run_dir, m = run(project, "tracking=wandb", "+steps.train.cache=false")
    offline = sorted((project / "outputs/wandb").glob("offline-run-*"))
    runs = {}
    for folder in offline:
        records = wandb_records(folder)
        (header,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        runs[header.display_name] = (header, records)
    group = f"track/{run_dir.name}"
    assert set(runs) == {group, f"{group}/train"}
    pipeline, records = runs[group]
    assert pipeline.run_group == group and pipeline.job_type == "pipeline" and pipeline.project == "track"
    config = {item.key: json.loads(item.value_json) for item in pipeline.config.update}
    assert config["steps"]["train"]["max_steps"] == 4 and config["groups"]["tracking"] == "wandb"
    summary = {key(i): json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    assert summary["train/final_loss"] == pytest.approx(m["steps"]["train"]["metrics"]["final_loss"]) and summary["state"] == "completed"
    train, train_records = runs[f"{group}/train"]
    assert train.run_group == group and train.job_type == "train"
    logged = [{key(i): json.loads(i.value_json) for i in r.history.item} for r in train_records if r.WhichOneof("record_type") == "history"]
    assert [h["train/global_step"] for h in logged if "train/loss" in h] == [1, 2, 3, 4]  # TRL's live curve


def test_trackio_logs_the_pipeline_and_the_train_steps_run(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs where trackio is installed (it is not in the pinned set: its release pins pillow<13)."""
    if importlib.util.find_spec("trackio") is None:
        pytest.skip("trackio is not installed")
    monkeypatch.setenv("TRACKIO_DIR", str(project / "trackio"))  # read when trackio is imported, here and in the run
    run_dir, m = run(project, "tracking=trackio", "+steps.train.cache=false")
    from trackio.sqlite_storage import SQLiteStorage

    group = f"track/{run_dir.name}"
    assert set(SQLiteStorage.get_runs("track")) == {group, f"{group}/train"}
    assert SQLiteStorage.get_run_config("track", group)["steps"]["train"]["max_steps"] == 4
    (summary,) = SQLiteStorage.get_logs("track", group)
    assert summary["train/final_loss"] == pytest.approx(m["steps"]["train"]["metrics"]["final_loss"])
    curve = [log["train/global_step"] for log in SQLiteStorage.get_logs("track", f"{group}/train") if "train/loss" in log]
    assert curve == [1, 2, 3, 4]  # TRL's live curve
