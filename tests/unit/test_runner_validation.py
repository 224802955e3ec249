"""Resources (or any setting) a runner cannot honour are a validation error, before any work (issue: runner.resources
with runner=threads passed validate); the settings of the runner that takes them are plain overrides."""

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


def test_resources_on_threads_are_refused_at_validation(quickstart: Path) -> None:
    with pytest.raises(RecipeError) as err:
        plan_recipe(quickstart, ["model=tiny", "runner.resources.train.GPU=1"])
    (issue,) = err.value.issues
    assert issue.key == "runner" and "runner=threads cannot honour resources" in issue.message
    assert "choose runner=dask or runner=ray" in issue.message and "from override" in issue.message


def test_a_recipe_that_gives_threads_an_address_is_refused(quickstart: Path) -> None:
    recipe = quickstart.parent / "mine.yaml"
    recipe.write_text(quickstart.read_text().replace("name: quickstart", "name: mine\nrunner: {name: threads, address: tcp://x:8786}"))
    with pytest.raises(RecipeError) as err:
        plan_recipe(recipe, ["model=tiny"])
    assert "runner=threads cannot honour address" in err.value.format()


def test_the_runner_that_takes_resources_takes_them_as_plain_overrides(quickstart: Path) -> None:
    for overrides in (["runner.resources.train.GPU=1"], ["runner.resources={train: {GPU: 1}}"]):
        plan = plan_recipe(quickstart, ["model=tiny", "runner=dask", *overrides])
        assert plan.recipe.runner.resources == {"train": {"GPU": 1}}
    assert plan_recipe(quickstart, ["model=tiny", "runner=ray", "runner.num_cpus=2"]).recipe.runner.num_cpus == 2
