"""GRPO's rewards on the tiny model with real TRL: several verifiers as separate weighted reward functions (each
one's mean logged and plotted), the groups that carried signal counted every step, and zero-variance groups
dropped from the loss (`zero_variance_groups: drop`); the recipe syntax checked at validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halo_pipeline.engine.step import Artifact
from helpers import REFERENCE, VARIED_REWARD, read_jsonl, run_kind, write_jsonl

GRPO = {"name": "grpo", "batch_size": 4, "num_generations": 4, "max_completion_length": 8, "learning_rate": 1e-3, "temperature": 2.0}


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    rows = [{"id": f"r{i}", "prompt": f"What is {i}+{i}?", "completion": f"{2 * i}", "reference": REFERENCE} for i in range(8)]
    return Artifact("sft_dataset", write_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", rows))


def params_for(**extra: object) -> object:
    from halo_pipeline.tasks import train as train_kind

    return train_kind.TrainParams.model_validate({"model": "tiny", "algorithm": GRPO, **extra})


def test_several_weighted_verifiers_train_and_each_mean_is_logged_and_plotted(tmp_path: Path, prompts: Artifact) -> None:
    from halo_pipeline.training.algorithms import trainer_config

    rewards = [
        {"verifier": VARIED_REWARD, "weight": 1.0},
        {"verifier": {"name": "regex_format", "pattern": "[aeiou]"}, "weight": 0.5},
        {"verifier": {**VARIED_REWARD, "name": "chrf"}, "weight": -0.25},  # the same verifier twice: told apart by name
    ]
    config = trainer_config(params_for(rewards=rewards, algorithm={**GRPO, "reward_scale": 2.0}), tmp_path)  # type: ignore[arg-type]
    assert config.reward_weights == [2.0, 1.0, -0.5]
    run_kind("train", {"model": "tiny", "algorithm": GRPO, "max_steps": 2, "rewards": rewards}, {"dataset": prompts}, tmp_path)
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert summary["weights_changed"] and summary["steps"] == 2
    rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "reward" in r]
    assert len(rows) == 2
    names = ("verifier_chrf", "verifier_regex_format", "verifier_chrf_3")
    for row in rows:
        means = [row[f"rewards/{n}/mean"] for n in names]
        assert all(0 <= m <= 1 for m in means) and means[0] == pytest.approx(means[2])  # chrF twice: one value
        assert row["reward"] == pytest.approx(means[0] + 0.5 * means[1] - 0.25 * means[2], abs=1e-5)
        assert row["signal_groups"] == 1 - row["frac_reward_zero_std"]  # one group of 4 per step: batch_size 4, num_generations 4
    from halo_pipeline.training.metrics import plot

    figure = tmp_path / "again.png"
    assert plot(rows, figure, "grpo") and figure.stat().st_size > (tmp_path / "curves.png").stat().st_size * 0.5


def test_groups_with_signal_are_counted_and_zero_variance_groups_dropped(tmp_path: Path) -> None:
    """Half the groups get one reward for every completion (no signal): `drop` takes their tokens out of the loss
    and of dapo's normalizer; `keep` leaves the batch as TRL made it; both count the groups with signal."""
    import trl
    from datasets import Dataset

    from halo_pipeline.training.algorithms.grpo import trainer_class
    from halo_pipeline.training.model_io import load

    def half_constant(completions: list, prompts: list, **_: object) -> list[float]:
        return [0.5 if "same" in str(p) else float(i % 2) for i, p in enumerate(prompts)]

    model, tokenizer = load(params_for())  # type: ignore[arg-type]
    dataset = Dataset.from_list([{"prompt": f"{kind} {i}"} for i in range(2) for kind in ("same", "varied")])
    args = trl.GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=6,
        use_cpu=True,
        bf16=False,
        report_to="none",
        seed=0,
        temperature=2.0,
    )
    batches = {}
    for mode in ("keep", "drop"):
        trainer = trainer_class()(
            model=model,
            args=args,
            processing_class=tokenizer,
            reward_funcs=[half_constant],
            train_dataset=dataset,
            zero_variance_groups=mode,
        )
        trainer.model.train()
        inputs = [{"prompt": "same 0"}] * 4 + [{"prompt": "varied 0"}] * 4
        batches[mode] = trainer._generate_and_score_completions(inputs)
        assert trainer._metrics["train"]["signal_groups"] == [1.0]  # one of the two groups carried signal
    keep, drop = batches["keep"], batches["drop"]
    assert keep["completion_mask"][:4].sum() > 0 and drop["completion_mask"][:4].sum() == 0  # the constant group: dropped
    assert (drop["completion_mask"][4:].sum(dim=1) > 0).all()  # the other group trains
    assert int(drop["num_items_in_batch"]) == int(drop["completion_mask"].sum())
    assert int(keep["num_items_in_batch"]) == int(keep["completion_mask"].sum())


def test_drop_trains_the_tiny_model_and_logs_signal_groups(tmp_path: Path) -> None:
    rows = [  # an empty reference: chrF 0 for every completion, a group without signal
        {"id": f"r{i}", "prompt": f"What is {i}+{i}?", "completion": "x", "reference": REFERENCE if i % 2 else ""} for i in range(8)
    ]
    data = Artifact("sft_dataset", write_jsonl(tmp_path / "data.jsonl", rows))
    node = {**GRPO, "batch_size": 8, "zero_variance_groups": "drop"}  # two groups a step: four steps, one epoch
    run_kind("train", {"model": "tiny", "algorithm": node, "max_steps": 4, "verifier": VARIED_REWARD}, {"dataset": data}, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    assert summary["weights_changed"] and summary["steps"] == 4
    logged = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "signal_groups" in r]
    assert len(logged) == 4 and sum(r["signal_groups"] for r in logged) <= 4  # the four prompts with an empty reference never
    for row in logged:  # TRL's own share of completions in zero-std groups says the same
        assert row["signal_groups"] == pytest.approx(2 * (1 - row["frac_reward_zero_std"]))


def test_rewards_are_checked_at_validation() -> None:
    from halo_pipeline.tasks import train as train_kind

    def problems(**extra: object) -> list:
        return train_kind.check(params_for(**extra))  # type: ignore[arg-type]

    assert problems(rewards=[{"verifier": "math", "weight": 2}]) == []  # rewards stand in for verifier
    bad = problems(rewards=[{"verifier": {"name": "math", "timeout": -1}}, {"verifier": "no_such"}])
    assert [key for key, _ in bad] == ["rewards.0.verifier.timeout", "rewards.1.verifier.name"]
    assert "did you mean" in bad[1][1] or "known verifiers" in bad[1][1]
    refused = train_kind.check(
        train_kind.TrainParams.model_validate({"model": "tiny", "algorithm": {"name": "sft"}, "rewards": [{"verifier": "math"}]})
    )
    assert refused[0][0] == "rewards" and "not sft" in refused[0][1]
    mlx = {"name": "mlx", "engine": "mlx", "device": "default", "dtype": "float16"}
    on_mlx = dict(problems(backend=mlx, algorithm={**GRPO, "zero_variance_groups": "drop"}, rewards=[{"verifier": "math"}]))
    assert "torch backend" in on_mlx["rewards"] and "torch backends" in on_mlx["algorithm.zero_variance_groups"]
    with pytest.raises(ValueError, match="weight"):
        params_for(rewards=[{"verifier": "math", "weight": "heavy"}])
