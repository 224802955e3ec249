"""Recipe params -> the arguments every TRL config takes, and the peft config (each algorithm module adds its
own to build its TRL config: `algorithms.trainer_config`; a test checks every value gets through)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from halo_pipeline.training.distributed import strategy_args
from halo_pipeline.training.params import Settings, TrainingParams
from halo_pipeline.training.tracking import training_args


def device_args(backend: Any) -> dict[str, Any]:
    """TrainingArguments for the backend (a Backend): device, mixed precision."""
    if backend.is_cpu or backend.device == "cpu":
        return {"use_cpu": True, "bf16": False, "fp16": False}
    return {"use_cpu": False, "bf16": backend.dtype == "bfloat16", "fp16": backend.dtype == "float16"}


def peft_config(params: TrainingParams, task_type: str = "CAUSAL_LM") -> Any:
    if params.adapter == "none":
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=params.lora_r,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=params.target_modules,
        use_dora=params.adapter == "dora",
        use_rslora=params.adapter == "rslora",
        init_lora_weights="pissa_niter_4" if params.adapter == "pissa" else True,  # type: ignore[arg-type]
        task_type=task_type,
        bias="none",
    )


def common_args(params: TrainingParams, algo: Settings, out_dir: Path, tracking: dict[str, Any] | None = None) -> dict[str, Any]:
    args: dict[str, Any] = {
        "output_dir": str(out_dir),
        "learning_rate": algo.learning_rate,
        "num_train_epochs": algo.epochs,
        "max_steps": params.max_steps if params.max_steps is not None else -1,
        "per_device_train_batch_size": algo.batch_size,
        "gradient_accumulation_steps": params.grad_accum,
        "lr_scheduler_type": params.lr_scheduler,
        "warmup_steps": params.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        "weight_decay": params.weight_decay,
        "max_grad_norm": params.max_grad_norm,
        "seed": params.seed,
        "data_seed": params.seed,
        "logging_steps": params.logging_steps,
        "save_strategy": "steps",
        "save_steps": params.save_every,
        "save_total_limit": 2,
        **training_args(tracking),  # report_to and run_name from the run's `tracking` group (none: report_to="none")
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "activation_checkpointing": params.gradient_checkpointing,
        "include_num_input_tokens_seen": "all",
        **device_args(params.backend),
        **strategy_args(params),  # the `distributed` block: FSDP / DeepSpeed settings, an explicit mixed precision
    }
    return args
