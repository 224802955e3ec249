"""The `tracking` group: every shipped recipe takes every tracker as an override, a tracker's settings are checked
when the recipe is validated (without importing the tracker), and the train step hands it to TRL."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from halo_pipeline.engine.errors import RecipeError
from halo_pipeline.engine.plan import plan_recipe

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
TRACKERS = ["none", "tensorboard", "mlflow", "wandb", "trackio"]


@pytest.mark.parametrize("tracker", TRACKERS)
def test_every_shipped_recipe_takes_every_tracker(tracker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    for recipe in RECIPES:
        if tracker == "trackio" and importlib.util.find_spec("trackio") is None:
            with pytest.raises(RecipeError, match=r"tracking=trackio needs the trackio package: pip install"):
                plan_recipe(str(recipe), ["model=tiny", f"tracking={tracker}"])
            continue
        plan = plan_recipe(str(recipe), ["model=tiny", f"tracking={tracker}"])
        assert plan.recipe.tracking.name == tracker and plan.composed.choices["tracking"] == tracker
        if tracker in ("mlflow", "wandb", "trackio"):
            assert plan.recipe.tracking.resolved(plan.recipe.name, {})["experiment"] == plan.recipe.name  # the recipe's name by default


def test_a_trackers_settings_are_checked_at_their_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    recipe = str(REPO / "recipes/tiny_debug.yaml")
    with pytest.raises(RecipeError) as info:
        plan_recipe(recipe, ["tracking=tensorboard", "+tracking.uri=http://x"])
    (issue,) = info.value.issues
    assert issue.key == "tracking" and "tracking=tensorboard does not read uri (it takes dir)" in issue.message
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(RecipeError, match="MLFLOW_ALLOW_FILE_STORE=true"):
        plan_recipe(recipe, ["tracking=mlflow", "tracking.uri=file:./mlruns"])
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert plan_recipe(recipe, ["tracking=mlflow", "tracking.uri=file:./mlruns"]).recipe.tracking.uri == "file:./mlruns"


def test_validate_imports_no_tracker() -> None:
    code = (
        "import sys, json; from halo_pipeline.engine.plan import plan_recipe; "
        f"plan_recipe({str(REPO / 'recipes/quickstart.yaml')!r}, ['tracking=mlflow']); "
        "print(json.dumps([m for m in ('mlflow', 'tensorboard', 'wandb', 'datasets', 'torch') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_train_step_hands_the_tracker_to_trl(tmp_path: Path) -> None:
    from halo_pipeline.tasks.train import TrainParams
    from halo_pipeline.training.algorithms import trainer_config

    params = TrainParams.model_validate({"model": "tiny", "max_steps": 2})
    assert trainer_config(params, tmp_path).report_to == []  # tracking=none, and outside a pipeline run
    tracking = {"name": "tensorboard", "report_to": ["tensorboard"], "run_name": "quickstart/2026-01-01_00-00-00/train", "dir": "x"}
    config = trainer_config(params, tmp_path, tracking)
    assert config.report_to == ["tensorboard"] and config.run_name == "quickstart/2026-01-01_00-00-00/train"
    trackio = trainer_config(params, tmp_path, {**tracking, "name": "trackio", "report_to": ["trackio"], "experiment": "quickstart"})
    assert trackio.report_to == ["trackio"] and trackio.project == "quickstart"
