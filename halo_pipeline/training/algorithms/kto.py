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


def trainer_class() -> Any:
    """TRL's KTOTrainer taking samples already tokenized (`data.labelled_examples`: the prompt as inference
    tokenizes it, the completion on its own). KTOTrainer tokenizes the joined text and cuts the prompt where it
    diverges from the prompt's own tokens; given `prompt_ids` it keeps what follows its tokenization: the filter
    of prompts that fill `max_length`, and each batch's KL completions (the completions rotated by one)."""
    import trl

    class PretokenizedKTOTrainer(trl.KTOTrainer):
        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            if "prompt_ids" not in dataset.column_names:
                return trl.KTOTrainer._prepare_dataset(self, dataset, processing_class, args, dataset_name)
            if args.max_length is not None:
                dataset = dataset.filter(lambda example: len(example["prompt_ids"]) < args.max_length)
            if self.calculate_KL:

                def add_kl_completion_ids(examples: dict[str, Any]) -> dict[str, Any]:
                    examples["KL_completion_ids"] = [examples["completion_ids"][-1]] + examples["completion_ids"][:-1]
                    return examples

                dataset = dataset.map(add_kl_completion_ids, batched=True, batch_size=args.per_device_train_batch_size)
            return dataset

    return PretokenizedKTOTrainer


def kto_trainer(algo: KTO, params: TrainingParams, rows: Rows, chat: bool, common: dict[str, Any]) -> Any:
    from datasets import Dataset

    # KTOTrainer reads its data in order (its KL term pairs each sample with its batch neighbours): shuffled once,
    # with the step's seed, so a batch mixes desirable and undesirable samples however the dataset is sorted
    samples = data.labelled_examples(rows, common["processing_class"], chat, params.system_prompt, algo.min_reward)
    return trainer_class()(**common, train_dataset=Dataset.from_list(samples).shuffle(seed=params.seed))


ALGORITHM = Algorithm(settings=KTO, inputs=("sft_dataset",), data="labelled", config=kto_config, trainer=kto_trainer)
