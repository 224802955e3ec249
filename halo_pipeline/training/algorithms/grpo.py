"""algorithm=grpo: group-relative policy optimization, rewarded by the recipe's verifier (TRL's GRPOConfig /
GRPOTrainer). Its variants are TRL's own options: `loss_type` grpo | bnpo | dr_grpo | dapo (TRL's default),
`importance_sampling_level: sequence` (GSPO), `epsilon_high` (DAPO's clip-higher), `mask_truncated_completions`,
`num_iterations` (updates per generated batch). The reward is the recipe's verifier, or several (`rewards:` in the
train step), each a TRL reward function of its own with its weight; `zero_variance_groups: drop` leaves groups
whose rewards are all equal out of the loss (DAPO's dynamic sampling, by filtering), and the number of groups that
carried signal is logged every step (`signal_groups`)."""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import Field

from halo_pipeline.training import data
from halo_pipeline.training.algorithms._base import Algorithm, Rows, Settings, TrainingParams
from halo_pipeline.training.gpu import vllm_args
from halo_pipeline.training.rewards import reward_fn


class GRPO(Settings):
    name: Literal["grpo"]
    learning_rate: float = Field(1e-5, gt=0, description="Peak learning rate.")
    num_generations: int = Field(4, ge=2, description="Completions per prompt (the group); batch_size must be a multiple.")
    beta: float = Field(0.04, ge=0, description="KL coefficient (0: no reference model).")
    epsilon: float = Field(0.2, gt=0, description="PPO-style clipping range.")
    temperature: float = Field(0.9, gt=0, le=2, description="Sampling temperature of the rollouts.")
    max_completion_length: int = Field(64, ge=1, description="Tokens per rollout.")
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="Normalize advantages by the group's (or batch's) std.")
    reward_scale: float = Field(1.0, gt=0, description="Multiplies the verifier's reward.")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field(
        "dapo",
        description="How token losses are aggregated: grpo (per sequence length), bnpo (active tokens of the local batch), "
        "dr_grpo (a constant: Dr. GRPO), dapo (active tokens of the global batch: TRL's default).",
    )
    importance_sampling_level: Literal["token", "sequence"] = Field(
        "token", description="Importance ratios per token, or one per sequence (sequence: GSPO)."
    )
    epsilon_high: float | None = Field(None, gt=0, description="Upper clipping bound (DAPO's clip-higher; default: epsilon).")
    mask_truncated_completions: bool = Field(False, description="Leave completions cut at max_completion_length out of the loss (DAPO).")
    num_iterations: int = Field(1, ge=1, description="Optimizer passes over each generated batch (the paper's mu).")
    zero_variance_groups: Literal["keep", "drop"] = Field(
        "keep",
        description="Groups whose rewards are all equal carry no signal: keep them (TRL's way: their tokens still count "
        "in the loss's normalizer and KL term), or drop them from the loss (DAPO's dynamic sampling, filtering).",
    )
    use_vllm: bool = Field(False, description="Generate rollouts with vLLM (TRL's use_vllm; CUDA only).")
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="colocate: vLLM inside each training rank; server: a `trl vllm-serve` process (its own environment)."
    )
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="colocate: the share of GPU memory vLLM may take.")
    vllm_server_base_url: str | None = Field(None, description="server: the `trl vllm-serve` address (default TRL's http://0.0.0.0:8000).")


def grpo_config(algo: GRPO, params: TrainingParams, args: dict[str, Any]) -> Any:
    import trl

    return trl.GRPOConfig(
        **args,
        num_generations=algo.num_generations,
        beta=algo.beta,
        epsilon=algo.epsilon,
        temperature=algo.temperature,
        max_completion_length=algo.max_completion_length,
        scale_rewards=algo.scale_rewards,
        reward_weights=[weight * algo.reward_scale for _, weight in rewards(params)],
        loss_type=algo.loss_type,
        importance_sampling_level=algo.importance_sampling_level,
        epsilon_high=algo.epsilon_high,
        mask_truncated_completions=algo.mask_truncated_completions,
        num_iterations=algo.num_iterations,
        log_completions=False,
        **vllm_args(algo),  # rollouts by vLLM when use_vllm (GPU)
    )


