"""algorithm=rm: a Bradley-Terry reward model trained on preference pairs (TRL's RewardConfig / RewardTrainer),
saved as its LoRA adapter with the score head (merged into the base where `verifier=reward_model` loads it)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from halo_pipeline.training import data
from halo_pipeline.training.algorithms._base import Algorithm, Rows, Settings, TrainingParams


class RM(Settings):
    name: Literal["rm"]
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate.")
    center_rewards_coefficient: float | None = Field(None, ge=0, description="Pushes rewards toward zero mean (TRL's centering).")


def rm_config(algo: RM, params: TrainingParams, args: dict[str, Any]) -> Any:
    import trl

    return trl.RewardConfig(**args, max_length=params.max_length, center_rewards_coefficient=algo.center_rewards_coefficient)


def rm_trainer(algo: RM, params: TrainingParams, rows: Rows, chat: bool, common: dict[str, Any]) -> Any:
    import trl
    from datasets import Dataset

    pairs = data.reward_examples(rows, common["processing_class"], chat, params.system_prompt)  # the prompt as inference tokenizes it
    return trl.RewardTrainer(**common, train_dataset=Dataset.from_list(pairs))


ALGORITHM = Algorithm(
    settings=RM, inputs=("preference_dataset",), data="preference", config=rm_config, trainer=rm_trainer, reward_model=True, probe=False
)
