"""Distributed training for real: the train step launches its ranks with `accelerate launch` (2 gloo ranks
on CPU), and the result is what one process with the same global batch gets; rank 0 alone writes metrics
and reports progress; a killed pipeline takes its ranks down and the rerun resumes from the last complete
checkpoint. The generated configs and the validate-time errors of the distributed and GPU paths."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from halo_pipeline.engine import registry
from halo_pipeline.engine.step import Artifact, RunContext
from helpers import REFERENCE, VARIED_REWARD, read_jsonl, write_jsonl

REWARD = VARIED_REWARD
LOSS_TOLERANCE = 1e-4  # relative, per logged step: DDP's all-reduced gradients vs one process on the same global batch


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    rows = [{"id": f"r{i}", "prompt": f"What is {i}+{i}?", "completion": f"{2 * i}", "reference": REFERENCE} for i in range(16)]
    return Artifact("sft_dataset", write_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", rows))


def train(out: Path, data: Artifact, **params: Any) -> tuple[dict[str, Any], list[tuple[int, int]], RunContext]:
    """The train step's function with the engine's context, progress recorded."""
    kind = registry.get("train")
    out.mkdir(parents=True, exist_ok=True)
    progress: list[tuple[int, int]] = []
    ctx = RunContext(step_id="train", kind="train", out_dir=out, run_dir=out, seed=0, log=logging.getLogger("test.distributed"))
    ctx.on_progress = lambda done, total, **figures: progress.append((done, total))
    kind.fn(kind.params.model_validate({"model": "tiny", **params}), {"dataset": data}, ctx)
    return json.loads((out / "training_summary.json").read_text()), progress, ctx


def test_ddp_on_two_cpu_ranks_matches_one_process_with_the_same_global_batch(tmp_path: Path, sft_data: Artifact) -> None:
    algo = {"name": "sft", "learning_rate": 1e-3}
    one, _, _ = train(tmp_path / "one", sft_data, algorithm={**algo, "batch_size": 4}, max_steps=4)
    two, progress, ctx = train(
        tmp_path / "two", sft_data, algorithm={**algo, "batch_size": 2}, max_steps=4, save_every=2, distributed={"num_processes": 2}
    )
    assert two["distributed"] == {"strategy": "ddp", "num_processes": 2, "num_machines": 1}
    assert two["steps"] == one["steps"] == 4 and two["weights_changed"]
    single = [r["loss"] for r in read_jsonl(tmp_path / "one/metrics.jsonl")]
    ranks = read_jsonl(tmp_path / "two/metrics.jsonl")
    assert [r["step"] for r in ranks] == [1, 2, 3, 4]  # rank 0 alone writes: no step twice
    for a, b in zip(single, [r["loss"] for r in ranks], strict=True):
        assert abs(a - b) <= LOSS_TOLERANCE * abs(a), (single, ranks)
    assert sorted(set(progress)) == [(1, 4), (2, 4), (3, 4), (4, 4)] and progress == sorted(progress)  # rank 0's, in order
    assert ctx.metrics.get("steps") == 4 and (tmp_path / "two/curves.png").is_file()
    config = tmp_path / "two/.scratch/distributed/accelerate.yaml"
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(config))
    assert (loaded.num_processes, loaded.num_machines, loaded.distributed_type.value) == (2, 1, "MULTI_GPU")
    checkpoints = tmp_path / "two/.scratch/checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2"]  # none at the last: the model is saved
    assert all((c / "halo_complete.json").is_file() and (c / "rng_state_1.pth").is_file() for c in checkpoints.glob("checkpoint-*"))
    from peft import AutoPeftModelForCausalLM

    assert any("lora" in n for n, _ in AutoPeftModelForCausalLM.from_pretrained(tmp_path / "two/model").named_parameters())


def test_grpo_trains_on_two_cpu_ranks(tmp_path: Path, sft_data: Artifact) -> None:
    node = {"name": "grpo", "batch_size": 2, "num_generations": 4, "max_completion_length": 8, "learning_rate": 1e-3, "temperature": 2.0}
    summary, progress, _ = train(tmp_path, sft_data, algorithm=node, verifier=REWARD, max_steps=2, distributed={"num_processes": 2})
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert summary["steps"] == 2 and summary["weights_changed"] and summary["distributed"]["num_processes"] == 2
    assert [r["step"] for r in rows] == [1, 2] and all(0 <= r["reward"] <= 1 for r in rows)
    assert progress[-1] == (2, 2)


KILL_SCRIPT = """
import logging, sys
from pathlib import Path
sys.path[:0] = [{tests!r}, {tasks!r}]
logging.basicConfig(level=logging.INFO)
from helpers import run_kind
from halo_pipeline.engine.step import Artifact
run_kind("train", {params!r}, {{"dataset": Artifact("sft_dataset", Path({data!r}))}}, Path({out!r}))
"""


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_a_killed_pipeline_takes_its_ranks_down_and_the_rerun_resumes(tmp_path: Path, sft_data: Artifact) -> None:
    out = tmp_path / "work"
    params = {
        "model": "tiny", "algorithm": {"name": "sft", "batch_size": 1, "learning_rate": 1e-3}, "max_steps": 40, "save_every": 3,
        "distributed": {"num_processes": 2},
    }  # fmt: skip
    tests = Path(__file__).resolve().parents[1]
    script = KILL_SCRIPT.format(tests=str(tests), tasks=str(tests / "tasks"), params=params, data=str(sft_data.path), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoints = out / ".scratch" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not list(checkpoints.glob("checkpoint-6/halo_complete.json")):
        assert proc.poll() is None, proc.stderr.read()[-3000:]  # type: ignore[union-attr]
        time.sleep(0.05)
    spec = str(out / ".scratch" / "distributed" / "spec.pkl")
    assert len(_processes_mentioning(spec)) == 3  # the launcher and its two ranks
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and _processes_mentioning(spec):
        time.sleep(0.2)
    assert not _processes_mentioning(spec), "ranks outlived the pipeline"
    assert not (out / "training_summary.json").exists(), "finished before it could be killed"
    from halo_pipeline.training.trl_runner import last_checkpoint

    resume_from = last_checkpoint(checkpoints)
    assert resume_from is not None
    summary, _, _ = train(out, sft_data, **{k: v for k, v in params.items() if k != "model"})
    assert summary["resumed_from"] == resume_from.name and summary["steps"] == 40
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, 41))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_sharded_strategies_train_on_cpu(strategy: str, tmp_path: Path, sft_data: Artifact) -> None:
    """FSDP2 and DeepSpeed ZeRO-2 both run over gloo on CPU (DeepSpeed compiles a small op with g++ on first use)."""
    if strategy == "deepspeed":
        pytest.importorskip("deepspeed")
    algo = {"name": "sft", "batch_size": 2, "learning_rate": 1e-3}
    summary, _, _ = train(tmp_path, sft_data, algorithm=algo, max_steps=3, distributed={"num_processes": 2, "strategy": strategy})
    assert summary["steps"] == 3 and summary["weights_changed"] is True
    from peft import AutoPeftModelForCausalLM

    loaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "model")
    assert any("lora" in n for n, _ in loaded.named_parameters())
    files = {p.name for p in (tmp_path / ".scratch/distributed").iterdir()}
    assert ("deepspeed.json" if strategy == "deepspeed" else "fsdp.json") in files


@pytest.mark.slow
def test_raft_cycles_on_two_cpu_ranks(tmp_path: Path, sft_data: Artifact) -> None:
    node = {"name": "raft", "cycles": 2, "samples_per_prompt": 2, "reward_threshold": 0.1, "max_completion_length": 8, "temperature": 2.0}
    summary, _, _ = train(tmp_path, sft_data, algorithm=node, verifier=REWARD, max_steps=2, distributed={"num_processes": 2})
    cycles = [r["cycle"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "cycle" in r]
    assert cycles == [0, 1] and len(summary["reward_by_cycle"]) == 2


# ----------------------------------------------------------------------------- configs and validation (no launch)


def _params(**kw: Any) -> Any:
    from halo_pipeline.tasks import train as train_kind

    return train_kind.TrainParams.model_validate({"model": "tiny", **kw})


def _problems(**kw: Any) -> list[Any]:
    from halo_pipeline.tasks import train as train_kind

    return train_kind.check(_params(**kw))


def test_generated_configs_for_each_strategy(tmp_path: Path) -> None:
    from halo_pipeline.training.algorithms import trainer_config
    from halo_pipeline.training.distributed import deepspeed_config, strategy_args, write_configs

    fsdp = _params(distributed={"num_processes": 2, "strategy": "fsdp", "offload": True}, gradient_checkpointing=True)
    args = strategy_args(fsdp)
    assert args["fsdp"] is True and args["activation_checkpointing"] is False  # FSDP checkpoints activations itself
    assert args["fsdp_config"] | {"version": 2, "cpu_offload": True, "activation_checkpointing": True} == args["fsdp_config"]
    c = trainer_config(fsdp, tmp_path)
    assert c.fsdp_plugin_args["fsdp_version"] == 2 and c.fsdp_plugin_args["cpu_offload"] is True
    ds = _params(distributed={"num_processes": 4, "strategy": "deepspeed", "zero_stage": 3, "offload": True})
    zero = deepspeed_config(ds.distributed)["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu" and zero["stage3_gather_16bit_weights_on_model_save"]
    files = write_configs(ds, tmp_path / "ds", 29500)
    assert json.loads(files["deepspeed"].read_text())["train_micro_batch_size_per_gpu"] == "auto"
    import yaml

    layout = yaml.safe_load(files["accelerate"].read_text())
    assert (layout["num_processes"], layout["main_process_port"], layout["mixed_precision"]) == (4, 29500, "no")
    two = _params(distributed={"num_processes": 4, "num_machines": 2, "main_process_ip": "10.0.0.1", "main_process_port": 29500})
    layout = yaml.safe_load(write_configs(two, tmp_path / "two", 29500)["accelerate"].read_text())
    assert (layout["num_machines"], layout["main_process_ip"]) == (2, "10.0.0.1")
    assert strategy_args(_params()) == {} and not _params().distributed.launched  # one process: nothing changes


def test_distributed_mistakes_are_validate_time_errors() -> None:
    import pydantic

    for bad, words in [
        ({"num_processes": 3, "num_machines": 2}, "multiple of num_machines"),
        ({"num_processes": 2, "zero_stage": 2}, "zero_stage is DeepSpeed's"),
        ({"num_processes": 4, "num_machines": 2}, "main_process_ip"),
        ({"strategy": "horovod"}, "ddp"),
    ]:
        with pytest.raises(pydantic.ValidationError, match=words):
            _params(distributed=bad)
    with pytest.raises(pydantic.ValidationError, match="x 2 ranks"):
        _params(algorithm={"name": "grpo", "batch_size": 2, "num_generations": 8}, distributed={"num_processes": 2})
    mlx = {"name": "mlx", "engine": "mlx", "device": "default", "dtype": "float16"}
    assert any(k == "distributed" and "mlx" in t for k, t in _problems(backend=mlx, distributed={"num_processes": 2}))
    assert any(k == "distributed.mixed_precision" for k, t in _problems(distributed={"num_processes": 2, "mixed_precision": "bf16"}))
    raft = {"name": "raft"}
    assert any(
        "strategy=ddp" in t for _, t in _problems(algorithm=raft, verifier=REWARD, distributed={"num_processes": 2, "strategy": "fsdp"})
    )
    assert any("adapter=none" in t for _, t in _problems(algorithm={"name": "rm"}, distributed={"num_processes": 2, "strategy": "fsdp"}))
    assert not [p for p in _problems(algorithm={"name": "rm"}, adapter="none", distributed={"num_processes": 2, "strategy": "fsdp"})]
    probe = {"probe_every": 2, "probe_verifier": "python_syntax"}
    assert any(k == "probe_every" for k, _ in _problems(distributed={"num_processes": 2, "strategy": "fsdp"}, **probe))
    assert not _problems(distributed={"num_processes": 2}, **probe)  # ddp: rank 0 probes
    deepspeed = [t for k, t in _problems(distributed={"num_processes": 2, "strategy": "deepspeed"}) if k == "distributed.strategy"]
    import importlib.util

    assert bool(deepspeed) == (importlib.util.find_spec("deepspeed") is None)
    assert not deepspeed or "halo-pipeline[distributed]" in deepspeed[0]


def test_gpu_paths_are_validated_without_a_gpu() -> None:
    cuda = {"name": "cuda", "engine": "torch", "device": "cuda", "dtype": "bfloat16", "attention": "flash_attention_2"}
    problems = dict(_problems(backend=cuda, adapter="qlora"))
    assert "needs a GPU (NVIDIA" in problems["backend"] or "CPU-only build" in problems["backend"]
    from halo_pipeline.training.gpu import torch_build

    if (torch_build() or "").endswith("+cpu"):
        assert any("CPU-only build" in t for k, t in _problems(backend=cuda) if k == "backend")
    flash = [t for k, t in _problems(backend=cuda) if k == "backend.attention"]
    import importlib.util

    assert bool(flash) == (importlib.util.find_spec("flash_attn") is None)
    cpu_flash = {"name": "cpu", "attention": "flash_attention_2"}
    assert any("NVIDIA/AMD GPUs" in t for k, t in _problems(backend=cpu_flash) if k == "backend.attention")
    assert any("trains in fp32" in t for k, t in _problems(backend=cpu_flash) if k == "backend.attention")
    vllm = {"name": "grpo", "batch_size": 4, "use_vllm": True}
    assert any(k == "algorithm.use_vllm" and "CUDA" in t for k, t in _problems(algorithm=vllm, verifier=REWARD))
    # a backend is judged by its device, not its file's name: a GPU backend of another name gets the GPU paths
    own = {"name": "nvidia_fp16", "engine": "torch", "device": "cuda", "dtype": "float16", "attention": "flash_attention_2"}
    assert not any("NVIDIA/AMD GPUs" in t for _, t in _problems(backend=own))
    assert not any("generates on CUDA GPUs" in t for _, t in _problems(backend=own, algorithm=vllm, verifier=REWARD))
    renamed_cpu = {"name": "cuda", "engine": "torch", "device": "cpu", "attention": "flash_attention_2"}
    assert any("NVIDIA/AMD GPUs" in t for k, t in _problems(backend=renamed_cpu) if k == "backend.attention")
    from halo_pipeline.training.algorithms import trainer_config

    server = _params(algorithm={**vllm, "vllm_mode": "server", "vllm_server_base_url": "http://gpu-box:8000"}, verifier=REWARD)
    assert {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": "http://gpu-box:8000"}.items() <= _vllm_args(server).items()
    assert trainer_config(_params(), Path("/tmp/unused")).use_cpu is True


def _vllm_args(params: Any) -> dict[str, Any]:
    from halo_pipeline.training.gpu import vllm_args

    return vllm_args(params.algorithm)


def test_validate_reports_a_distributed_problem_at_its_key(tmp_path: Path) -> None:
    """The real CLI: a recipe with a train step and a bad distributed override exits 2 naming the key and the fix."""
    from conftest import cli, write

    data = write_jsonl(tmp_path / "d.jsonl", [{"id": "r0", "prompt": "p", "completion": "c"}])
    recipe = write(
        tmp_path / "r.yaml",
        f"""
        name: r
        steps:
          train:
            inputs: {{dataset: "file:{data}"}}
            with: {{model: tiny, distributed: {{num_processes: 2, strategy: fsdp, mixed_precision: bf16}}}}
        """,
    )
    res = cli("validate", str(recipe), cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "steps.train.with.distributed.mixed_precision" in res.stdout + res.stderr


# ----------------------------------------------------------------------------- on a GPU machine (never in CI)

needs_gpus = pytest.mark.skipif(not Path("/dev/nvidia0").exists(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpus
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "deepspeed"])
def test_bf16_training_on_every_gpu(strategy: str, tmp_path: Path, sft_data: Artifact) -> None:
    import torch

    n = torch.cuda.device_count()
    cuda = {"name": "cuda", "engine": "torch", "device": "cuda", "dtype": "bfloat16", "attention": "sdpa"}
    algo = {"name": "sft", "batch_size": 2, "learning_rate": 1e-3}
    summary, _, _ = train(
        tmp_path, sft_data, backend=cuda, algorithm=algo, max_steps=3, distributed={"num_processes": n, "strategy": strategy}
    )
    assert summary["steps"] == 3 and summary["weights_changed"]


@pytest.mark.gpu
@needs_gpus
def test_qlora_with_flash_attention_on_a_gpu(tmp_path: Path, sft_data: Artifact) -> None:
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("flash_attn")
    cuda = {"name": "cuda", "engine": "torch", "device": "cuda", "dtype": "bfloat16", "attention": "flash_attention_2"}
    summary, _, _ = train(tmp_path, sft_data, backend=cuda, adapter="qlora", algorithm={"name": "sft", "batch_size": 2}, max_steps=3)
    assert summary["steps"] == 3 and summary["weights_changed"]


@pytest.mark.gpu
@needs_gpus
def test_grpo_rollouts_from_a_vllm_server(tmp_path: Path, sft_data: Artifact) -> None:
    """Needs `trl vllm-serve --model <the tiny model's directory>` running in its own environment (HALO_VLLM_URL)."""
    url = os.environ.get("HALO_VLLM_URL") or pytest.skip("set HALO_VLLM_URL to a running `trl vllm-serve`")
    cuda = {"name": "cuda", "engine": "torch", "device": "cuda", "dtype": "bfloat16", "attention": "sdpa"}
    node = {
        "name": "grpo",
        "batch_size": 4,
        "max_completion_length": 8,
        "use_vllm": True,
        "vllm_mode": "server",
        "vllm_server_base_url": url,
    }
    summary, _, _ = train(tmp_path, sft_data, backend=cuda, algorithm=node, verifier=REWARD, max_steps=2)
    assert summary["steps"] == 2
