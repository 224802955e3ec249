"""Live training progress: each logged step is a line in the step's log (step, loss/reward, pace, ETA) and its
figures reach the engine's progress (the state file the terminal's progress column reads)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from halo_pipeline.cli import progress
from halo_pipeline.engine import registry
from halo_pipeline.engine.step import Artifact, RunContext
from helpers import write_jsonl


def train_with_progress(tmp_path: Path, algorithm: dict[str, Any], **params: Any) -> tuple[list[str], list[tuple[int, int, dict]]]:
    rows = [{"id": f"r{i}", "prompt": f"What is {i}+{i}?", "completion": f"{2 * i}"} for i in range(8)]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    lines: list[str] = []
    calls: list[tuple[int, int, dict]] = []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    log = logging.getLogger(f"test.progress.{tmp_path.name}")
    log.setLevel(logging.INFO)
    log.addHandler(Lines())
    ctx = RunContext(
        step_id="train", kind="train", out_dir=tmp_path / "out", run_dir=tmp_path, seed=0, log=log,
        on_progress=lambda done, total, **figures: calls.append((done, total, figures)),
    )  # fmt: skip
    ctx.out_dir.mkdir()
    kind = registry.get("train")
    full = {"model": "tiny", "algorithm": algorithm, "max_steps": 3, "logging_steps": 1, **params}
    kind.fn(kind.params.model_validate(full), {"dataset": Artifact("sft_dataset", data)}, ctx)
    return lines, calls


def test_each_logged_step_is_a_line_with_loss_and_eta_and_reaches_the_progress(tmp_path: Path) -> None:
    lines, calls = train_with_progress(tmp_path, {"name": "sft", "batch_size": 2})
    steps = [line for line in lines if line.startswith("step ")]
    assert [s.split(" · ")[0] for s in steps] == ["step 1/3", "step 2/3", "step 3/3"], lines
    assert all(" · loss " in s and "s/step, ETA " in s for s in steps), steps
    assert steps[-1].endswith("ETA 0 s")
    logged = [json.loads(line)["loss"] for line in (tmp_path / "out/metrics.jsonl").read_text().splitlines()]
    assert f"loss {logged[0]:.4g}" in steps[0]
    assert calls[-1][:2] == (3, 3) and calls[-1][2]["loss"] == pytest.approx(logged[-1], abs=1e-4)
    assert all("eta_s" in figures for _, _, figures in calls)


def test_grpo_progress_reports_the_reward(tmp_path: Path) -> None:
    algorithm = {"name": "grpo", "batch_size": 4, "num_generations": 4, "max_completion_length": 8, "learning_rate": 1e-3}
    lines, calls = train_with_progress(tmp_path, algorithm, verifier={"name": "regex_format", "pattern": "today"})
    assert any(line.startswith("step 3/3") and " · reward " in line for line in lines), lines
    assert "reward" in calls[-1][2]


def test_the_progress_column_shows_the_figures_and_eta() -> None:
    state = {"state": "running", "done": 5, "total": 40, "loss": 1.23456, "reward": 0.5, "eta_s": 75.2}
    assert progress._figures(state) == "  loss 1.235 · reward 0.5 · ETA 1 min 15 s"
    assert progress._figures({"state": "running", "done": 1, "total": 4}) == ""


def test_logs_that_are_not_a_terminal_get_a_progress_line_every_tenth() -> None:
    reported: dict[str, tuple[float, float]] = {}
    due = [progress._progress_due(reported, "train", {"done": d, "total": 40}) for d in (1, 2, 3, 5, 6, 10, 40)]
    assert due == [False, False, False, True, False, True, True]  # first sight only noted; then each 10% step, and the end
    reported["slow"] = (0.5, time.time() - 31)
    assert progress._progress_due(reported, "slow", {"done": 41, "total": 80})  # or every 30 s when it moved
