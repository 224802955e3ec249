"""algorithm=orpo: odds-ratio preference optimization on chosen/rejected pairs: SFT on the chosen completion plus
a log-odds-ratio term against the rejected one, in one stage and with no reference model (TRL's ORPOConfig /
ORPOTrainer, in `trl.experimental.orpo` as of TRL 1.16)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from halo_pipeline.training import data
from halo_pipeline.training.algorithms._base import Algorithm, Rows, Settings, TrainingParams
from halo_pipeline.training.algorithms._experimental import experimental, on_tokenized_pairs


class ORPO(Settings):
    name: Literal["orpo"]
    learning_rate: float = Field(8e-6, gt=0, description="Peak learning rate.")
    beta: float = Field(0.1, gt=0, description="Weight of the odds-ratio term against the SFT loss (the paper's lambda).")


def orpo_config(algo: ORPO, params: TrainingParams, args: dict[str, Any]) -> Any:
    (config,) = experimental("orpo", "ORPOConfig")
    return config(**args, max_length=params.max_length, beta=algo.beta)


def orpo_trainer(algo: ORPO, params: TrainingParams, rows: Rows, chat: bool, common: dict[str, Any]) -> Any:
    from datasets import Dataset

    (trainer,) = experimental("orpo", "ORPOTrainer")
    pairs = data.preference_examples(rows, common["processing_class"], chat, params.system_prompt)  # the prompt as inference tokenizes it
    return on_tokenized_pairs(trainer)(**common, train_dataset=Dataset.from_list(pairs))


ALGORITHM = Algorithm(settings=ORPO, inputs=("preference_dataset",), data="preference", config=orpo_config, trainer=orpo_trainer)
