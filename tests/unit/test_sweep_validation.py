"""Every job of a grid is validated before any runs: the invalid ones are reported together with their
overrides and run nothing; a grid of documented keys needs no `+` (docs/sweeps.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import FAKE_RECIPE, write
from halo_pipeline.orchestration.sweep import grid_jobs, invalid_jobs, multirun

SELECT = {"only": [], "from": None, "until": None}


def test_grid_jobs_are_the_sweepers_own() -> None:
    jobs = grid_jobs(["algorithm=sft,dpo", "steps.make.with.n=3,-1", "hydra/launcher=joblib"])
    assert jobs == [
        ["algorithm=sft", "steps.make.with.n=3"],
        ["algorithm=sft", "steps.make.with.n=-1"],
        ["algorithm=dpo", "steps.make.with.n=3"],
        ["algorithm=dpo", "steps.make.with.n=-1"],
    ]


def test_the_invalid_jobs_of_a_grid_are_found_before_any_runs(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    invalid = invalid_jobs(recipe, ["steps.make.with.n=3,-1", "+steps.make.with.text=a,b"], SELECT)
    assert sorted(invalid) == [("steps.make.with.n=-1", "+steps.make.with.text=a"), ("steps.make.with.n=-1", "+steps.make.with.text=b")]
    (problem,) = invalid[("steps.make.with.n=-1", "+steps.make.with.text=a")]
    assert "steps.make.with.n" in problem and "greater than or equal to 1" in problem


def test_a_grid_of_only_invalid_jobs_starts_nothing(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    assert multirun(str(recipe), ["steps.make.with.n=0,-1", "steps.make.with.text=x"]) == 2  # a documented key: no `+`
    err = capsys.readouterr().err
    assert "2 of 2 jobs invalid (they will not run):" in err
    assert "job (steps.make.with.n=0 +steps.make.with.text=x):" in err and "job (steps.make.with.n=-1 +steps.make.with.text=x):" in err
    assert not (project / "multirun").exists()


def test_an_invalid_optuna_trial_is_a_failed_trial_with_its_problems(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Optuna's values are known only when drawn: an invalid trial runs nothing, is recorded with its problems, and
    counts as a failed trial (the sweep stops at max_failure_rate); no traceback."""
    import json

    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE + "objective: copy.rows\n")
    code = multirun(str(recipe), ["hydra/sweeper=optuna", "hydra.sweeper.n_trials=1", "steps.make.with.n=int(interval(-5,-1))"])
    out = capsys.readouterr()
    assert code == 2 and "Traceback" not in out.err and "the sweep stopped" in out.err, out.err
    (summary,) = (project / "multirun/fake").glob("*/summary.json")
    (job,) = json.loads(summary.read_text())["jobs"]
    assert job["state"] == "invalid" and any("greater than or equal to 1" in p for p in job["problems"])
