"""Training on torch with TRL: sft, dpo, grpo, rm through TRL's trainers; raft as cycles of
generate -> verify -> keep the best -> SFT. Resumes from the last complete checkpoint."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from halo_pipeline.training import algorithms as alg
from halo_pipeline.training import data
from halo_pipeline.training.configs import peft_config, trainer_config
from halo_pipeline.training.distributed import barrier, gather, is_main, rank, sharded, world_size
from halo_pipeline.training.preview import load_tokenizer
from halo_pipeline.training.sampling import generate
from halo_pipeline.training.tracking import session

COMPLETE = "halo_complete.json"  # written (atomically) once a checkpoint's every file is on disk


def last_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint that finished writing: one a kill tore (no completion marker, or a
    marker whose trainer_state.json does not parse) is passed over for the previous good one."""
    found = []
    for path in root.glob("checkpoint-*") if root.is_dir() else ():
        m = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if m and (path / COMPLETE).is_file():
            try:
                json.loads((path / "trainer_state.json").read_text())
            except (OSError, ValueError):
                continue
            found.append((int(m.group(1)), path))
    return max(found)[1] if found else None


def completion_marker() -> Any:
    """A callback that marks each checkpoint complete after Trainer has written all of it (every rank's
    share of it, when distributed: rank 0 writes the marker once all ranks are past their writes)."""
    from transformers import TrainerCallback

    from halo_pipeline.engine.cache import atomic_write_json

    class MarkComplete(TrainerCallback):  # type: ignore[misc]
        def on_save(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            barrier()
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                atomic_write_json(folder / COMPLETE, {"step": state.global_step})

    return MarkComplete()


def _trim_metrics(path: Path, upto_step: int) -> None:
    """A resumed run logs again from its checkpoint: drop lines logged after it (and a torn last line)."""
    from halo_pipeline.data.rows import read_complete_jsonl

    if path.exists():
        keep = [row for row in read_complete_jsonl(path) if row.get("step", 0) <= upto_step]
        path.write_text("".join(json.dumps(row) + "\n" for row in keep))


def _load(params: Any, for_reward_model: bool = False) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from halo_pipeline.runtimes.catalog import resolve

    path = resolve(params.model)
    tokenizer = load_tokenizer(params)  # the one `halo-pipeline preview` shows the examples with
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if params.backend.attention:
        kwargs["attn_implementation"] = params.backend.attention
    if params.adapter == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
        if world_size() > 1:  # each rank quantizes its own copy onto its own GPU
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    torch.manual_seed(params.seed)
    if for_reward_model:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
        model.config.pad_token_id = tokenizer.pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model, tokenizer


def _snapshot(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _changed(before: dict[str, Any], model: Any, full: dict[str, Any] | None = None) -> bool:
    after = full if full is not None else dict(model.named_parameters())  # sharded: the gathered state dict
    return any(n in after and not bool((after[n].detach().cpu() == t.cpu()).all()) for n, t in before.items())


def _full_state(trainer: Any) -> dict[str, Any]:
    """The whole model's state dict from FSDP/DeepSpeed shards (a collective: every rank calls it; rank 0 gets it)."""
    wrapped = trainer.model_wrapped if getattr(trainer, "is_deepspeed_enabled", False) else trainer.model
    return dict(trainer.accelerator.get_state_dict(wrapped) or {})


def _continue(model: Any, init: Path) -> Any:
    """The base with the `init` adapter loaded trainable: training continues its weights (an SFT warm-up
    before GRPO, say). TRL then uses the base with the adapter disabled as its DPO/GRPO reference."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(init), is_trainable=True)


def train_torch(params: Any, rows: list[dict[str, Any]], ctx: Any, init: Path | None = None) -> dict[str, Any]:
    import warnings

    import datasets

    datasets.disable_progress_bars()  # the engine shows the step's progress
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")  # TRL's use of renamed APIs
    algo = params.algorithm
    if isinstance(algo, alg.RAFT):
        return _raft(params, rows, ctx, init)
    model, tokenizer = _load(params, for_reward_model=isinstance(algo, alg.RM))
    if init is not None:
        model = _continue(model, init)
    chat = params.use_chat_template and bool(getattr(tokenizer, "chat_template", None))
    config = trainer_config(params, ctx.scratch("checkpoints"), ctx.tracking)
    trainer = _trainer(params, model, tokenizer, chat, rows, config, ctx, new_adapter=init is None)
    _quiet(trainer)
    before = _snapshot(trainer.model)
    resume = last_checkpoint(ctx.scratch("checkpoints"))
    if resume is not None:
        step = json.loads((resume / "trainer_state.json").read_text())["global_step"]
        ctx.log.info("resuming from %s (step %d)", resume.name, step)
        if is_main():  # rank 0 alone writes metrics.jsonl
            _trim_metrics(ctx.path("metrics.jsonl"), step)
    elif is_main():
        ctx.path("metrics.jsonl").unlink(missing_ok=True)  # logged by a run killed before its first checkpoint
    with session(ctx.tracking, trainer):  # the step's tracker run, which TRL's callback logs into live
        output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    full = _full_state(trainer) if sharded(params) else None
    summary = _summary(trainer, output, before, resume, full)
    if is_main():
        _save(params, trainer.model, tokenizer, ctx.path("model"), full)
    barrier()  # no rank leaves (and takes the process group down) before the model is saved
    return summary


def _trainer(
    params: Any, model: Any, tokenizer: Any, chat: bool, rows: list[dict[str, Any]], config: Any, ctx: Any, new_adapter: bool = True
) -> Any:
    import trl
    from datasets import Dataset

    from halo_pipeline.training.metrics import callback

    algo = params.algorithm
    callbacks = [callback(ctx.path("metrics.jsonl"), ctx.on_progress, ctx.log), completion_marker()]
    if params.probe_every is not None:
        from halo_pipeline.training.midprobe import callback as probe_callback

        callbacks.append(probe_callback(params, tokenizer, chat, ctx.path("metrics.jsonl"), ctx.log))
    common = {"model": model, "args": config, "processing_class": tokenizer, "callbacks": callbacks}
    task_type = "SEQ_CLS" if isinstance(algo, alg.RM) else "CAUSAL_LM"
    common["peft_config"] = peft_config(params, task_type=task_type) if new_adapter else None  # else: the init adapter trains on
    if isinstance(algo, alg.SFT):
        dataset = Dataset.from_list(data.sft_rows(rows, chat, params.system_prompt))
        return trl.SFTTrainer(**common, train_dataset=dataset)
    if isinstance(algo, alg.DPO):
        dataset = Dataset.from_list(data.preference_rows(rows, chat, params.system_prompt))
        return trl.DPOTrainer(**common, train_dataset=dataset)
    if isinstance(algo, alg.RM):
        dataset = Dataset.from_list(data.preference_rows(rows, chat, params.system_prompt))
        return trl.RewardTrainer(**common, train_dataset=dataset)
    if isinstance(algo, alg.GRPO):
        dataset = Dataset.from_list(data.prompt_rows(rows, chat, params.system_prompt))
        return trl.GRPOTrainer(**common, train_dataset=dataset, reward_funcs=[_reward_fn(params)])
    raise ValueError(f"unknown algorithm {algo.name}")


def _quiet(trainer: Any) -> None:
    """Metrics go to metrics.jsonl and the engine's progress, not as dicts printed to stdout."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def _reward_fn(params: Any) -> Any:
    from halo_pipeline.verifiers import build_verifier

    verifier = build_verifier(params.verifier)
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


def _summary(trainer: Any, output: Any, before: dict[str, Any], resumed: Path | None, full: dict[str, Any] | None = None) -> dict[str, Any]:
    history = [h for h in trainer.state.log_history if "loss" in h]
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    summary: dict[str, Any] = {
        "steps": trainer.state.global_step,
        "final_loss": history[-1]["loss"] if history else output.training_loss,
        "weights_changed": _changed(before, trainer.model, full),
        "tokens": int(trainer.state.num_input_tokens_seen or 0),
        "train_s": round(output.metrics.get("train_runtime", 0.0), 3),
        "resumed_from": resumed.name if resumed else None,
        "trainable_params": sum(t.numel() for t in before.values()),
    }
    if rewards:
        summary["mean_reward"] = round(sum(rewards) / len(rewards), 4)
    return summary


def _save(params: Any, model: Any, tokenizer: Any, out: Path, state_dict: dict[str, Any] | None = None) -> None:
    from halo_pipeline.runtimes.catalog import fingerprint, stable_adapter_config

    merge = params.adapter != "none" and isinstance(params.algorithm, alg.RM)
    if merge:  # reward models ship merged, so the reward_model verifier loads them as one directory
        model = model.merge_and_unload()
    model.save_pretrained(out, **({"state_dict": state_dict} if state_dict is not None else {}))
    tokenizer.save_pretrained(out)
    stable_adapter_config(out)
    provenance = {
        "base": params.model.model_dump(exclude_none=True),
        "base_fingerprint": fingerprint(params.model),
        "algorithm": params.algorithm.model_dump(),
        "adapter": params.adapter,
        "kind": "adapter" if params.adapter != "none" and not merge else "model",
    }
    (out / "halo_provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------- RAFT


def _raft(params: Any, rows: list[dict[str, Any]], ctx: Any, init: Path | None = None) -> dict[str, Any]:
    """Cycles of: sample N completions per prompt, verify, keep each prompt's best (reward >= threshold,
    never 0), SFT one pass on those. Prompts are balanced: at most one kept sample per prompt."""
    import time

    import trl
    from datasets import Dataset
    from peft import get_peft_model

    from halo_pipeline.training.metrics import callback
    from halo_pipeline.verifiers import build_verifier

    algo = params.algorithm
    model, tokenizer = _load(params)
    chat = params.use_chat_template and bool(getattr(tokenizer, "chat_template", None))
    lora = peft_config(params)
    if init is not None:
        model = _continue(model, init)
    elif lora is not None:
        model = get_peft_model(model, lora)
    before = _snapshot(model)
    verifier = build_verifier(params.verifier)
    prompts = data.prompt_rows(rows, False, None)
    metrics_path = ctx.path("metrics.jsonl")
    state_root = ctx.scratch("raft")
    progress: dict[str, Any] = {"cycle": 0, "step": 0, "tokens": 0, "train_s": 0.0, "losses": [], "rewards": []}
    resumed = _raft_resume(model, state_root)
    if resumed is not None:
        progress = resumed
        ctx.log.info("resuming RAFT after cycle %d of %d", progress["cycle"], algo.cycles)
        if is_main():
            _keep_lines(metrics_path, progress["metric_lines"])  # what the unfinished cycle logged goes
    elif is_main():
        metrics_path.unlink(missing_ok=True)
    step, tokens, train_s = progress["step"], progress["tokens"], progress["train_s"]
    losses, cycle_rewards = list(progress["losses"]), list(progress["rewards"])
    for cycle in range(progress["cycle"], algo.cycles):
        samples, scores = _sample_and_verify(model, tokenizer, prompts, algo, params, chat, verifier, cycle)
        kept, flat = [], iter(scores)
        rewards = []
        for p, cs in zip(prompts, samples, strict=True):
            scored = [(next(flat), c) for c in cs]
            rewards += [r for r, _ in scored]
            best_reward, best = max(scored, key=lambda x: x[0])
            if best_reward > 0 and best_reward >= algo.reward_threshold:
                kept.append({"prompt": p["task_prompt"], "completion": best})
        mean_reward = sum(rewards) / len(rewards) if rewards else 0.0
        cycle_rewards.append(mean_reward)
        if is_main():
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "cycle": cycle, "reward": round(mean_reward, 4), "kept": len(kept)}) + "\n")
        ctx.log.info("raft cycle %d: mean reward %.3f, kept %d of %d prompts", cycle + 1, mean_reward, len(kept), len(prompts))
        if ctx.on_progress:
            ctx.on_progress(cycle, algo.cycles)
        if not kept:  # nothing good enough to learn from this round: never train on reward-0 samples
            _raft_save(model, state_root, cycle + 1, step, tokens, train_s, losses, cycle_rewards, metrics_path)
            continue
        config = trainer_config(params, ctx.scratch("checkpoints") / f"cycle-{cycle}")
        trainer = trl.SFTTrainer(
            model=model,
            args=config,
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(data.sft_rows(kept, chat, params.system_prompt)),
            callbacks=[callback(metrics_path, None)],
        )
        _quiet(trainer)
        started = time.time()
        out = trainer.train()
        train_s += time.time() - started
        step += trainer.state.global_step
        tokens += int(trainer.state.num_input_tokens_seen or 0)
        losses.append(out.training_loss)
        model = trainer.model
        _raft_save(model, state_root, cycle + 1, step, tokens, train_s, losses, cycle_rewards, metrics_path)
    if ctx.on_progress:
        ctx.on_progress(algo.cycles, algo.cycles)

    if is_main():
        _save(params, model, tokenizer, ctx.path("model"))
    barrier()
    return {
        "steps": step,
        "final_loss": losses[-1] if losses else None,
        "weights_changed": _changed(before, model),
        "tokens": tokens,
        "train_s": round(train_s, 3),
        "mean_reward": round(cycle_rewards[-1], 4) if cycle_rewards else None,
        "reward_by_cycle": [round(r, 4) for r in cycle_rewards],
        "trainable_params": sum(t.numel() for t in before.values()),
    }


