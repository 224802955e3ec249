"""algorithm=simpo: simple preference optimization on chosen/rejected pairs: the length-normalized log-likelihood
is the reward, with a target margin and no reference model (TRL's CPOConfig / CPOTrainer with
`loss_type="simpo"`, in `trl.experimental.cpo` as of TRL 1.16; cpo_alpha > 0 adds CPO's NLL term: CPO-SimPO)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from halo_pipeline.training import data
from halo_pipeline.training.algorithms._base import Algorithm, Rows, Settings, TrainingParams
from halo_pipeline.training.algorithms._experimental import experimental, on_tokenized_pairs


class SimPO(Settings):
    name: Literal["simpo"]
    learning_rate: float = Field(1e-6, gt=0, description="Peak learning rate.")
    beta: float = Field(2.0, gt=0, description="Scale of the length-normalized reward (the paper uses 2.0-2.5).")
    simpo_gamma: float = Field(1.0, ge=0, description="Target reward margin between chosen and rejected (the paper's gamma).")
    cpo_alpha: float = Field(0.0, ge=0, description="Weight of an NLL term on the chosen completion (0: pure SimPO; > 0: CPO-SimPO).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Probability that a preference label is flipped.")


def simpo_config(algo: SimPO, params: TrainingParams, args: dict[str, Any]) -> Any:
    (config,) = experimental("cpo", "CPOConfig")
    return config(
        **args,
        max_length=params.max_length,
        loss_type="simpo",
        beta=algo.beta,
        simpo_gamma=algo.simpo_gamma,
        cpo_alpha=algo.cpo_alpha,
        label_smoothing=algo.label_smoothing,
    )


def simpo_trainer(algo: SimPO, params: TrainingParams, rows: Rows, chat: bool, common: dict[str, Any]) -> Any:
    from datasets import Dataset

    (trainer,) = experimental("cpo", "CPOTrainer")
    pairs = data.preference_examples(rows, common["processing_class"], chat, params.system_prompt)  # the prompt as inference tokenizes it
    return on_tokenized_pairs(trainer)(**common, train_dataset=Dataset.from_list(pairs))


ALGORITHM = Algorithm(settings=SimPO, inputs=("preference_dataset",), data="preference", config=simpo_config, trainer=simpo_trainer)
