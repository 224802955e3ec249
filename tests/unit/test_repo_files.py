"""Every recipe and config file in the repository is valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from halo_pipeline.engine.config import compose, group_options
from halo_pipeline.engine.plan import build_plan

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
GROUPS = ["backend", "algorithm", "verifier", "quant", "model", "runner"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(recipe: Path) -> None:
    first_line = recipe.read_text().splitlines()[0]
    assert first_line.startswith(f"# recipes/{recipe.name}") and "halo-pipeline run" in first_line  # the command that runs it
    plan = build_plan(compose(recipe, []))
    assert plan.steps


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes(group: str) -> None:
    options = group_options(group)
    assert options, group
    recipe = REPO / "recipes" / "grpo_code.yaml"
    for option in options:
        data = yaml.safe_load((REPO / "conf" / group / f"{option}.yaml").read_text())
        assert data["name"] == option  # one name everywhere: file name = choice = name
        composed = compose(recipe, [f"{group}={option}"])
        assert composed.config[group]["name"] == option


def test_step_reference_in_docs_is_current() -> None:
    from halo_pipeline.views.reference import render_steps

    assert (REPO / "docs/steps.md").read_text() == render_steps(markdown=True) + "\n", (
        "regenerate: halo-pipeline steps --markdown > docs/steps.md"
    )


def test_an_algorithm_option_names_its_module_and_the_module_holds_the_defaults() -> None:
    """One source: an algorithm's settings and defaults are its module's; its YAML file only names it."""
    from halo_pipeline.training.algorithms import REGISTRY

    files = {path.stem: yaml.safe_load(path.read_text()) for path in (REPO / "conf" / "algorithm").glob("*.yaml")}
    assert set(files) == set(REGISTRY)
    assert all(data == {"name": name} for name, data in files.items()), files
