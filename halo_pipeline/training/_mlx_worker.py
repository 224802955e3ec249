"""Runs mlx-lm's LoRA trainer in its own process, reporting each logged step as a JSON line.

Usage: python -m halo_pipeline.training._mlx_worker CONFIG.yaml METRICS.jsonl

Same steps as `mlx_lm lora -c CONFIG` (load, datasets, train_model) but with a TrainingCallback
that appends {step, loss, learning_rate, tokens} to METRICS instead of the colored console table.
"""

from __future__ import annotations

import json
import sys
import types
from typing import Any

import numpy as np
import yaml

from halo_pipeline.training.worker_exit import exit_now


def main() -> None:
    from halo_pipeline.runtimes.mlx_blas import use_fast_blas

    use_fast_blas()  # before MLX is imported: its products on OpenBLAS rather than the wheel's reference BLAS
    from mlx_lm.lora import CONFIG_DEFAULTS, train_model
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.datasets import load_dataset
    from mlx_lm.utils import load

    config_path, metrics_path = sys.argv[1], sys.argv[2]
    with open(config_path, encoding="utf-8") as f:
        args = types.SimpleNamespace(**{**CONFIG_DEFAULTS, **yaml.safe_load(f)})

    class Report(TrainingCallback):
        def on_train_loss_report(self, info: dict) -> None:
            row = {
                "step": int(info["iteration"]),
                "loss": float(info["train_loss"]),
                "learning_rate": float(info["learning_rate"]),
                "tokens": int(info["trained_tokens"]),
            }
            with open(metrics_path, "a", encoding="utf-8") as out:
                out.write(json.dumps(row) + "\n")
            print(json.dumps({"progress": row["step"], "row": row}), flush=True)

    np.random.seed(args.seed)
    loaded: Any = load(args.model)
    model, tokenizer = loaded[0], loaded[1]
    train_set, valid_set, _ = load_dataset(args, tokenizer)
    train_model(args, model, train_set, valid_set, Report())


if __name__ == "__main__":
    main()
    exit_now()  # a failure above exits the usual way, with its traceback
