"""Distributed training for the train step: the `distributed:` block, the configs it generates, and the
launch of its ranks.

The step's process (a Prefect task in the pipeline) does not train itself when `distributed` asks for
more than one process (or for FSDP/DeepSpeed): it writes an Accelerate config (`accelerate.yaml`: the
process layout, torchrun's static rendezvous) and, for DeepSpeed, `deepspeed.json`, into the step's
scratch area, then runs `accelerate launch` on them — the way TRL's and axolotl's users start
multi-GPU runs. The ranks are its child processes and die with it (PR_SET_PDEATHSIG on the launcher
and on every rank); rank 0 alone logs, reports progress, writes metrics, checkpoint markers and the
model, and hands its summary back through a file the step reads. The strategy itself (DDP, FSDP,
DeepSpeed ZeRO) reaches the trainer as TrainingArguments (`strategy_args`), so the same config runs
under any launcher. Nothing here imports torch at module level: `validate` stays fast.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PROGRESS = "@halo-progress "  # rank 0's progress lines on the launcher's stdout; everything else is log


class Distributed(BaseModel):
    """How many processes train, on how many machines, and how the model is spread over them."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str | None = Field(None, description="The `distributed` group option it came from (single, ddp, fsdp, deepspeed), if any.")
    num_processes: int = Field(1, ge=1, description="Training processes (ranks) in all, over every machine; one per GPU on CUDA.")
    num_machines: int = Field(1, ge=1, description="Machines; each runs num_processes / num_machines ranks.")
    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="ddp: a full copy per rank; fsdp: parameters, gradients and optimizer state sharded (FSDP2); deepspeed: ZeRO."
    )
    zero_stage: Literal[0, 1, 2, 3] | None = Field(None, description="DeepSpeed ZeRO stage (default 2); deepspeed only.")
    offload: bool = Field(False, description="fsdp/deepspeed: keep optimizer state (and, with ZeRO-3/FSDP, parameters) in CPU memory.")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field("auto", description="auto: from the backend's dtype (bfloat16 -> bf16).")
    main_process_ip: str | None = Field(None, description="num_machines > 1: the address of machine 0 (the one running the pipeline).")
    main_process_port: int | None = Field(
        None, ge=1, le=65535, description="Rendezvous port (default: a free one; set it with num_machines > 1)."
    )

    @model_validator(mode="after")
    def _layout(self) -> Distributed:
        if self.num_processes % self.num_machines:
            raise ValueError(
                f"num_processes ({self.num_processes}) must be a multiple of num_machines ({self.num_machines}): "
                f"every machine runs the same number of ranks, e.g. num_processes={self.num_machines * max(1, self.num_processes // self.num_machines)}"
            )
        if self.zero_stage is not None and self.strategy != "deepspeed":
            raise ValueError(f"zero_stage is DeepSpeed's: set strategy=deepspeed, or drop zero_stage (strategy={self.strategy})")
        if self.num_machines > 1 and (not self.main_process_ip or not self.main_process_port):
            raise ValueError(
                "num_machines > 1 needs main_process_ip and main_process_port: the address and port of machine 0 that the others reach"
            )
        return self

    @property
    def launched(self) -> bool:
        """Whether training runs in launched ranks (any multi-process layout, and FSDP/DeepSpeed even on one)."""
        return self.num_processes > 1 or self.num_machines > 1 or self.strategy != "ddp"

    @property
    def per_machine(self) -> int:
        return self.num_processes // self.num_machines


def of(params: Any) -> Distributed:
    return getattr(params, "distributed", None) or Distributed()


def precision(params: Any) -> Literal["no", "fp16", "bf16"]:
    """The mixed precision the ranks train in: the explicit setting, else the backend's dtype."""
    chosen = of(params).mixed_precision
    if chosen != "auto":
        return chosen
    backend = params.backend
    if backend.is_cpu or backend.device == "cpu":
        return "no"
    return {"bfloat16": "bf16", "float16": "fp16"}.get(backend.dtype, "no")  # type: ignore[return-value]


def sharded(params: Any) -> bool:
    """Whether each rank holds only a shard of the weights (the full state dict must be gathered to save)."""
    d = of(params)
    return d.launched and d.strategy in ("fsdp", "deepspeed")


def deepspeed_config(d: Distributed) -> dict[str, Any]:
    """DeepSpeed's JSON; "auto" values are filled by transformers from the TrainingArguments."""
    stage = 2 if d.zero_stage is None else d.zero_stage
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True}
    if d.offload and stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if d.offload and stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # the saved model is whole, not ZeRO shards
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
    }


