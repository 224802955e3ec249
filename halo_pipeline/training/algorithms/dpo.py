"""algorithm=dpo: direct preference optimization on chosen/rejected pairs (TRL's DPOConfig / DPOTrainer); the
adapter-free base is the reference."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from halo_pipeline.training import data
from halo_pipeline.training.algorithms._base import Algorithm, Rows, Settings, TrainingParams

LOSSES = ("sigmoid", "ipo", "hinge", "robust", "rpo", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "apo_zero", "apo_down")


class DPO(Settings):
    name: Literal["dpo"]
    learning_rate: float = Field(5e-6, gt=0, description="Peak learning rate.")
    beta: float = Field(0.1, gt=0, description="Strength of the KL penalty toward the reference.")
    loss_type: Literal[LOSSES] = Field(  # type: ignore[valid-type]
        "sigmoid",
        description="sigmoid (DPO), ipo, hinge (SLiC), robust (cDPO, uses label_smoothing), rpo (DPO + NLL), or another TRL loss.",
    )
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Robust/cDPO: probability that a preference label is flipped.")
    rpo_alpha: float = Field(1.0, ge=0, description="rpo: weight of the NLL term on chosen completions.")


def dpo_config(algo: DPO, params: TrainingParams, args: dict[str, Any]) -> Any:
    import trl

    loss, weights = [algo.loss_type], None
    if algo.loss_type == "rpo":  # RPO = DPO + an NLL term on the chosen completion
        loss, weights = ["sigmoid", "sft"], [1.0, algo.rpo_alpha]
    return trl.DPOConfig(
        **args, max_length=params.max_length, beta=algo.beta, loss_type=loss, loss_weights=weights, label_smoothing=algo.label_smoothing
    )


def trainer_class() -> Any:
    """TRL's DPOTrainer taking pairs already tokenized (`data.preference_examples`: the prompt as inference
    tokenizes it, each side on its own). DPOTrainer tokenizes the joined text and cuts the prompt where it
    diverges from the prompt's own tokens; given `prompt_ids` it keeps only its filter of pairs whose prompt
    alone fills `max_length` (the collator would truncate every completion token away)."""
    import trl

    class PretokenizedDPOTrainer(trl.DPOTrainer):
        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            if "prompt_ids" not in dataset.column_names:
                return trl.DPOTrainer._prepare_dataset(self, dataset, processing_class, args, dataset_name)
            if args.max_length is not None and args.truncation_mode == "keep_start":
                dataset = dataset.filter(lambda example: len(example["prompt_ids"]) < args.max_length)
            return dataset

    return PretokenizedDPOTrainer


def dpo_trainer(algo: DPO, params: TrainingParams, rows: Rows, chat: bool, common: dict[str, Any]) -> Any:
    from datasets import Dataset

    pairs = data.preference_examples(rows, common["processing_class"], chat, params.system_prompt)  # the prompt as inference tokenizes it
    return trainer_class()(**common, train_dataset=Dataset.from_list(pairs))


ALGORITHM = Algorithm(settings=DPO, inputs=("preference_dataset",), data="preference", config=dpo_config, trainer=dpo_trainer)