def _keep_lines(path: Path, n: int) -> None:
    from halo_pipeline.data.rows import read_complete_jsonl

    if path.exists():
        path.write_text("".join(json.dumps(row) + "\n" for row in read_complete_jsonl(path)[:n]))


def _raft_save(
    model: Any, root: Path, cycle: int, step: int, tokens: int, train_s: float, losses: list[float], rewards: list[float], metrics: Path
) -> None:
    """After a completed cycle: its trainable weights and counters, renamed into place whole (a kill leaves the previous cycle).
    Distributed: rank 0 writes, and every rank waits for it."""
    if is_main():
        _raft_write(model, root, cycle, step, tokens, train_s, losses, rewards, metrics)
    barrier()


def _raft_write(
    model: Any, root: Path, cycle: int, step: int, tokens: int, train_s: float, losses: list[float], rewards: list[float], metrics: Path
) -> None:
    import shutil

    from safetensors.torch import save_file

    from halo_pipeline.engine.cache import atomic_write_json

    tmp = root / f".cycle-{cycle}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}, str(tmp / "trainable.safetensors"))
    lines = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    state = {
        "cycle": cycle,
        "step": step,
        "tokens": tokens,
        "train_s": train_s,
        "losses": losses,
        "rewards": rewards,
        "metric_lines": lines,
    }
    atomic_write_json(tmp / "state.json", state)
    final = root / f"cycle-{cycle}"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for older in root.glob("cycle-*"):
        if older != final:
            shutil.rmtree(older, ignore_errors=True)


