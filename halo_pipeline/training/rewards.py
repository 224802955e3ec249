"""A verifier as a reward function, the one GRPO calls on torch (TRL's reward_funcs) and on MLX (the worker's
mlx-lm-lora reward): light, so that the MLX worker imports the verifier it rewards with and nothing else."""

from __future__ import annotations

from typing import Any

from halo_pipeline.training import data


def reward_fn(spec: Any) -> Any:
    """A verifier as a TRL reward function (the task's own fields reach it as dataset columns)."""
    from halo_pipeline.verifiers import build_verifier

    verifier = build_verifier(spec)
    skip = {"prompts", "prompt", "completion_ids", "trainer_state", "log_extra", "log_metric"}

    def verifier_reward(completions: list[Any], **columns: Any) -> list[float]:
        samples = []
        for i, completion in enumerate(completions):
            task = {k: v[i] for k, v in columns.items() if k not in skip and isinstance(v, list) and len(v) == len(completions)}
            task["prompt"] = task.pop("task_prompt", "")
            samples.append({**task, "completion": data.completion_text(completion)})
        return [r.reward for r in verifier.verify_batch(samples)]

    verifier_reward.__name__ = f"verifier_{verifier.name}"  # TRL logs rewards under the function's name
    return verifier_reward
