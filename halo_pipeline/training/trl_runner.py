"""Training on torch with TRL: the algorithm's module builds TRL's config and trainer (or runs its own loop,
as raft does); this runs it with the step's callbacks, resumes from the last complete checkpoint, and saves."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from halo_pipeline.training import algorithms
from halo_pipeline.training.configs import peft_config
from halo_pipeline.training.distributed import barrier, is_main, sharded
from halo_pipeline.training.model_io import changed, continue_adapter, load, quiet, save, snapshot
from halo_pipeline.training.params import TrainingParams
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
    share of it, when distributed: rank 0 writes the marker once all ranks are past their writes), and
    writes none at the last step: the trained model is saved right after, so that checkpoint would be written
    only to be thrown away (Trainer's own rule saves one there; with full fine-tuning it holds twice the model
    in optimizer state)."""
    from transformers import TrainerCallback

    from halo_pipeline.engine.cache import atomic_write_json

    class MarkComplete(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.max_steps > 0 and state.global_step >= state.max_steps:
                control.should_save = False  # every rank decides alike: the same step on each

        def on_save(self, args, state, control, **kwargs):
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


def _full_state(trainer: Any) -> dict[str, Any]:
    """The whole model's state dict from FSDP/DeepSpeed shards (a collective: every rank calls it; rank 0 gets it)."""
    wrapped = trainer.model_wrapped if getattr(trainer, "is_deepspeed_enabled", False) else trainer.model
    return dict(trainer.accelerator.get_state_dict(wrapped) or {})


def train_torch(
    params: TrainingParams,
    rows: list[dict[str, Any]],
    ctx: Any,
    init: Path | None = None,
    tokenizer: Any = None,
    ready: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Train and save. `tokenizer`: the step's, when already loaded. `ready` is called once the trainer is built,
    before it trains (the train step's data checks, which run meanwhile: it raises when they stop the step)."""
    import warnings

    import datasets

    datasets.disable_progress_bars()  # the engine shows the step's progress
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")  # TRL's use of renamed APIs
    algorithm = algorithms.get(params.algorithm.name)
    if algorithm.train is not None:  # its own loop (raft)
        ready()
        return algorithm.train(params.algorithm, params, rows, ctx, init)
    model, tokenizer = load(params, for_reward_model=algorithm.reward_model, tokenizer=tokenizer)
    if init is not None:
        model = continue_adapter(model, init)
    chat = params.use_chat_template and bool(getattr(tokenizer, "chat_template", None))
    config = algorithms.trainer_config(params, ctx.scratch("checkpoints"), ctx.tracking)
    try:
        trainer = _trainer(params, model, tokenizer, chat, rows, config, ctx, new_adapter=init is None)
    except Exception:
        ready()  # data the checks stop on can fail the trainer's own preparation too: their error says what is wrong
        raise
    ready()
    quiet(trainer)
    before = snapshot(trainer.model)
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
        save(params, trainer.model, tokenizer, ctx.path("model"), full, reward_model=algorithm.reward_model)
    barrier()  # no rank leaves (and takes the process group down) before the model is saved
    return summary


def _trainer(
    params: TrainingParams,
    model: Any,
    tokenizer: Any,
    chat: bool,
    rows: list[dict[str, Any]],
    config: Any,
    ctx: Any,
    new_adapter: bool = True,
) -> Any:
    from halo_pipeline.training.metrics import callback

    algo = params.algorithm
    algorithm = algorithms.get(algo.name)
    if algorithm.trainer is None:
        raise ValueError(f"algorithm {algo.name} runs its own loop, not one TRL trainer")
    callbacks = [callback(ctx.path("metrics.jsonl"), ctx.on_progress, ctx.log), completion_marker()]
    if params.probe_every is not None:
        from halo_pipeline.training.midprobe import callback as probe_callback

        callbacks.append(probe_callback(params, tokenizer, chat, ctx.path("metrics.jsonl"), ctx.log))
    common = {"model": model, "args": config, "processing_class": tokenizer, "callbacks": callbacks}
    task_type = "SEQ_CLS" if algorithm.reward_model else "CAUSAL_LM"
    common["peft_config"] = peft_config(params, task_type=task_type) if new_adapter else None  # else: the init adapter trains on
    return algorithm.trainer(algo, params, rows, chat, common)


def _summary(trainer: Any, output: Any, before: dict[str, Any], resumed: Path | None, full: dict[str, Any] | None = None) -> dict[str, Any]:
    history = [h for h in trainer.state.log_history if "loss" in h]
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    summary: dict[str, Any] = {
        "steps": trainer.state.global_step,
        "final_loss": history[-1]["loss"] if history else output.training_loss,
        "weights_changed": changed(before, trainer.model, full),
        "tokens": int(trainer.state.num_input_tokens_seen or 0),
        "train_s": round(output.metrics.get("train_runtime", 0.0), 3),
        "resumed_from": resumed.name if resumed else None,
        "trainable_params": sum(t.numel() for t in before.values()),
    }
    if rewards:
        summary["mean_reward"] = round(sum(rewards) / len(rewards), 4)
    return summary