def grpo_trainer(algo: GRPO, params: TrainingParams, rows: Rows, chat: bool, common: dict[str, Any]) -> Any:
    from datasets import Dataset

    dataset = Dataset.from_list(data.prompt_rows(rows, chat, params.system_prompt))
    funcs: list[Any] = []
    seen: set[str] = set()
    for spec, _ in rewards(params):
        fn = reward_fn(spec)
        if fn.__name__ in seen:  # TRL logs each function's mean under its name: two of one verifier are told apart
            fn.__name__ = f"{fn.__name__}_{len(funcs) + 1}"
        seen.add(fn.__name__)
        funcs.append(fn)
    return trainer_class()(**common, train_dataset=dataset, reward_funcs=funcs, zero_variance_groups=algo.zero_variance_groups)


def rewards(params: TrainingParams) -> list[tuple[Any, float]]:
    """(verifier spec, weight) of each reward function: the train step's `rewards`, else its `verifier` alone."""
    if params.rewards:
        return [(r.verifier, r.weight) for r in params.rewards]
    return [(params.verifier, 1.0)]


@functools.cache
def trainer_class() -> Any:
    """TRL's GRPOTrainer, counting the groups that carry signal (`signal_groups`, every step) and, with
    `zero_variance_groups: drop`, leaving the others out of the loss."""
    import torch
    import trl
    from trl.trainer.utils import nanstd

    class GRPOTrainer(trl.GRPOTrainer):
        def __init__(self, *args: Any, zero_variance_groups: str = "keep", **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.zero_variance_groups = zero_variance_groups
            self.last_rewards: Any = None

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            self.last_rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            return self.last_rewards  # every rank's, gathered: (completions, reward functions)

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            mode = "train" if self.model.training else "eval"
            size = self.num_generations if mode == "train" else self.num_generations_eval
            weighted = (self.last_rewards * self.reward_weights.to(self.last_rewards.device).unsqueeze(0)).nansum(dim=1)
            std = nanstd(weighted.view(-1, size), dim=1) if size > 1 else torch.zeros(len(weighted))
            signal = torch.nan_to_num(std, nan=0.0) > 1e-8  # TRL's own test of a zero std (isclose to 0)
            self._metrics[mode]["signal_groups"].append(float(signal.sum().item()))
            if self.zero_variance_groups == "drop" and mode == "train":
                here = slice(self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs))
                keep = signal.repeat_interleave(size)[here].to(output["completion_mask"].device)
                output["completion_mask"] = output["completion_mask"] * keep.unsqueeze(1).to(output["completion_mask"].dtype)
                mask = output["completion_mask"] * output["tool_mask"] if "tool_mask" in output else output["completion_mask"]
                output["num_items_in_batch"] = self.accelerator.gather(mask.sum()).sum()  # the normalizer of dapo's loss
            return output

    return GRPOTrainer


def grpo_batch(algo: GRPO, params: TrainingParams) -> str | None:
    ranks = params.distributed.num_processes  # TRL's generation batch: per-device batch x ranks x accumulation
    if (algo.batch_size * ranks * params.grad_accum) % algo.num_generations == 0:
        return None
    across = f" x {ranks} ranks" if ranks > 1 else ""
    return (
        f"grpo: batch_size x grad_accum{across} ({algo.batch_size} x {params.grad_accum}{across and f' x {ranks}'}) must be a "
        f"multiple of num_generations ({algo.num_generations}); e.g. algorithm.batch_size={algo.num_generations}"
    )


ALGORITHM = Algorithm(
    settings=GRPO,
    inputs=("prompts", "sft_dataset"),
    data="prompts",
    config=grpo_config,
    trainer=grpo_trainer,
    verifier=True,
    check=grpo_batch,
)
