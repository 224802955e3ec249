"""algorithm=kto: Kahneman-Tversky optimization on unpaired samples labelled desirable or undesirable (TRL's
KTOConfig / KTOTrainer). Any verifier's samples are such data: a row's `label`, else its `verified`, else
`reward >= min_reward` decides. The undesirable samples must reach it: synthesize keeps them with
`keep_unverified: true`, and score's `min_score` filters on its quality score, of which the verifier's reward
is one component (`min_score: null` keeps every sample): docs/training.md#kto-on-a-verifiers-samples."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from halo_pipeline.training import data
from halo_pipeline.training.algorithms._base import Algorithm, Rows, Settings, TrainingParams


class KTO(Settings):
    name: Literal["kto"]
    learning_rate: float = Field(5e-6, gt=0, description="Peak learning rate.")
    batch_size: int = Field(4, ge=2, description="Per-device batch size (at least 2: KTO estimates its KL term within the batch).")
    beta: float = Field(0.1, gt=0, description="Strength of the KL penalty toward the reference.")
    desirable_weight: float = Field(1.0, gt=0, description="Weight of the desirable samples' loss (raise it when they are fewer).")
    undesirable_weight: float = Field(1.0, gt=0, description="Weight of the undesirable samples' loss.")
    min_reward: float = Field(
        0.5, ge=0, le=1, description="A row with neither `label` nor `verified` is desirable when its reward reaches this."
    )


def kto_config(algo: KTO, params: TrainingParams, args: dict[str, Any]) -> Any:
    import trl

    return trl.KTOConfig(
        **args,
        max_length=params.max_length,
        beta=algo.beta,
        desirable_weight=algo.desirable_weight,
        undesirable_weight=algo.undesirable_weight,
    )


def kto_trainer(algo: KTO, params: TrainingParams, rows: Rows, chat: bool, common: dict[str, Any]) -> Any:
    import trl
    from datasets import Dataset

    # KTOTrainer reads its data in order (its KL term pairs each sample with its batch neighbours): shuffled once,
    # with the step's seed, so a batch mixes desirable and undesirable samples however the dataset is sorted
    dataset = Dataset.from_list(data.labelled_rows(rows, chat, params.system_prompt, algo.min_reward)).shuffle(seed=params.seed)
    return trl.KTOTrainer(**common, train_dataset=dataset)


ALGORITHM = Algorithm(settings=KTO, inputs=("sft_dataset",), data="labelled", config=kto_config, trainer=kto_trainer)
