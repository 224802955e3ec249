"""A misspelt eval task is a validation error (before training, merge, convert and verify), with a did-you-mean;
lm-eval's own tasks and local task YAMLs validate (their names are read without importing lm-eval)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import REPO
from halo_pipeline.engine.errors import RecipeError
from halo_pipeline.engine.plan import plan_recipe


@pytest.fixture
def quickstart(project: Path) -> Path:
    shutil.copytree(REPO / "recipes", project / "recipes", dirs_exist_ok=True)
    return project / "recipes" / "quickstart.yaml"


def test_a_misspelt_eval_task_is_found_by_validate(quickstart: Path) -> None:
    with pytest.raises(RecipeError) as err:
        plan_recipe(quickstart, ["model=tiny", "steps.eval.with.tasks=[halo_capitals,halo_arithh,arc_eesy]"])
    by_key = {i.key: i for i in err.value.issues}
    assert set(by_key) == {"steps.eval.with.tasks.1", "steps.eval.with.tasks.2"}, err.value.format()
    assert "unknown eval task 'halo_arithh'" in by_key["steps.eval.with.tasks.1"].message
    assert "did you mean 'halo_arith'?" in by_key["steps.eval.with.tasks.1"].message
    assert "did you mean 'arc_easy'?" in by_key["steps.eval.with.tasks.2"].message


def test_lm_eval_and_local_task_names_validate(quickstart: Path, project: Path) -> None:
    tasks = project / "my_tasks"
    tasks.mkdir()
    (tasks / "mine.yaml").write_text("task: my_task\ndataset_path: json\n")
    overrides = ["model=tiny", "steps.eval.with.tasks=[arc_easy,my_task]", f"steps.eval.with.include_path=[{tasks}]"]
    assert plan_recipe(quickstart, overrides).steps["eval"].params.tasks == ["arc_easy", "my_task"]  # type: ignore[attr-defined]
