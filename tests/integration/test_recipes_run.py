"""The shipped recipes run end to end: the tiny-model debug recipe always, the real quickstart when slow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO, cli

pytestmark = pytest.mark.usefixtures("prefect_api")


def copy_project(project: Path) -> None:
    shutil.copytree(REPO / "recipes", project / "recipes", dirs_exist_ok=True)


def test_tiny_debug_recipe_runs_the_data_steps(project: Path) -> None:
    copy_project(project)
    res = cli("run", "recipes/tiny_debug.yaml", "-q", cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    run_dir = Path(res.stdout.strip())
    m = json.loads((run_dir / "replay.json").read_text())
    assert [m["steps"][s]["state"] for s in ("synthesize", "dedup", "score")] == ["ran", "ran", "ran"]
    assert m["groups"]["model"] == "tiny" and m["steps"]["synthesize"]["metrics"]["prompts"] == 8
    rows = [json.loads(line) for line in (run_dir / "steps/score/dataset.jsonl").read_text().splitlines()]
    assert all({"id", "score", "score_components", "source_id", "reward"} <= set(r) for r in rows)
    assert m["steps"]["score"]["metrics"]["rows_in"] == m["steps"]["dedup"]["metrics"]["rows_out"]


@pytest.mark.slow
def test_quickstart_with_smollm2(project: Path) -> None:
    copy_project(project)
    res = cli("run", "recipes/quickstart.yaml", "-q", cwd=project, timeout=1800)
    assert res.returncode == 0, res.stdout + res.stderr
    m = json.loads((Path(res.stdout.strip()) / "replay.json").read_text())
    synth = m["steps"]["synthesize"]["metrics"]
    assert synth["samples"] == 24 and synth["generated_tokens"] > 100
    assert m["steps"]["synthesize"]["outputs"]["dataset"]["meta"]["rows"] > 0