def fsdp_config(d: Distributed, activation_checkpointing: bool) -> dict[str, Any]:
    """FSDP2 over the model's decoder layers (transformers finds them from `_no_split_modules`)."""
    return {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "reshard_after_forward": True,
        "cpu_offload": d.offload,
        "state_dict_type": "FULL_STATE_DICT",  # checkpoints and the saved model hold whole tensors
        "activation_checkpointing": activation_checkpointing,
    }


def strategy_args(params: Any) -> dict[str, Any]:
    """TrainingArguments for the strategy and precision (empty for a single process with the backend's precision)."""
    d = of(params)
    args: dict[str, Any] = {}
    if d.mixed_precision != "auto":
        args |= {"bf16": d.mixed_precision == "bf16", "fp16": d.mixed_precision == "fp16"}
    if not d.launched:
        return args
    if d.strategy == "fsdp":
        # FSDP checkpoints activations itself; the trainer's own flag would add an all-gather per layer
        args |= {"fsdp": True, "fsdp_config": fsdp_config(d, params.gradient_checkpointing), "activation_checkpointing": False}
    elif d.strategy == "deepspeed":
        args["deepspeed"] = deepspeed_config(d)
    return args


def accelerate_config(d: Distributed, mixed_precision: str, port: int) -> dict[str, Any]:
    """`accelerate launch --config_file`: the process layout. MULTI_GPU is Accelerate's name for torchrun-started
    ranks; on a CPU backend they find no GPU and talk over gloo (Accelerate's own MULTI_CPU path needs MPI)."""
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU",
        "num_processes": d.num_processes,
        "num_machines": d.num_machines,
        "machine_rank": 0,
        "main_process_port": port,
        "rdzv_backend": "static",
        "same_network": True,
        "mixed_precision": mixed_precision,
        "gpu_ids": "all",
        "use_cpu": False,
        "downcast_bf16": "no",
        "main_training_function": "main",
        "enable_cpu_affinity": False,
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
    }
    if d.num_machines > 1:
        config["main_process_ip"] = d.main_process_ip
    return config


def _gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])
    return len(glob.glob("/dev/nvidia[0-9]*"))


def problems(params: Any) -> list[tuple[str, str]]:
    """What keeps this `distributed` block from running with these params here (validate time: no torch import)."""
    d = of(params)
    if not d.launched and d.mixed_precision == "auto":
        return []
    out: list[tuple[str, str]] = []
    backend, algo, adapter = params.backend, params.algorithm.name, params.adapter
    if backend.engine == "mlx":
        out.append(("distributed", "backend=mlx trains in one process (mlx-lm); distributed training needs a torch backend (cpu or cuda)"))
        return out
    if backend.device.startswith("mps") and d.launched:
        out.append(("distributed", "backend=mps has one device and no collective backend: drop distributed, or use backend=cuda or cpu"))
    if d.mixed_precision in ("bf16", "fp16") and backend.is_cpu:
        out.append(
            ("distributed.mixed_precision", f"mixed_precision={d.mixed_precision} needs a GPU backend; on backend=cpu use no (or auto)")
        )
    if backend.on_gpu and d.launched:
        gpus = _gpu_count()
        if gpus and d.per_machine > gpus:
            out.append(
                (
                    "distributed.num_processes",
                    f"{d.per_machine} ranks per machine but {gpus} GPU(s) here: one rank per GPU, "
                    f"e.g. distributed.num_processes={gpus * d.num_machines}",
                )
            )
    if d.strategy == "deepspeed" and d.launched and importlib.util.find_spec("deepspeed") is None:
        out.append(("distributed.strategy", "strategy=deepspeed needs the deepspeed package: pip install 'halo-pipeline[distributed]'"))
    if d.strategy in ("fsdp", "deepspeed") and d.launched:
        if algo == "raft":
            out.append(("distributed.strategy", f"raft samples between its training phases and runs with strategy=ddp, not {d.strategy}"))
        if algo == "rm" and adapter != "none":
            out.append(
                (
                    "distributed.strategy",
                    f"rm with an adapter trains with strategy=ddp, not {d.strategy}: its adapter carries the score head (a module PEFT "
                    "saves whole), not supported sharded; use strategy=ddp, or adapter=none",
                )
            )
        if adapter == "qlora":
            out.append(("adapter", f"qlora trains with strategy=ddp (one quantized copy per GPU), not {d.strategy}"))
        if params.probe_every is not None:
            out.append(
                ("probe_every", f"probe_every generates on rank 0 alone, which a {d.strategy}-sharded model cannot: use strategy=ddp")
            )
    return out


# ----------------------------------------------------------------------------- inside the ranks


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Rank 0 (and any single process): the one that logs, reports progress, writes metrics and the model."""
    return rank() == 0


def _group() -> Any:
    if world_size() <= 1:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def barrier() -> None:
    if (dist := _group()) is not None:
        dist.barrier()


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (just `[obj]` in a single process)."""
    dist = _group()
    if dist is None:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies: ranks never outlive the launcher, nor the launcher the pipeline."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent or parent == 1:  # the parent died before the request took effect
        os._exit(1)


