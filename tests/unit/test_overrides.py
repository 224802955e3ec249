"""Every documented key can be set as `key=value`, whether or not the recipe writes it; `+` stays for
keys nobody defines (docs/recipes.md, Overrides)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import FAKE_RECIPE, REPO, write
from halo_pipeline.engine.config import compose
from halo_pipeline.engine.errors import RecipeError
from halo_pipeline.engine.plan import build_plan, plan_recipe


def test_a_step_param_the_recipe_does_not_set_is_set_without_plus(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    composed = compose(recipe, ["steps.make.with.text=hello"])
    assert build_plan(composed).steps["make"].params.text == "hello"  # type: ignore[attr-defined]
    assert composed.overrides == ["+steps.make.with.text=hello"]  # what composed it, as the manifest records it


def test_a_key_nobody_defines_still_needs_plus(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    with pytest.raises(RecipeError) as err:
        compose(recipe, ["steps.make.with.colour=red"])
    (issue,) = err.value.issues
    assert "no step or group documents it" in issue.message and "+steps.make.with.colour=VALUE" in (issue.hint or "")


def test_a_field_of_another_group_option_names_that_option(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    with pytest.raises(RecipeError) as err:
        compose(recipe, ["algorithm.beta=0.2"])
    (issue,) = err.value.issues
    assert "'beta' is not a field of algorithm=sft; algorithm=dpo, algorithm=gkd, algorithm=grpo" in issue.message  # (and any later option)
    assert issue.message.endswith(" have it")


@pytest.fixture
def shipped(project: Path) -> Path:
    shutil.copytree(REPO / "recipes", project / "recipes", dirs_exist_ok=True)
    return project / "recipes"


def test_documented_train_params_and_algorithm_fields_are_plain_overrides(shipped: Path) -> None:
    """docs/training.md: `steps.train.with.lora_r=32`, `algorithm.beta=0.2` (on a recipe whose algorithm has a beta)."""
    plan = plan_recipe(shipped / "quickstart.yaml", ["model=tiny", "steps.train.with.lora_r=32", "steps.train.with.lora_dropout=0.1"])
    assert plan.steps["train"].params.lora_r == 32 and plan.steps["train"].params.lora_dropout == 0.1  # type: ignore[attr-defined]
    plan = plan_recipe(shipped / "grpo_code.yaml", ["model=tiny", "algorithm.beta=0.2", "algorithm.use_vllm=false"])
    assert plan.steps["train"].params.algorithm.beta == 0.2  # type: ignore[attr-defined]
    with pytest.raises(RecipeError) as err:  # sft has no beta: said so, with the algorithms that have one
        plan_recipe(shipped / "quickstart.yaml", ["model=tiny", "algorithm.beta=0.2"])
    assert "not a field of algorithm=sft" in err.value.format() and "algorithm=dpo" in err.value.format()


def test_replay_says_a_group_cannot_be_switched_and_how_to(project: Path) -> None:
    """`replay RUN quant=q4`: not "did you mean 'quant'?", but the run command that switches it, and the values to set."""
    import json

    run = project / "outputs/quickstart/run1"
    run.mkdir(parents=True)
    config = {"name": "quickstart", "seed": 0, "quant": {"name": "q8"}, "steps": {"convert": {"with": {"format": "gguf", "quant": "q8"}}}}
    manifest = {"schema_version": 1, "config": config, "groups": {"quant": "q8", "model": "tiny"}, "overrides": ["model=tiny"]}
    manifest["recipe"] = {"path": "recipes/quickstart.yaml", "base_dir": str(project / "recipes")}
    (run / "replay.json").write_text(json.dumps(manifest))
    with pytest.raises(RecipeError) as err:
        compose(run, ["quant=q4"])
    (issue,) = err.value.issues
    assert "group 'quant' is already applied (quant=q8)" in issue.message and "did you mean" not in err.value.format()
    assert "halo-pipeline run recipes/quickstart.yaml model=tiny quant=q4" in (issue.hint or "")
    assert "steps.convert.with.quant=q4" in (issue.hint or "")
    assert compose(run, ["steps.convert.with.quant=q4"]).config["steps"]["convert"]["with"]["quant"] == "q4"


def test_a_group_the_recipe_does_not_name_is_chosen_without_plus(shipped: Path) -> None:
    """docs/scale.md: `distributed=ddp` (no group of the recipe's defaults) is a plain choice, as any group's."""
    plan = plan_recipe(shipped / "grpo_code.yaml", ["model=tiny", "distributed=ddp", "steps.train.with.distributed=${distributed}"])
    assert plan.composed.choices["distributed"] == "ddp" and plan.steps["train"].params.distributed.strategy == "ddp"  # type: ignore[attr-defined]
    assert "+distributed=ddp" in plan.composed.overrides


def test_a_key_under_an_interpolation_names_the_key_to_set(shipped: Path) -> None:
    """`steps.train.with.algorithm.beta=0.2` where the recipe writes `algorithm: ${algorithm}`: set algorithm.beta."""
    with pytest.raises(RecipeError) as err:
        plan_recipe(shipped / "dpo_preference.yaml", ["model=tiny", "steps.train.with.algorithm.beta=0.2"])
    (issue,) = err.value.issues
    assert "steps.train.with.algorithm is `${algorithm}` in the recipe" in issue.message
    assert issue.hint == "set algorithm.beta=VALUE instead"
