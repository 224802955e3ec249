"""Trackers honour their own environment (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, WANDB_PROJECT, WANDB_DIR,
WANDB_MODE, WANDB_ENTITY, TENSORBOARD_LOGGING_DIR) when the recipe names nothing; a value the recipe sets wins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halo_pipeline.engine.plan import plan_recipe
from halo_pipeline.orchestration import tracking

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "recipes/tiny_debug.yaml")
VARIABLES = (
    "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT", "WANDB_DIR", "WANDB_MODE", "WANDB_ENTITY", "TENSORBOARD_LOGGING_DIR",
)  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def started(tmp_path: Path, *overrides: str) -> dict[str, object]:
    plan = plan_recipe(RECIPE, ["model=tiny", *overrides])
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    tracking.start(plan, run_dir, {})
    return dict(json.loads((run_dir / tracking.STATE).read_text()))


def test_mlflow_takes_its_tracking_uri_and_experiment_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env/mlflow.db")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    info = started(tmp_path, "tracking=mlflow")
    assert info["uri"] == f"sqlite:///{tmp_path}/env/mlflow.db" and info["experiment"] == "from-env"
    assert (tmp_path / "env/mlflow.db").is_file() and not (tmp_path / "outputs/mlflow.db").exists()
    explicit = started(tmp_path, "tracking=mlflow", f"tracking.uri=sqlite:///{tmp_path}/recipe.db", "tracking.experiment=mine")
    assert explicit["uri"] == f"sqlite:///{tmp_path}/recipe.db" and explicit["experiment"] == "mine"  # the recipe's value wins
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    default = started(tmp_path, "tracking=mlflow")
    assert default["uri"] == f"sqlite:///{tmp_path}/outputs/mlflow.db" and default["experiment"] == "tiny-debug"


def test_wandb_and_tensorboard_take_their_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert started(tmp_path, "tracking=wandb") | {"group": None, "run_name": None} == {
        "name": "wandb", "report_to": ["wandb"], "experiment": "tiny-debug", "dir": str(tmp_path / "outputs"), "mode": "offline",
        "entity": None, "log_artifacts": True, "group": None, "run_name": None,
    }  # fmt: skip
    monkeypatch.setenv("WANDB_PROJECT", "proj")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_ENTITY", "team")
    info = started(tmp_path, "tracking=wandb")
    assert (info["experiment"], info["dir"], info["mode"], info["entity"]) == ("proj", str(tmp_path / "wb"), "online", "team")
    info = started(tmp_path, "tracking=wandb", "tracking.mode=offline", "tracking.experiment=p2", "tracking.dir=here")
    assert (info["experiment"], info["dir"], info["mode"], info["entity"]) == ("p2", str(tmp_path / "here"), "offline", "team")
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(Exception, match="WANDB_MODE"):
        plan_recipe(RECIPE, ["model=tiny", "tracking=wandb"])
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    assert started(tmp_path, "tracking=tensorboard")["dir"] == str(tmp_path / "tb" / "tiny-debug" / "run")
