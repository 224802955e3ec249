"""algorithm=raft: rejection-sampling fine-tuning: cycles of generate -> verify -> keep each prompt's best -> SFT
(TRL's SFTConfig / SFTTrainer for each cycle's training; the loop is this module's own). Resumes from the last
complete cycle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from halo_pipeline.training import data
from halo_pipeline.training.algorithms._base import Algorithm, Rows, Settings, TrainingParams
from halo_pipeline.training.configs import common_args, peft_config
from halo_pipeline.training.distributed import barrier, gather, is_main, rank, world_size
from halo_pipeline.training.model_io import changed, continue_adapter, load, quiet, save, snapshot
from halo_pipeline.training.sampling import generate


class RAFT(Settings):
    name: Literal["raft"]
    cycles: int = Field(2, ge=1, description="Generate-verify-train rounds.")
    samples_per_prompt: int = Field(4, ge=1, description="Completions sampled per prompt each cycle.")
    reward_threshold: float = Field(0.5, ge=0, le=1, description="Keep a prompt's best sample only if its reward reaches this (never 0).")
    temperature: float = Field(0.9, gt=0, le=2, description="Sampling temperature.")
    max_completion_length: int = Field(64, ge=1, description="Tokens per sample.")


def raft_config(algo: RAFT, params: TrainingParams, args: dict[str, Any]) -> Any:
    """Each cycle's SFT phase: loss on the kept completions."""
    import trl

    return trl.SFTConfig(**args, max_length=params.max_length, completion_only_loss=True)


def raft_train(algo: RAFT, params: TrainingParams, rows: Rows, ctx: Any, init: Path | None = None) -> dict[str, Any]:
    """Cycles of: sample N completions per prompt, verify, keep each prompt's best (reward >= threshold,
    never 0), SFT one pass on those. Prompts are balanced: at most one kept sample per prompt."""
    import time

    import trl
    from datasets import Dataset
    from peft import get_peft_model

    from halo_pipeline.training.metrics import callback
    from halo_pipeline.verifiers import build_verifier

    model, tokenizer = load(params)
    chat = params.use_chat_template and bool(getattr(tokenizer, "chat_template", None))
    lora = peft_config(params)
    if init is not None:
        model = continue_adapter(model, init)
    elif lora is not None:
        model = get_peft_model(model, lora)
    before = snapshot(model)
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
        config = raft_config(algo, params, common_args(params, algo, ctx.scratch("checkpoints") / f"cycle-{cycle}"))
        trainer = trl.SFTTrainer(
            model=model,
            args=config,
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(data.sft_examples(kept, tokenizer, chat, params.system_prompt)),
            callbacks=[callback(metrics_path, None)],
        )
        quiet(trainer)
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
        save(params, model, tokenizer, ctx.path("model"))
    barrier()
    return {
        "steps": step,
        "final_loss": losses[-1] if losses else None,
        "weights_changed": changed(before, model),
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
    model: Any, tokenizer: Any, prompts: Rows, algo: RAFT, params: TrainingParams, chat: bool, verifier: Any, cycle: int
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


def _sample(model: Any, tokenizer: Any, prompts: Rows, algo: RAFT, params: TrainingParams, chat: bool, seed: int) -> list[list[str]]:
    return generate(
        model, tokenizer, [p["task_prompt"] for p in prompts], chat, params.system_prompt, algo.samples_per_prompt,
        algo.temperature, algo.max_completion_length, algo.batch_size, seed,
    )  # fmt: skip


ALGORITHM = Algorithm(
    settings=RAFT, inputs=("prompts", "sft_dataset"), data="prompts", config=raft_config, train=raft_train, verifier=True, probe=False
)