# ----------------------------------------------------------------------------- in the step's process


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def write_configs(params: Any, work: Path, port: int) -> dict[str, Path]:
    """The generated configs, kept in the step's scratch area (shown in its log, reused by the other machines)."""
    import yaml

    d = of(params)
    work.mkdir(parents=True, exist_ok=True)
    files = {"accelerate": work / "accelerate.yaml"}
    files["accelerate"].write_text(yaml.safe_dump(accelerate_config(d, precision(params), port), sort_keys=False))
    extra = strategy_args(params)
    if "deepspeed" in extra:
        files["deepspeed"] = work / "deepspeed.json"
        files["deepspeed"].write_text(json.dumps(extra["deepspeed"], indent=2) + "\n")
    if "fsdp_config" in extra:
        files["fsdp"] = work / "fsdp.json"
        files["fsdp"].write_text(json.dumps(extra["fsdp_config"], indent=2) + "\n")
    return files


def launcher_command(config: Path, spec: Path, machine_rank: int | None = None) -> list[str]:
    """`accelerate launch` (through `_rank --launch`, which dies with its parent) on the generated config."""
    cmd = [sys.executable, "-m", "halo_pipeline.training._rank", "--launch", "--config_file", str(config)]
    if machine_rank is not None:
        cmd += ["--machine_rank", str(machine_rank)]
    return [*cmd, "-m", "halo_pipeline.training._rank", str(spec)]


def launch(params: Any, dataset: tuple[Path, str], init: Path | None, ctx: Any) -> dict[str, Any]:
    """Train in `num_processes` ranks started by `accelerate launch`; returns rank 0's summary. The ranks'
    output goes to the step's log, rank 0's progress to the step's progress, its metrics and meta to `ctx`."""
    import dataclasses

    from halo_pipeline.runtimes.catalog import resolve

    d = of(params)
    resolve(params.model)  # build or fetch the base once, before every rank looks for it
    work = ctx.scratch("distributed")
    port = d.main_process_port or _free_port()
    files = write_configs(params, work, port)
    result = work / "result.json"
    result.unlink(missing_ok=True)
    spec = work / "spec.pkl"
    shipped = dataclasses.replace(ctx, on_progress=None)  # the rank sets its own log and progress
    spec.write_bytes(
        pickle.dumps(
            {"params": params, "dataset": dataset, "init": init, "ctx": shipped, "result": result, "backend_cpu": params.backend.is_cpu}
        )
    )
    ctx.log.info(
        "distributed %s: %d rank(s) on %d machine(s), mixed precision %s; configs: %s",
        d.strategy, d.num_processes, d.num_machines, precision(params), ", ".join(str(p) for p in files.values()),
    )  # fmt: skip
    for machine in range(1, d.num_machines):
        ctx.log.info("start machine %d with: %s", machine, " ".join(launcher_command(files["accelerate"], spec, machine)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun sets it anyway, with a warning
    proc = subprocess.Popen(
        launcher_command(files["accelerate"], spec), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
    )
    tail: deque[str] = deque(maxlen=40)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(PROGRESS):  # a rank's stderr can land on the same line (one pipe): keep it as a log line
                report, end = json.JSONDecoder().raw_decode(line, len(PROGRESS))
                if ctx.on_progress:
                    ctx.on_progress(report["done"], report["total"], **report.get("figures", {}))
                line = line[end:]
                if not line.strip():
                    continue
            tail.append(line)
            if line.strip():
                ctx.log.info("%s", line)
    finally:
        if proc.poll() is None:  # the step was interrupted: take the ranks down with it
            proc.kill()
        code = proc.wait()
    if code != 0 or not result.is_file():
        raise RuntimeError(f"distributed training failed (launcher exit {code}); the ranks' last lines:\n" + "\n".join(tail))
    data = json.loads(result.read_text())
    ctx.metrics.update(data.get("metrics", {}))
    for name, meta in data.get("meta", {}).items():
        ctx.meta.setdefault(name, {}).update(meta)
    ctx.summary_lines.extend(data.get("summary_lines", []))
    summary: dict[str, Any] = data["summary"]
    summary["distributed"] = {"strategy": d.strategy, "num_processes": d.num_processes, "num_machines": d.num_machines}
    return summary


def report_progress(done: int, total: int, **figures: Any) -> None:
    """Rank 0's `ctx.on_progress`: a line the step's process turns back into progress."""
    print(PROGRESS + json.dumps({"done": done, "total": total, "figures": figures}), flush=True)
