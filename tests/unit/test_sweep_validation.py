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
