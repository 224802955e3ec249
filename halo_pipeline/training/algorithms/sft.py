"""algorithm=sft: supervised fine-tuning on prompt/completion pairs (TRL's SFTConfig / SFTTrainer)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from halo_pipeline.training import data
from halo_pipeline.training.algorithms._base import Algorithm, Rows, Settings, TrainingParams


class SFT(Settings):
    name: Literal["sft"]
    completion_only_loss: bool = Field(True, description="Loss on completion tokens only (the chat template is always applied).")


def sft_config(algo: SFT, params: TrainingParams, args: dict[str, Any]) -> Any:
    import trl

    return trl.SFTConfig(**args, max_length=params.max_length, completion_only_loss=algo.completion_only_loss)


def sft_trainer(algo: SFT, params: TrainingParams, rows: Rows, chat: bool, common: dict[str, Any]) -> Any:
    import trl
    from datasets import Dataset

    examples = data.sft_examples(rows, common["processing_class"], chat, params.system_prompt)  # the prompt as inference tokenizes it
    return trl.SFTTrainer(**common, train_dataset=Dataset.from_list(examples))


ALGORITHM = Algorithm(settings=SFT, inputs=("sft_dataset",), data="sft", config=sft_config, trainer=sft_trainer)
