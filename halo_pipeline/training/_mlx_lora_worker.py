"""Runs one of mlx-lm-lora's trainers (DPO, ORPO, GRPO) in its own process, reporting each logged step as
a JSON line.

Usage: python -m halo_pipeline.training._mlx_lora_worker SPEC.json METRICS.jsonl

The adapter is made as mlx-lm's own LoRA trainer makes it (`linear_to_lora_layers`, its `adapter_config.json`),
so what the SFT path writes and what this one writes load, fuse and convert the same way; the training
itself is mlx-lm-lora's `train_dpo` / `train_orpo` / `train_grpo`, called with its own datasets and
argument classes. GRPO's reward is the recipe's verifier, through the same reward function the torch
GRPO uses (`training.rewards.reward_fn`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from halo_pipeline.training.worker_exit import exit_now

# mlx-lm-lora's name for each metric it reports -> the one our metrics.jsonl (and its curves) use
RENAMED = {
    "train_total_rewards_mean": "reward",
    "train_total_rewards_std": "reward_std",
    "train_kl": "kl",
    "train_accuracies": "rewards/accuracies",
    "train_margins": "rewards/margins",
    "train_chosen_reward": "rewards/chosen",
    "train_rejected_reward": "rewards/rejected",
}


def _cpu_device_info() -> None:
    """mlx-lm-lora's DPO/ORPO trainers set MLX's wired-memory limit from `device_info()`'s
    `max_recommended_working_set_size`, a Metal figure MLX's CPU build does not report: there it is
    given as 0 (no wired limit, which is what the CPU build has anyway)."""
    import mlx.core as mx

    info = mx.device_info()
    if "max_recommended_working_set_size" in info:
        return
    own = mx.device_info

    def device_info(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**own(*args, **kwargs), "max_recommended_working_set_size": 0}

    setattr(mx, "device_info", device_info)  # noqa: B010  (in this worker process only)


def no_progress_bar(trainer_module: Any) -> None:
    """The trainer's tqdm bar is redrawn every step into a pipe nobody shows (the train step draws its own progress
    from the reports): drawn no more. Its `tqdm.write` lines (each report, as text) still reach the step's log tail."""
    from tqdm import tqdm

    class Hidden(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})

    trainer_module.tqdm = Hidden


def report_row(info: dict[str, Any]) -> dict[str, Any]:
    """mlx-lm-lora's report of a logged step as a metrics.jsonl row (TRL's names: `reward`, `kl`,
    `rewards/accuracies`, `rewards/verifier_<name>/mean`)."""
    row: dict[str, Any] = {
        "step": int(info["iteration"]),
        "loss": float(info["train_loss"]),
        "learning_rate": float(info["learning_rate"]),
        "tokens": int(info["trained_tokens"]),
    }
    for key, value in info.items():
        if key in RENAMED:
            row[RENAMED[key]] = float(value)
        elif key.startswith("train_verifier_") and key.endswith(("_mean", "_std")):
            name, stat = key[len("train_") :].rsplit("_", 1)
            row[f"rewards/{name}/{stat}"] = float(value)
    return row


def preference_data(spec: dict[str, Any], tokenizer: Any) -> Any:
    from mlx_lm_lora.trainer.datasets import CacheDataset, DPODataset, ORPODataset

    rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in spec["rows"]]
    if spec["system"]:
        rows = [{**r, "system": spec["system"]} for r in rows]
    if spec["algorithm"] == "orpo":
        return CacheDataset(ORPODataset(rows, tokenizer, system_key="system"))
    return CacheDataset(DPODataset(rows, tokenizer, system_key="system"))


def prompt_data(spec: dict[str, Any], tokenizer: Any) -> list[tuple[Any, ...]]:
    """GRPO's examples as mlx-lm-lora's trainer takes them: (prompt tokens, answer tokens, prompt text, answer
    text, type); the type is the row's index, which the reward function turns back into the task's fields."""
    examples: list[tuple[Any, ...]] = []
    for i, row in enumerate(spec["rows"]):
        messages = ([{"role": "system", "content": spec["system"]}] if spec["system"] else []) + [
            {"role": "user", "content": row["task_prompt"]}
        ]
        tokens = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        examples.append((list(tokens), [], row["task_prompt"], "", i))
    return examples


def reward_function(spec: dict[str, Any]) -> Any:
    """The torch GRPO's reward function (the recipe's verifier), called the way mlx-lm-lora calls one."""
    from halo_pipeline.training.rewards import reward_fn

    verifier_reward = reward_fn(spec["verifier"])
    rows = spec["rows"]

    def reward(prompts: list[str], completions: list[str], answer: list[str], types: list[Any] | None = None) -> list[float]:
        tasks = [rows[int(t)] for t in types or []]
        columns = {key: [task.get(key) for task in tasks] for key in {k for task in tasks for k in task}}
        rewards: list[float] = verifier_reward(completions, **columns)
        return rewards

    reward.__name__ = verifier_reward.__name__  # mlx-lm-lora reports each reward under its function's name
    return reward