def _raft_resume(model: Any, root: Path) -> dict[str, Any] | None:
    """Load the last completed cycle's weights into `model`; its counters, or None to start afresh."""
    done = sorted(((int(p.name.split("-")[1]), p) for p in root.glob("cycle-*") if (p / "state.json").is_file()), reverse=True)
    if not done:
        return None
    from safetensors.torch import load_file

    path = done[0][1]
    missing = set(n for n, p in model.named_parameters() if p.requires_grad) - set(
        weights := load_file(str(path / "trainable.safetensors"))
    )
    if missing:
        return None  # saved for another configuration: start again
    model.load_state_dict(weights, strict=False)
    return dict(json.loads((path / "state.json").read_text()))


def _sample_and_verify(
    model: Any, tokenizer: Any, prompts: list[dict[str, Any]], algo: Any, params: Any, chat: bool, verifier: Any, cycle: int
) -> tuple[list[list[str]], list[float]]:
    """Each prompt's samples and their rewards (flat, in prompt order). Distributed, each rank samples and verifies
    every world_size-th prompt and all ranks gather the same lists, so they keep (and train on) the same rows."""
    me, world = rank(), world_size()
    mine = prompts[me::world]
    my_samples = _sample(model, tokenizer, mine, algo, params, chat, seed=params.seed + cycle + 7919 * me)
    results = verifier.verify_batch(
        [{**p, "prompt": p["task_prompt"], "completion": c} for p, cs in zip(mine, my_samples, strict=True) for c in cs]
    )
    shares = gather((my_samples, [r.reward for r in results]))
    samples: list[list[str]] = [[] for _ in prompts]
    by_prompt: list[list[float]] = [[] for _ in prompts]
    for r, (share, rewards) in enumerate(shares):
        flat = iter(rewards)
        for j, completions in enumerate(share):
            samples[r + j * world] = completions
            by_prompt[r + j * world] = [next(flat) for _ in completions]
    return samples, [x for rs in by_prompt for x in rs]


def _sample(model: Any, tokenizer: Any, prompts: list[dict[str, Any]], algo: Any, params: Any, chat: bool, seed: int) -> list[list[str]]:
    return generate(
        model, tokenizer, [p["task_prompt"] for p in prompts], chat, params.system_prompt, algo.samples_per_prompt,
        algo.temperature, algo.max_completion_length, algo.batch_size, seed,
    )  # fmt: skip
