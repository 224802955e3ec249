"""docs/recipes.md: dpo_preference.yaml checks its wiring on the tiny model end to end, as the page shows; with the
recipe's own pass/fail verifier the tiny model's samples tie, and the run says so at both ends."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import REPO, cli


@pytest.fixture
def recipes(project: Path) -> Path:
    shutil.copytree(REPO / "recipes", project / "recipes", dirs_exist_ok=True)
    return project / "recipes"


@pytest.mark.usefixtures("prefect_api")
def test_dpo_preference_on_the_tiny_model_as_documented(recipes: Path, project: Path) -> None:
    res = cli("run", str(recipes / "dpo_preference.yaml"), "model=tiny", "verifier=regex_format", "verifier.pattern=Hello", cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    tied = cli("run", str(recipes / "dpo_preference.yaml"), "model=tiny", "steps.synthesize.with.limit=2", cwd=project)
    out = " ".join((tied.stdout + tied.stderr).split())
    assert tied.returncode == 1 and "⚠ synthesize.dataset has no rows: nothing kept from 2 prompts" in out, out
    assert "no usable rows (upstream: input 'dataset' (dedup.dataset) has no rows: input 'dataset' (synthesize.dataset)" in out, out
