"""SFT with MLX: mlx-lm's own LoRA trainer, run in a subprocess (`_mlx_worker`) so MLX's runtime
stays out of the pipeline process; each logged step lands in metrics.jsonl."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import yaml

from halo_pipeline.training.metrics import Pace
from halo_pipeline.training.params import TrainingParams


def train_mlx(params: TrainingParams, rows: list[dict[str, Any]], ctx: Any) -> dict[str, Any]:
    from halo_pipeline.runtimes.catalog import fingerprint, resolve

    algo = params.algorithm
    data_dir = ctx.path("mlx_data")
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"prompt": str(r["prompt"]), "completion": str(r["completion"])}) for r in rows]
    (data_dir / "train.jsonl").write_text("\n".join(lines) + "\n")
    (data_dir / "valid.jsonl").write_text("\n".join(lines[: max(1, min(8, len(lines)))]) + "\n")
    iters = params.max_steps or max(1, int(algo.epochs * len(rows) / algo.batch_size))
    adapter_dir = ctx.path("model")
    resume = adapter_dir / "adapters.safetensors"
    config = {
        "model": str(resolve(params.model)),
        "train": True,
        "data": str(data_dir),
        "fine_tune_type": params.adapter,
        "batch_size": min(algo.batch_size, len(rows)),
        "iters": iters,
        "learning_rate": algo.learning_rate,
        "num_layers": -1,
        "grad_accumulation_steps": params.grad_accum,
        "steps_per_report": params.logging_steps,
        "steps_per_eval": max(iters, 1) + 1,
        "val_batches": 1,
        "save_every": params.save_every,
        "adapter_path": str(adapter_dir),
        "max_seq_length": params.max_length,
        "mask_prompt": getattr(algo, "completion_only_loss", True),
        "seed": params.seed,
        "lora_parameters": {"rank": params.lora_r, "scale": params.lora_alpha / params.lora_r, "dropout": params.lora_dropout},
    }
    if resume.is_file():
        config["resume_adapter_file"] = str(resume)  # weights only: mlx-lm does not checkpoint its optimizer
    config_path = ctx.path("mlx_lora.yaml")
    config_path.write_text(yaml.safe_dump(config))
    metrics_path = ctx.path("metrics.jsonl")
    started = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "halo_pipeline.training._mlx_worker", str(config_path), str(metrics_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    tail: list[str] = []
    pace = Pace(ctx.log, ctx.on_progress)
    pace.begin(0)
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-20:]
        if line.startswith('{"progress"'):
            report = json.loads(line)
            pace.logged(report["progress"], iters, report.get("row", {}))
            pace.step(report["progress"], iters)
    if proc.wait() != 0:
        raise RuntimeError("mlx-lm LoRA training failed:\n" + "\n".join(tail))
    from halo_pipeline.training.metrics import read

    logged = read(metrics_path)
    losses = [r["loss"] for r in logged]
    tokens = logged[-1]["tokens"] if logged else 0
    (adapter_dir / "halo_provenance.json").write_text(
        json.dumps(
            {
                "base": params.model.model_dump(exclude_none=True),
                "base_fingerprint": fingerprint(params.model),
                "algorithm": algo.model_dump(),
                "adapter": params.adapter,
                "kind": "adapter",
                "format": "mlx",
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
    weights = adapter_dir / "adapters.safetensors"
    return {
        "steps": iters,
        "final_loss": losses[-1] if losses else None,
        "weights_changed": _mlx_changed(weights),
        "tokens": tokens,
        "train_s": round(time.time() - started, 3),
    }


def _mlx_changed(weights: Any) -> bool:
    """LoRA B matrices start at zero: any non-zero one means training moved the weights."""
    import mlx.core as mx

    arrays: Any = mx.load(str(weights))
    return any(bool(mx.any(v != 0).item()) for k, v in arrays.items() if k.endswith("lora_b"))
