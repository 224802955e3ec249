"""A grid with an invalid value: the valid jobs still run, the invalid one runs nothing, and the summary
and the last lines say which (issue: `steps.dedup.with.threshold=0.7,1.5` ended in a traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FAKE_RECIPE, cli, write


@pytest.mark.usefixtures("prefect_api")
def test_a_grid_with_an_invalid_job_runs_the_others_and_says_which(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    res = cli("run", str(recipe), "-m", "steps.make.with.n=2,-1", "steps.make.with.text=hi", cwd=project)
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "Traceback" not in out
    assert "1 of 2 jobs invalid (they will not run):" in res.stderr and "job (steps.make.with.n=-1 +steps.make.with.text=hi):" in res.stderr
    assert "1 of 2 jobs invalid: 1" in res.stdout
    assert "job 0 (steps.make.with.n=2 +steps.make.with.text=hi): running" in res.stdout  # never silent while a job runs
    assert "make: ran" in res.stderr  # the job's steps, as a single run shows them
    (sweep_dir,) = (project / "multirun/fake").iterdir()
    summary = json.loads((sweep_dir / "summary.json").read_text())
    states = {tuple(j["overrides"]): j["state"] for j in summary["jobs"]}
    assert states == {
        ("steps.make.with.n=2", "+steps.make.with.text=hi"): "completed",
        ("steps.make.with.n=-1", "+steps.make.with.text=hi"): "invalid",
    }
    invalid = next(j for j in summary["jobs"] if j["state"] == "invalid")
    assert any("greater than or equal to 1" in p for p in invalid["problems"])
    assert not (Path(invalid["run_dir"]) / "replay.json").exists()  # it ran nothing
