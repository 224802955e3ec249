"""The `algorithm` config group, validated: one settings model per algorithm (unknown keys are errors)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust", "rpo", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "apo_zero", "apo_down")


class Common(BaseModel):
    model_config = ConfigDict(extra="forbid")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    epochs: float = Field(1, gt=0, description="Passes over the dataset (max_steps wins when set).")
    batch_size: int = Field(4, ge=1, description="Per-device batch size.")


class SFT(Common):
    name: Literal["sft"]
    completion_only_loss: bool = Field(True, description="Loss on completion tokens only (the chat template is always applied).")


class DPO(Common):
    name: Literal["dpo"]
    learning_rate: float = Field(5e-6, gt=0, description="Peak learning rate.")
    beta: float = Field(0.1, gt=0, description="Strength of the KL penalty toward the reference.")
    loss_type: Literal[DPO_LOSSES] = Field(  # type: ignore[valid-type]
        "sigmoid",
        description="sigmoid (DPO), ipo, hinge (SLiC), robust (cDPO, uses label_smoothing), rpo (DPO + NLL), or another TRL loss.",
    )
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Robust/cDPO: probability that a preference label is flipped.")
    rpo_alpha: float = Field(1.0, ge=0, description="rpo: weight of the NLL term on chosen completions.")


class GRPO(Common):
    name: Literal["grpo"]
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate.")
    num_generations: int = Field(4, ge=2, description="Completions per prompt (the group); batch_size must be a multiple.")
    beta: float = Field(0.04, ge=0, description="KL coefficient (0: no reference model).")
    epsilon: float = Field(0.2, gt=0, description="PPO-style clipping range.")
    temperature: float = Field(0.9, gt=0, le=2, description="Sampling temperature of the rollouts.")
    max_completion_length: int = Field(64, ge=1, description="Tokens per rollout.")
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="Normalize advantages by the group's (or batch's) std.")
    reward_scale: float = Field(1.0, gt=0, description="Multiplies the verifier's reward.")
    use_vllm: bool = Field(False, description="Generate rollouts with vLLM (TRL's use_vllm; CUDA only).")
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="colocate: vLLM inside each training rank; server: a `trl vllm-serve` process (its own environment)."
    )
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="colocate: the share of GPU memory vLLM may take.")
    vllm_server_base_url: str | None = Field(None, description="server: the `trl vllm-serve` address (default TRL's http://0.0.0.0:8000).")


class RAFT(Common):
    name: Literal["raft"]
    cycles: int = Field(2, ge=1, description="Generate-verify-train rounds.")
    samples_per_prompt: int = Field(4, ge=1, description="Completions sampled per prompt each cycle.")
    reward_threshold: float = Field(0.5, ge=0, le=1, description="Keep a prompt's best sample only if its reward reaches this (never 0).")
    temperature: float = Field(0.9, gt=0, le=2, description="Sampling temperature.")
    max_completion_length: int = Field(64, ge=1, description="Tokens per sample.")


class RM(Common):
    name: Literal["rm"]
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate.")
    center_rewards_coefficient: float | None = Field(None, ge=0, description="Pushes rewards toward zero mean (TRL's centering).")


Algorithm = Annotated[SFT | DPO | GRPO | RAFT | RM, Field(discriminator="name")]
ALGORITHMS = ("sft", "dpo", "grpo", "raft", "rm")
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Algorithm)


def parse(node: dict[str, Any]) -> SFT | DPO | GRPO | RAFT | RM:
    return _ADAPTER.validate_python(node)  # type: ignore[no-any-return]


# what each algorithm reads
INPUT_TYPES = {
    "sft": ("sft_dataset",),
    "dpo": ("preference_dataset",),
    "rm": ("preference_dataset",),
    "grpo": ("prompts", "sft_dataset"),
    "raft": ("prompts", "sft_dataset"),
}
