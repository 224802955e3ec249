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


def dpo_trainer(algo: DPO, params: TrainingParams, rows: Rows, chat: bool, common: dict[str, Any]) -> Any:
    import trl
    from datasets import Dataset

    return trl.DPOTrainer(**common, train_dataset=Dataset.from_list(data.preference_rows(rows, chat, params.system_prompt)))


ALGORITHM = Algorithm(settings=DPO, inputs=("preference_dataset",), data="preference", config=dpo_config, trainer=dpo_trainer)