def main() -> None:
    from halo_pipeline.runtimes.mlx_blas import use_fast_blas

    use_fast_blas()  # before MLX is imported: its products on OpenBLAS rather than the wheel's reference BLAS
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.utils import linear_to_lora_layers, print_trainable_parameters
    from mlx_lm.utils import load, save_config
    from mlx_lm_lora.chat_template import ensure_chat_template

    spec_path, metrics_path = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(spec_path).read_text())
    settings, algorithm = spec["settings"], spec["algorithm"]

    metrics = open(metrics_path, "a", encoding="utf-8")  # noqa: SIM115  (open for the whole run, flushed each report)

    class Report(TrainingCallback):
        def on_train_loss_report(self, info: dict) -> None:
            row = report_row(info)
            line = json.dumps(row)
            metrics.write(line + "\n")
            metrics.flush()  # a killed run keeps every row reported so far
            print(f'{{"progress": {row["step"]}, "row": {line}}}', flush=True)

    _cpu_device_info()
    np.random.seed(spec["seed"])
    mx.random.seed(spec["seed"])
    loaded: Any = load(spec["model"])
    model, tokenizer = loaded[0], loaded[1]
    ensure_chat_template(tokenizer)  # mlx-lm-lora's datasets render through a chat template (its generic one if the model has none)
    model.freeze()
    adapter = spec["adapter"]  # as mlx-lm's LoRA trainer converts and records it (`mlx_lm fuse` reads this config)
    linear_to_lora_layers(model, adapter["num_layers"], adapter["lora_parameters"], use_dora=adapter["fine_tune_type"] == "dora")
    if spec.get("resume_adapter_file"):
        model.load_weights(spec["resume_adapter_file"], strict=False)
    print_trainable_parameters(model)
    adapter_path = Path(adapter["adapter_path"])
    adapter_path.mkdir(parents=True, exist_ok=True)
    save_config(dict(adapter), adapter_path / "adapter_config.json")
    adapter_file = adapter_path / "adapters.safetensors"
    reference = None
    if algorithm == "dpo" or (algorithm == "grpo" and settings["beta"] != 0):  # the adapter-free base, frozen
        reference = load(spec["model"])[0]
        reference.freeze()
    optimizer = optim.Adam(learning_rate=spec["learning_rate"])
    common = {
        "batch_size": spec["batch_size"],
        "iters": spec["iters"],
        "val_batches": 0,
        "steps_per_report": spec["steps_per_report"],
        "steps_per_eval": spec["iters"] + 1,
        "steps_per_save": spec["save_every"],
        "adapter_file": adapter_file,
        "max_seq_length": spec["max_seq_length"],
        "gradient_accumulation_steps": spec["grad_accum"],
    }
    if algorithm == "dpo":
        from mlx_lm_lora.trainer import dpo_trainer

        no_progress_bar(dpo_trainer)
        from mlx_lm_lora.trainer.dpo_trainer import DPOTrainingArgs, train_dpo

        dpo_args = DPOTrainingArgs(**common, beta=settings["beta"], loss_type=settings["loss_type"])
        data = preference_data(spec, tokenizer)
        train_dpo(model, reference, optimizer, data, args=dpo_args, training_callback=Report(), loss_type=settings["loss_type"])
    elif algorithm == "orpo":
        from mlx_lm_lora.trainer import orpo_trainer

        no_progress_bar(orpo_trainer)
        from mlx_lm_lora.trainer.orpo_trainer import ORPOTrainingArgs, train_orpo

        orpo_args = ORPOTrainingArgs(**common, beta=settings["beta"])
        train_orpo(model, optimizer, preference_data(spec, tokenizer), args=orpo_args, training_callback=Report())
    elif algorithm == "grpo":
        from mlx_lm_lora.trainer import grpo_trainer

        no_progress_bar(grpo_trainer)
        from mlx_lm_lora.trainer.grpo_trainer import GRPOTrainingArgs, train_grpo

        grpo_args = GRPOTrainingArgs(
            **common,
            group_size=settings["num_generations"],
            beta=settings["beta"],
            epsilon=settings["epsilon"],
            epsilon_high=settings["epsilon_high"],
            max_completion_length=settings["max_completion_length"],
            temperature=settings["temperature"],
            top_p=1.0,  # TRL's sampling: the whole distribution at the temperature
            top_k=0,
            grpo_loss_type=settings["loss_type"],
            reward_weights=[settings["reward_scale"]],
            importance_sampling_level=settings["importance_sampling_level"],
        )
        data = prompt_data(spec, tokenizer)
        rewards = [reward_function(spec)]
        train_grpo(
            model,
            reference,
            tokenizer,
            optimizer,
            data,
            reward_funcs=rewards,
            args=grpo_args,
            training_callback=Report(),
            end_answer_token="",
        )
    else:
        raise ValueError(f"backend=mlx: no mlx-lm-lora trainer for algorithm {algorithm}")


if __name__ == "__main__":
    main()
    exit_now()  # a failure above exits the usual way, with its traceback
