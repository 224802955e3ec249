"""Training with MLX, in a subprocess so MLX's runtime stays out of the pipeline process: sft with mlx-lm's
own LoRA trainer (`_mlx_worker`), dpo, orpo and grpo with mlx-lm-lora's trainers (`_mlx_lora_worker`, GRPO
rewarded by the recipe's verifier). Both write the same adapter (mlx-lm's `adapters.safetensors` and
`adapter_config.json`); each logged step lands in metrics.jsonl."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from halo_pipeline.training.metrics import Pace
from halo_pipeline.training.params import TrainingParams

ALGORITHMS = ("sft", "dpo", "orpo", "grpo")  # what backend=mlx trains: mlx-lm (sft), mlx-lm-lora (the others)
DPO_LOSSES = ("sigmoid", "hinge", "ipo")  # mlx-lm-lora's DPO losses that are TRL's too
GRPO_LOSSES = {"grpo": "grpo", "bnpo": "bnpo", "dr_grpo": "dr_grpo", "dapo": "bnpo"}  # dapo: bnpo in one process, one micro-batch


def problems(params: TrainingParams) -> list[tuple[str, str]]:
    """What backend=mlx cannot train of these params (validate time: nothing heavy imported)."""
    algo: Any = params.algorithm
    out: list[tuple[str, str]] = []
    if algo.name not in ALGORITHMS:
        out.append(
            (
                "algorithm",
                f"backend=mlx trains {', '.join(ALGORITHMS)} (mlx-lm, mlx-lm-lora); algorithm={algo.name} needs a torch backend "
                "(cpu/cuda/rocm/mps)",
            )
        )
    if params.adapter not in ("lora", "dora"):
        out.append(("adapter", f"backend=mlx supports adapter lora or dora, not {params.adapter}"))
    if algo.name == "dpo" and algo.loss_type not in DPO_LOSSES:
        out.append(("algorithm.loss_type", f"backend=mlx (mlx-lm-lora) has DPO losses {', '.join(DPO_LOSSES)}, not {algo.loss_type}"))
    if algo.name == "grpo":
        unsupported = {
            "scale_rewards": (algo.scale_rewards != "group", "group"),
            "mask_truncated_completions": (algo.mask_truncated_completions, "false"),
            "num_iterations": (algo.num_iterations != 1, "1"),
            "use_vllm": (algo.use_vllm, "false"),
        }
        for key, (bad, supported) in unsupported.items():
            if bad:
                out.append((f"algorithm.{key}", f"backend=mlx (mlx-lm-lora's GRPO) supports algorithm.{key}={supported} only"))
        if algo.loss_type == "dapo" and params.grad_accum > 1:
            out.append(
                (
                    "algorithm.loss_type",
                    "backend=mlx runs loss_type dapo as bnpo, the same within one micro-batch: with grad_accum > 1 "
                    "use loss_type bnpo, grpo or dr_grpo, or grad_accum=1",
                )
            )
    return out


def train_mlx(params: TrainingParams, rows: list[dict[str, Any]], ctx: Any, init: Path | None = None) -> dict[str, Any]:
    """Train in a worker process; `init`: an MLX adapter (mlx-lm's) to continue, with its own LoRA settings."""
    from halo_pipeline.runtimes.catalog import fingerprint

    algo = params.algorithm
    adapter_dir = ctx.path("model")
    adapter, start = _adapter(params, adapter_dir, init)
    if algo.name == "sft":
        iters = params.max_steps or max(1, int(algo.epochs * len(rows) / algo.batch_size))
        worker, spec_path = "_mlx_worker", _sft_config(params, rows, ctx, iters, adapter, start)
    else:
        iters, spec_path = _lora_spec(params, rows, ctx, adapter, start)
        worker = "_mlx_lora_worker"
    metrics_path = ctx.path("metrics.jsonl")
    started = time.time()
    _run(worker, spec_path, metrics_path, iters, ctx)
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
                "adapter": adapter["fine_tune_type"],
                "kind": "adapter",
                "format": "mlx",
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
    summary = {
        "steps": iters,
        "final_loss": losses[-1] if losses else None,
        "weights_changed": _mlx_changed(adapter_dir / ADAPTER_FILE, init / ADAPTER_FILE if init is not None else None),
        "tokens": tokens,
        "train_s": round(time.time() - started, 3),
    }
    rewards = [r["reward"] for r in logged if "reward" in r]
    if rewards:
        summary["mean_reward"] = round(sum(rewards) / len(rewards), 4)
    return summary


ADAPTER_FILE = "adapters.safetensors"  # mlx-lm's adapter weights (beside its adapter_config.json)


def _adapter(params: TrainingParams, adapter_dir: Path, init: Path | None) -> tuple[dict[str, Any], Path | None]:
    """The adapter to train, as mlx-lm records one (`fine_tune_type`, `num_layers`, `lora_parameters`): this step's
    settings, or the `init` adapter's own (its rank, not this step's lora_r, as on the torch path); and the weights
    it starts from: a killed run's last save (weights only: mlx-lm does not checkpoint its optimizer), else the init
    adapter's, else none (a new adapter: B at zero)."""
    if init is not None:
        config = json.loads((init / "adapter_config.json").read_text())
        adapter = {key: config[key] for key in ("fine_tune_type", "num_layers", "lora_parameters")}
    else:
        lora = {"rank": params.lora_r, "scale": params.lora_alpha / params.lora_r, "dropout": params.lora_dropout}
        adapter = {"fine_tune_type": params.adapter, "num_layers": -1, "lora_parameters": lora}
    saved = adapter_dir / ADAPTER_FILE
    start = saved if saved.is_file() else init / ADAPTER_FILE if init is not None else None
    return adapter, start


def _sft_config(
    params: TrainingParams, rows: list[dict[str, Any]], ctx: Any, iters: int, adapter: dict[str, Any], start: Path | None
) -> Any:
    """mlx-lm's `lora -c` config (and its data directory) for SFT."""
    from halo_pipeline.runtimes.catalog import resolve

    algo = params.algorithm
    data_dir = ctx.path("mlx_data")
    data_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"prompt": str(r["prompt"]), "completion": str(r["completion"])}) for r in rows]
    (data_dir / "train.jsonl").write_text("\n".join(lines) + "\n")
    (data_dir / "valid.jsonl").write_text("\n".join(lines[: max(1, min(8, len(lines)))]) + "\n")
    config = {
        "model": str(resolve(params.model)),
        "train": True,
        "data": str(data_dir),
        **adapter,
        "batch_size": min(algo.batch_size, len(rows)),
        "iters": iters,
        "learning_rate": algo.learning_rate,
        "grad_accumulation_steps": params.grad_accum,
        "steps_per_report": params.logging_steps,
        "steps_per_eval": max(iters, 1) + 1,
        "val_batches": 1,
        "save_every": params.save_every,
        "adapter_path": str(ctx.path("model")),
        "max_seq_length": params.max_length,
        "mask_prompt": getattr(algo, "completion_only_loss", True),
        "seed": params.seed,
    }
    if start is not None:
        config["resume_adapter_file"] = str(start)
    config_path = ctx.path("mlx_lora.yaml")
    config_path.write_text(yaml.safe_dump(config))
    return config_path


