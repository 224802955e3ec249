"""algorithm=gkd: on-policy distillation from a teacher (generalized knowledge distillation: TRL's GKDConfig /
GKDTrainer, in `trl.experimental.gkd` as of TRL 1.16). On a share `lmbda` of the batches the student writes its
own completions to the prompts; on the others it reads the dataset's; either way it learns the teacher's
next-token distribution over them (a generalized Jensen-Shannon divergence, `beta` between forward and reverse
KL). `teacher` is any model the runtimes load (a catalog name, an HF directory, a GGUF file, a hub id) that shares
the student's vocabulary."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from halo_pipeline.engine.groups import ModelRef
from halo_pipeline.training import data
from halo_pipeline.training.algorithms._base import Algorithm, Rows, Settings, TrainingParams
from halo_pipeline.training.algorithms._experimental import experimental


class GKD(Settings):
    name: Literal["gkd"]
    teacher: ModelRef | None = Field(
        None, description="The teacher: a catalog name, model directory, .gguf file or hub id (its vocabulary the student's)."
    )
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate.")
    lmbda: float = Field(0.5, ge=0, le=1, description="Share of batches on which the student generates its own completions (on-policy).")
    beta: float = Field(0.5, ge=0, le=1, description="Generalized JSD: 0 is forward KL (teacher to student), 1 reverse KL.")
    temperature: float = Field(0.9, gt=0, le=2, description="Sampling temperature of the student's completions (and the divergence).")
    max_new_tokens: int = Field(128, ge=1, description="Tokens per on-policy completion.")
    seq_kd: bool = Field(False, description="On the other batches, train on the teacher's own completions (sequence-level KD).")


def gkd_config(algo: GKD, params: TrainingParams, args: dict[str, Any]) -> Any:
    (config,) = experimental("gkd", "GKDConfig")
    return config(
        **args,
        max_length=params.max_length,
        lmbda=algo.lmbda,
        beta=algo.beta,
        temperature=algo.temperature,
        max_new_tokens=algo.max_new_tokens,
        seq_kd=algo.seq_kd,
    )


def gkd_trainer(algo: GKD, params: TrainingParams, rows: Rows, chat: bool, common: dict[str, Any]) -> Any:
    from datasets import Dataset

    if not chat:
        raise ValueError(
            f"gkd trains through the chat template (TRL's GKD reads conversations), and model {params.model.name} has none "
            "(or use_chat_template is false): use a model with a chat template"
        )
    (trainer,) = experimental("gkd", "GKDTrainer")
    examples = [{"messages": row["messages"]} if row.get("messages") else conversation(row, params.system_prompt) for row in rows]
    return trainer(**common, teacher_model=load_teacher(algo, params), train_dataset=Dataset.from_list(examples))


def conversation(row: dict[str, Any], system: str | None) -> dict[str, Any]:
    """A prompt/completion row as the conversation GKD's collator reads: the prompt its user turn, the completion
    the assistant's (the turn the student writes itself on on-policy batches)."""
    return {"messages": data.text_row(row, True, system)["prompt"] + data.text_row(row, True, system)["completion"]}


def load_teacher(algo: GKD, params: TrainingParams) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from halo_pipeline.runtimes.catalog import resolve

    assert algo.teacher is not None  # checked with the params
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if params.backend.attention:
        kwargs["attn_implementation"] = params.backend.attention
    return AutoModelForCausalLM.from_pretrained(resolve(algo.teacher), **kwargs)


def needs_teacher(algo: GKD, params: TrainingParams) -> str | None:
    if algo.teacher is None:
        return "gkd distils from a teacher: set algorithm.teacher to a catalog name or a model path (e.g. algorithm.teacher=tiny)"
    return None


ALGORITHM = Algorithm(settings=GKD, inputs=("sft_dataset",), data="sft", config=gkd_config, trainer=gkd_trainer, check=needs_teacher)
