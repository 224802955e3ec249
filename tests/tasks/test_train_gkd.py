"""algorithm=gkd with real TRL: the tiny model distils from a teacher (the tiny model again) on-policy; the
teacher's settings reach TRL; a missing teacher, an unknown one, or the wrong data type are validate-time errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halo_pipeline.engine.step import Artifact
from helpers import read_jsonl, run_kind, write_jsonl

GKD = {"name": "gkd", "teacher": "tiny", "batch_size": 2, "learning_rate": 1e-3, "lmbda": 1.0, "max_new_tokens": 8}


def test_gkd_distils_the_tiny_model_on_policy_and_the_adapter_loads(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "prompt": f"What is {i}+{i}?", "completion": f"{2 * i}"} for i in range(4)]
    data = Artifact("sft_dataset", write_jsonl(tmp_path / "sft.jsonl", rows))
    outputs, _ = run_kind("train", {"model": "tiny", "algorithm": GKD, "max_steps": 2}, {"dataset": data}, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    assert summary["weights_changed"] and summary["steps"] == 2 and summary["final_loss"] is not None
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r] == [1, 2]
    provenance = json.loads((outputs["model"] / "halo_provenance.json").read_text())
    assert provenance["algorithm"]["name"] == "gkd" and provenance["algorithm"]["teacher"]["name"] == "tiny"
    from peft import AutoPeftModelForCausalLM

    assert any("lora" in n for n, _ in AutoPeftModelForCausalLM.from_pretrained(outputs["model"]).named_parameters())


def test_gkd_settings_reach_trl(tmp_path: Path) -> None:
    from halo_pipeline.tasks import train as train_kind
    from halo_pipeline.training.algorithms import trainer_config

    node = {**GKD, "lmbda": 0.3, "beta": 0.1, "temperature": 0.7, "max_new_tokens": 17, "seq_kd": True}
    config = trainer_config(train_kind.TrainParams.model_validate({"model": "tiny", "algorithm": node, "max_length": 99}), tmp_path)
    assert type(config).__name__ == "GKDConfig"
    assert (config.lmbda, config.beta, config.temperature, config.max_new_tokens, config.seq_kd, config.max_length) == (
        0.3,
        0.1,
        0.7,
        17,
        True,
        99,
    )
    assert config.use_cpu and not config.bf16


def test_gkd_without_a_teacher_or_with_an_unknown_one_is_refused() -> None:
    from halo_pipeline.tasks import train as train_kind

    with pytest.raises(ValueError, match="gkd distils from a teacher: set algorithm.teacher"):
        train_kind.TrainParams.model_validate({"model": "tiny", "algorithm": {"name": "gkd"}})
    params = train_kind.TrainParams.model_validate({"model": "tiny", "algorithm": {**GKD, "teacher": "/no/such/model"}})
    problems = dict(train_kind.check(params))
    assert "/no/such/model" in problems["algorithm.teacher"]


def test_gkd_on_preference_pairs_is_a_validate_time_error_naming_the_input() -> None:
    from halo_pipeline.engine.errors import RecipeError
    from halo_pipeline.engine.plan import plan_recipe

    recipe = str(Path(__file__).resolve().parents[2] / "recipes" / "dpo_preference.yaml")
    with pytest.raises(RecipeError) as err:
        plan_recipe(recipe, ["model=tiny", "algorithm=gkd", "algorithm.teacher=tiny"])
    (issue,) = err.value.issues
    assert issue.key == "steps.train.inputs.dataset"
    assert "is a preference_dataset, but 'train' input 'dataset' takes sft_dataset" in issue.message
    with pytest.raises(RecipeError) as err:
        plan_recipe(str(Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"), ["model=tiny", "algorithm=gkd"])
    assert any("set algorithm.teacher" in issue.message for issue in err.value.issues)
    plan_recipe(
        str(Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"), ["model=tiny", "algorithm=gkd", "algorithm.teacher=tiny"]
    )