def _lora_spec(
    params: TrainingParams, rows: list[dict[str, Any]], ctx: Any, adapter: dict[str, Any], start: Path | None
) -> tuple[int, Any]:
    """The spec `_mlx_lora_worker` trains from: the rows, the adapter (as mlx-lm records one), mlx-lm-lora's
    arguments. GRPO's batch is of completions, as TRL's is: batch_size / num_generations prompts a step."""
    from halo_pipeline.runtimes.catalog import resolve
    from halo_pipeline.training import data

    algo: Any = params.algorithm
    settings = algo.model_dump()
    if algo.name == "grpo":
        rows = data.prompt_rows(rows, False, None)
        batch = max(1, algo.batch_size // algo.num_generations)
        settings["loss_type"] = GRPO_LOSSES[algo.loss_type]
    else:
        rows = [{"prompt": str(r["prompt"]), "chosen": str(r["chosen"]), "rejected": str(r["rejected"])} for r in rows]
        batch = algo.batch_size
    batch = min(batch, len(rows))
    iters = params.max_steps or max(1, int(algo.epochs * len(rows) / batch))
    model = str(resolve(params.model))
    spec = {
        "algorithm": algo.name,
        "model": model,
        "adapter": {"model": model, **adapter, "adapter_path": str(ctx.path("model")), "train_mode": algo.name},
        "resume_adapter_file": str(start) if start is not None else None,
        "seed": params.seed,
        "learning_rate": algo.learning_rate,
        "iters": iters,
        "batch_size": batch,
        "grad_accum": params.grad_accum,
        "steps_per_report": params.logging_steps,
        "save_every": params.save_every,
        "max_seq_length": params.max_length,
        "system": params.system_prompt,
        "settings": settings,
        "verifier": params.verifier.model_dump() if params.verifier is not None else None,
        "rows": rows,
    }
    spec_path = ctx.path("mlx_lora_spec.json")
    spec_path.write_text(json.dumps(spec, ensure_ascii=False))
    return iters, spec_path


def _run(worker: str, spec_path: Any, metrics_path: Any, iters: int, ctx: Any) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", f"halo_pipeline.training.{worker}", str(spec_path), str(metrics_path)],
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
        library = "mlx-lm LoRA" if worker == "_mlx_worker" else "mlx-lm-lora"
        raise RuntimeError(f"{library} training failed:\n" + "\n".join(tail))


def _mlx_changed(weights: Path, start: Path | None = None) -> bool:
    """Whether training moved the adapter's weights: from the init adapter's, or (a new adapter) from LoRA's start,
    where every B matrix is zero. Read from the safetensors files themselves (an 8-byte header length, a JSON
    header, the raw tensors), so the pipeline process never imports MLX (its worker trains)."""
    after = _tensor_bytes(weights)
    if start is None:
        return any(data.strip(b"\0") for name, data in after.items() if name.endswith("lora_b"))
    before = _tensor_bytes(start)
    return any(before.get(name) != data for name, data in after.items())


def _tensor_bytes(path: Path) -> dict[str, bytes]:
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        data = f.read()
    return {name: data[slice(*meta["data_offsets"])] for name, meta in header.items() if name != "__metadata__"}
