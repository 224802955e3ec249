"""Train benchmark: our `train` step vs a direct TRL script with identical settings.

Per algorithm (sft, dpo, grpo, rm) on SmolLM2-135M-Instruct with LoRA (r=16, all-linear), a fixed
number of optimizer steps, on the same small dataset. Each side runs in its own fresh process
(imports are not timed: both pay the same); timed is the work from loading the model to the saved
adapter. Reports wall time, tokens/s, our overhead, and peak memory (max RSS) of each process.

With `--repeat N` the two sides alternate N times per algorithm (direct, ours, direct, ...) and each
figure is the median of its N runs: a single pair moves by a second or so with the machine's load.

MLX (`--algorithms mlx-dpo,mlx-orpo,mlx-grpo`): our train step with backend=mlx against mlx-lm-lora's own
Python API called directly (`from_pretrained` with the same LoRA, its dataset class, `train_dpo` /
`train_orpo` / `train_grpo`), on the tiny model. Our step trains in a worker process that imports MLX,
mlx-lm and mlx-lm-lora itself, so on these rows the direct side's clock starts before those imports too:
each side pays them once, inside its timing.

GKD (`gkd`): GKDTrainer (trl.experimental.gkd) with the model as its own teacher, half the batches on-policy.
Several rewards (`grpo-rewards`): GRPO with two verifiers as weighted reward functions (our `rewards:`)
against GRPOTrainer with two reward functions and `reward_weights`. `--model tiny` runs every torch row on
the tiny model instead of SmolLM2-135M-Instruct (run more `--steps` there: its steps take milliseconds).

ORPO, SimPO, KTO (`orpo`, `simpo`, `kto`): ORPOTrainer and CPOTrainer (loss_type simpo) from trl.experimental, and
KTOTrainer, on the same pairs (KTO: the 32 samples, every other one undesirable, shuffled with the seed as the
step shuffles them), against our train step.

Usage: python benchmarks/train.py [--algorithms sft,dpo,grpo,rm,gkd,grpo-rewards,orpo,simpo,kto] [--model tiny] [--steps 6] [--repeat 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = os.environ.get("HALO_BENCH_MODEL", "smollm2-135m-instruct")  # --model
SEQ = {"sft": 6, "dpo": 4, "grpo": 3, "rm": 6, "gkd": 4, "grpo-rewards": 3, "orpo": 4, "simpo": 4, "kto": 4}  # scaled by --steps / 6
HYPER = {
    "sft": {"name": "sft", "batch_size": 4, "learning_rate": 2e-4},
    "dpo": {"name": "dpo", "batch_size": 4, "learning_rate": 5e-6, "beta": 0.1},
    "grpo": {"name": "grpo", "batch_size": 4, "num_generations": 4, "learning_rate": 1e-5, "max_completion_length": 16, "beta": 0.04},
    "rm": {"name": "rm", "batch_size": 4, "learning_rate": 1e-5},
    "gkd": {"name": "gkd", "teacher": MODEL, "batch_size": 4, "learning_rate": 5e-5, "lmbda": 0.5, "beta": 0.5, "max_new_tokens": 16},
}
HYPER["grpo-rewards"] = HYPER["grpo"]
HYPER |= {
    "orpo": {"name": "orpo", "batch_size": 4, "learning_rate": 8e-6, "beta": 0.1},
    "simpo": {"name": "simpo", "batch_size": 4, "learning_rate": 1e-6, "beta": 2.0, "simpo_gamma": 1.0},
    "kto": {"name": "kto", "batch_size": 4, "learning_rate": 5e-6, "beta": 0.1},
}
PAIRS = ("dpo", "rm", "orpo", "simpo")  # trained on preference pairs
REWARDS = [({"name": "regex_format", "pattern": "return"}, 1.0), ({"name": "regex_format", "pattern": "def "}, 0.5)]


MLX_MODEL = "tiny"
MLX_BACKEND = {"name": "mlx", "engine": "mlx", "device": "default", "dtype": "float16"}
SEQ |= {"mlx-dpo": 1000, "mlx-orpo": 1000, "mlx-grpo": 100}  # the tiny model: steps of a few ms to a few 100 ms
HYPER |= {
    "mlx-dpo": {"name": "dpo", "batch_size": 4, "learning_rate": 1e-4, "beta": 0.1},
    "mlx-orpo": {"name": "orpo", "batch_size": 4, "learning_rate": 1e-4, "beta": 0.1},
    "mlx-grpo": {"name": "grpo", "batch_size": 4, "num_generations": 4, "learning_rate": 1e-4, "max_completion_length": 16, "beta": 0.04},
}


def rows(kind: str) -> list[dict]:
    data = []
    for i in range(32):
        prompt = f"Write a Python function that returns {i} times {i + 1}."
        good = f"def f():\n    return {i} * {i + 1}\n"
        if kind == "preference":
            data.append({"id": f"p{i}", "prompt": prompt, "chosen": good, "rejected": "I cannot help with that."})
        elif kind == "labelled":  # KTO: every other sample undesirable
            data.append(
                {"id": f"k{i}", "prompt": prompt, "completion": good if i % 2 else "I cannot help with that.", "verified": bool(i % 2)}
            )
        else:
            data.append({"id": f"s{i}", "prompt": prompt, "completion": good})
    return data


def reward_contains_return(completions: list, **_: object) -> list[float]:
    text = [c[0]["content"] if isinstance(c, list) else str(c) for c in completions]
    return [1.0 if "return" in t else 0.0 for t in text]


def reward_contains_def(completions: list, **_: object) -> list[float]:
    text = [c[0]["content"] if isinstance(c, list) else str(c) for c in completions]
    return [1.0 if "def " in t else 0.0 for t in text]


def child_ours(algo: str, steps: int, out: Path) -> dict:
    from halo_pipeline.data.rows import write_rows
    from halo_pipeline.engine.registry import get
    from halo_pipeline.engine.step import Artifact, RunContext
    from halo_pipeline.training import trl_runner  # noqa: F401  (imports, untimed)

    kind = "preference_dataset" if algo in PAIRS else "sft_dataset"
    path = out / "data.jsonl"
    write_rows(path, rows("preference" if kind == "preference_dataset" else "labelled" if algo == "kto" else "sft"))
    params = {"model": MODEL, "algorithm": HYPER[algo], "max_steps": steps, "save_every": 1000, "max_length": 256}
    if algo == "grpo":
        params["verifier"] = {"name": "regex_format", "pattern": "return"}
    if algo == "grpo-rewards":
        params["rewards"] = [{"verifier": spec, "weight": weight} for spec, weight in REWARDS]
    step = get("train")
    import logging

    ctx = RunContext(step_id="train", kind="train", out_dir=out / "ours", run_dir=out, seed=0, log=logging.getLogger("bench"))
    (out / "ours").mkdir()
    started = time.perf_counter()
    step.fn(step.params.model_validate(params), {"dataset": Artifact(kind, path)}, ctx)
    wall = time.perf_counter() - started
    summary = json.loads((out / "ours" / "training_summary.json").read_text())
    return {"wall_s": wall, "train_s": summary["train_s"], "tokens": summary["tokens"], "steps": summary["steps"]}


def child_direct(algo: str, steps: int, out: Path) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from halo_pipeline.runtimes.catalog import resolve

    h = HYPER[algo]
    common = dict(
        output_dir=str(out / "direct"),
        learning_rate=h["learning_rate"],
        max_steps=steps,
        per_device_train_batch_size=h["batch_size"],
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        include_num_input_tokens_seen="all",
        disable_tqdm=True,
        # what the train step sets explicitly; TRL's own defaults differ (bf16 autocast, activation checkpointing)
        bf16=False,
        fp16=False,
        activation_checkpointing=False,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        dataloader_num_workers=0,
        data_seed=0,
    )
    started = time.perf_counter()
    path = resolve(MODEL)  # the step resolves its model too (a cached directory by now)
    tokenizer = AutoTokenizer.from_pretrained(path)
    user = lambda p: [{"role": "user", "content": p}]  # noqa: E731
    bot = lambda c: [{"role": "assistant", "content": c}]  # noqa: E731
    if algo == "sft":
        data = Dataset.from_list([{"prompt": user(r["prompt"]), "completion": bot(r["completion"])} for r in rows("sft")])
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        trainer = trl.SFTTrainer(model=model, args=trl.SFTConfig(**common, max_length=256), train_dataset=data, processing_class=tokenizer,
                                 peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))  # fmt: skip
    elif algo in PAIRS:
        prefs = [{"prompt": user(r["prompt"]), "chosen": bot(r["chosen"]), "rejected": bot(r["rejected"])} for r in rows("preference")]
        data = Dataset.from_list(prefs)
        lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        if algo == "dpo":
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            config = trl.DPOConfig(**common, max_length=256, beta=h["beta"])
            trainer = trl.DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=lora)
        elif algo == "orpo":
            from trl.experimental.orpo import ORPOConfig, ORPOTrainer

            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            config = ORPOConfig(**common, max_length=256, beta=h["beta"])
            trainer = ORPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=lora)
        elif algo == "simpo":
            from trl.experimental.cpo import CPOConfig, CPOTrainer

            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            config = CPOConfig(**common, max_length=256, loss_type="simpo", beta=h["beta"], simpo_gamma=h["simpo_gamma"], cpo_alpha=0.0)
            trainer = CPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=lora)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
            model.config.pad_token_id = tokenizer.pad_token_id
            lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="SEQ_CLS")
            trainer = trl.RewardTrainer(model=model, args=trl.RewardConfig(**common, max_length=256), train_dataset=data,
                                        processing_class=tokenizer, peft_config=lora)  # fmt: skip
    elif algo == "kto":
        labelled = [{"prompt": user(r["prompt"]), "completion": bot(r["completion"]), "label": r["verified"]} for r in rows("labelled")]
        data = Dataset.from_list(labelled).shuffle(seed=0)  # as the step shuffles KTO's samples (with its seed)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        config = trl.KTOConfig(**common, max_length=256, beta=h["beta"])
        trainer = trl.KTOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=lora)
    elif algo == "gkd":
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        data = Dataset.from_list([{"messages": user(r["prompt"]) + bot(r["completion"])} for r in rows("sft")])
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        teacher = AutoModelForCausalLM.from_pretrained(resolve(h["teacher"]), dtype=torch.float32)
        config = GKDConfig(**common, max_length=256, lmbda=h["lmbda"], beta=h["beta"], max_new_tokens=h["max_new_tokens"])
        lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = GKDTrainer(model=model, teacher_model=teacher, args=config, train_dataset=data, processing_class=tokenizer,
                             peft_config=lora)  # fmt: skip
    else:
        several = algo == "grpo-rewards"  # two reward functions with their weights
        data = Dataset.from_list([{"prompt": user(r["prompt"])} for r in rows("sft")])
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        config = trl.GRPOConfig(
            **common, num_generations=h["num_generations"], max_completion_length=h["max_completion_length"], beta=h["beta"],
            reward_weights=[w for _, w in REWARDS] if several else None,
        )  # fmt: skip
        lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        funcs = [reward_contains_return, reward_contains_def] if several else [reward_contains_return]
        trainer = trl.GRPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                                  reward_funcs=funcs, peft_config=lora)  # fmt: skip
    output = trainer.train()
    trainer.model.save_pretrained(out / "direct" / "model")
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "train_s": output.metrics["train_runtime"],
        "tokens": int(trainer.state.num_input_tokens_seen),
        "steps": trainer.state.global_step,
    }


def cpu_s() -> float:
    """CPU seconds of this process and its finished children (our step's worker): on a loaded machine a
    steadier measure than the wall clock."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def child_ours_mlx(algo: str, steps: int, out: Path) -> dict:
    from halo_pipeline.data.rows import write_rows
    from halo_pipeline.engine.registry import get
    from halo_pipeline.engine.step import Artifact, RunContext

    kind = "sft_dataset" if algo == "mlx-grpo" else "preference_dataset"
    path = out / "data.jsonl"
    write_rows(path, rows("sft" if kind == "sft_dataset" else "preference"))
    params = {
        "model": MLX_MODEL,
        "backend": MLX_BACKEND,
        "algorithm": HYPER[algo],
        "max_steps": steps,
        "save_every": 1000,
        "max_length": 256,
    }
    if algo == "mlx-grpo":
        params["verifier"] = {"name": "regex_format", "pattern": "return"}
    step = get("train")
    import logging

    ctx = RunContext(step_id="train", kind="train", out_dir=out / "ours", run_dir=out, seed=0, log=logging.getLogger("bench"))
    (out / "ours").mkdir()
    started, cpu = time.perf_counter(), cpu_s()
    step.fn(step.params.model_validate(params), {"dataset": Artifact(kind, path)}, ctx)
    wall, cpu = time.perf_counter() - started, cpu_s() - cpu
    summary = json.loads((out / "ours" / "training_summary.json").read_text())
    return {"wall_s": wall, "cpu_s": cpu, "train_s": summary["train_s"], "tokens": summary["tokens"], "steps": summary["steps"]}


def child_direct_mlx(algo: str, steps: int, out: Path) -> dict:
    from halo_pipeline.runtimes.catalog import resolve
    from halo_pipeline.runtimes.mlx_blas import use_fast_blas

    use_fast_blas()  # the BLAS our worker gives MLX on Linux
    h = HYPER[algo]
    started, cpu = time.perf_counter(), cpu_s()  # before MLX's imports: our worker process pays them too
    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.utils import load
    from mlx_lm_lora.trainer.datasets import CacheDataset, DPODataset, ORPODataset
    from mlx_lm_lora.utils import from_pretrained

    np.random.seed(0)  # as our worker seeds: the same LoRA init, batch order and sampled completions
    mx.random.seed(0)
    lora = {"rank": 16, "scale": 2.0, "dropout": 0.0, "num_layers": -1}
    path = str(resolve(MLX_MODEL))
    model, tokenizer, adapter_file = from_pretrained(path, new_adapter_path=str(out / "direct"), lora_config=lora)
    optimizer = optim.Adam(learning_rate=h["learning_rate"])
    common = dict(batch_size=h["batch_size"], iters=steps, steps_per_report=1, steps_per_eval=steps + 1, steps_per_save=1000,
                  adapter_file=adapter_file, max_seq_length=256)  # fmt: skip
    tokens: list[int] = []

    class Tokens(TrainingCallback):  # type: ignore[misc]
        def on_train_loss_report(self, info: dict) -> None:
            tokens.append(int(info["trained_tokens"]))

    if algo == "mlx-grpo":
        from mlx_lm_lora.trainer.grpo_trainer import GRPOTrainingArgs, train_grpo

        def reward_contains_return(prompts: list, completions: list, answer: list, types: list | None = None) -> list[float]:
            return [1.0 if "return" in c else 0.0 for c in completions]

        prompts = [
            tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True) for r in rows("sft")
        ]
        data = [(p, [], r["prompt"], "", None) for p, r in zip(prompts, rows("sft"), strict=True)]
        reference = load(path)[0].freeze()
        args = GRPOTrainingArgs(**{**common, "batch_size": h["batch_size"] // h["num_generations"]}, group_size=h["num_generations"],
                                beta=h["beta"], epsilon=0.2, max_completion_length=h["max_completion_length"], temperature=0.9,
                                top_p=1.0, top_k=0, grpo_loss_type="bnpo")  # fmt: skip
        train_grpo(model, reference, tokenizer, optimizer, data, reward_funcs=[reward_contains_return], args=args,
                   training_callback=Tokens(), end_answer_token="")  # fmt: skip
    else:
        if "max_recommended_working_set_size" not in mx.device_info():  # MLX's CPU build (as our worker does)
            own = mx.device_info
            mx.device_info = lambda *a: {**own(*a), "max_recommended_working_set_size": 0}
        prefs = rows("preference")
        if algo == "mlx-dpo":
            from mlx_lm_lora.trainer.dpo_trainer import DPOTrainingArgs, train_dpo

            reference = load(path)[0].freeze()
            data = CacheDataset(DPODataset(prefs, tokenizer))
            train_dpo(model, reference, optimizer, data, args=DPOTrainingArgs(**common, beta=h["beta"]), training_callback=Tokens())
        else:
            from mlx_lm_lora.trainer.orpo_trainer import ORPOTrainingArgs, train_orpo

            data = CacheDataset(ORPODataset(prefs, tokenizer))
            train_orpo(model, optimizer, data, args=ORPOTrainingArgs(**common, beta=h["beta"]), training_callback=Tokens())
    wall, cpu = time.perf_counter() - started, cpu_s() - cpu
    return {"wall_s": wall, "cpu_s": cpu, "train_s": wall, "tokens": tokens[-1] if tokens else 0, "steps": steps}


def child(side: str, algo: str, steps: int) -> None:
    if algo.startswith("mlx-"):  # nothing heavy before the clock: our step's worker imports MLX and co. itself
        import halo_pipeline.engine.registry  # noqa: F401

        with tempfile.TemporaryDirectory() as tmp:
            result = (child_ours_mlx if side == "ours" else child_direct_mlx)(algo, steps, Path(tmp))
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
        result["peak_rss_mb"] = max(result["peak_rss_mb"], round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
        print("RESULT " + json.dumps(result))
        return
    # heavy imports first, untimed: both sides pay them
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    experimental = {"gkd": ("gkd", "GKDTrainer"), "orpo": ("orpo", "ORPOTrainer"), "simpo": ("cpo", "CPOTrainer")}
    if algo in experimental:  # the trainer's module too (it imports TRL's trainer base, and wandb when installed)
        from halo_pipeline.training.algorithms._experimental import experimental as load

        load(*experimental[algo])
    elif algo.startswith("grpo"):
        trl.GRPOTrainer  # noqa: B018
    elif algo == "kto":
        trl.KTOTrainer  # noqa: B018
    with tempfile.TemporaryDirectory() as tmp:
        result = (child_ours if side == "ours" else child_direct)(algo, steps, Path(tmp))
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("RESULT " + json.dumps(result))


def median_run(runs: list[dict]) -> dict:
    """The run of median wall time (the lower middle one of an even count)."""
    return sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]


def cpu_overhead(runs: dict[str, list[dict]]) -> float:
    """Ours over direct in median CPU seconds, in percent."""
    import statistics

    ours, direct = (statistics.median(r["cpu_s"] for r in runs[side]) for side in ("ours", "direct"))
    return round(100 * (ours / direct - 1), 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--algorithms", default="sft,dpo,grpo,rm", help="also mlx-dpo, mlx-orpo, mlx-grpo (backend=mlx, the tiny model)")
    ap.add_argument("--steps", type=int, default=6, help="steps for sft/rm; dpo and grpo run 2/3 and 1/2 of it")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved runs of each side per algorithm (medians reported)")
    ap.add_argument("--model", default=MODEL, help="the torch rows' model: smollm2-135m-instruct (default) or tiny")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", nargs=3, metavar=("SIDE", "ALGO", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HALO_BENCH_MODEL": args.model}
    from halo_pipeline.runtimes.catalog import resolve

    resolve(args.model)  # convert the GGUF once, outside any timing
    report = {}
    for algo in args.algorithms.split(","):
        steps = max(1, round(SEQ[algo] * args.steps / 6))
        runs: dict[str, list[dict]] = {"direct": [], "ours": []}
        for _ in range(args.repeat):
            for side in ("direct", "ours"):
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", side, algo, str(steps)], capture_output=True, text=True, env=env
                )
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    raise SystemExit(f"{side} {algo} failed:\n{proc.stderr[-3000:]}")
                runs[side].append(json.loads(line[len("RESULT ") :]))
        d, o = median_run(runs["direct"]), median_run(runs["ours"])
        report[algo] = {
            "steps": steps,
            "direct": {**d, "tokens_per_s": round(d["tokens"] / d["train_s"], 1)},
            "ours": {**o, "tokens_per_s": round(o["tokens"] / o["train_s"], 1)},
            "overhead_pct": round(100 * (o["wall_s"] / d["wall_s"] - 1), 1),
            **({"cpu_overhead_pct": cpu_overhead(runs)} if "cpu_s" in d else {}),
            "wall_s_runs": {side: [r["wall_s"] for r in rs] for side, rs in runs.items()},
        }
        print(
            f"{algo}: direct {d['wall_s']:.1f} s, ours {o['wall_s']:.1f} s, overhead {report[algo]['overhead_pct']:+.1f}%", file=sys.stderr
        )
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
