"""train: fine-tune the recipe's model with TRL (sft, dpo, orpo, simpo, kto, grpo, raft, rm, gkd) or MLX (sft, dpo, orpo, grpo on backend=mlx).

The `algorithm` group picks the method and its hyperparameters (`conf/algorithm/*.yaml`); the
`backend` group the device and precision; `adapter` LoRA / DoRA / rsLoRA / PiSSA / QLoRA (CUDA) or
full fine-tuning (`none`). Inputs: an `sft_dataset` for sft, a `preference_dataset` for dpo, orpo, simpo
and rm, a verifier's samples (an `sft_dataset` with `verified` / `reward` / `label`) for kto, prompts (a
`prompts` or `sft_dataset` artifact, task fields kept) for grpo and raft, which reward with the recipe's
verifier (grpo: or several, `rewards:`), an `sft_dataset` for gkd, which distils from
`algorithm.teacher`. An optional `init` adapter is trained on instead of a new one (an SFT
warm-up before GRPO; docs/training.md): a PEFT adapter on a torch backend, an MLX one on backend=mlx.
The output `model` is a PEFT `adapter` that records its base model, or a full `model` directory (full
fine-tuning); with algorithm=rm a `reward_model` (the adapter with its score head, or the whole model), which
the `reward_model` verifier loads.

Checkpoints are written every `save_every` steps; a killed run, rerun, resumes from the last
complete checkpoint (same global step, optimizer and scheduler state; RAFT from its last complete
cycle). Checkpoints are removed only once the trained model is committed to the cache. Per-step metrics go to
`metrics.jsonl`, curves to `curves.png` (also in the Prefect artifact), and
`training_summary.json` holds steps, tokens, final loss, whether the weights changed, wall time and
tokens/s.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import Field, model_validator

from halo_pipeline.data import sources
from halo_pipeline.data.rows import read_rows
from halo_pipeline.engine.step import Artifact, RunContext, TypeByParam, step
from halo_pipeline.training import algorithms
from halo_pipeline.training.params import TrainingParams


class TrainParams(TrainingParams):
    algorithm: algorithms.AnySettings = Field(
        default_factory=lambda: algorithms.parse({"name": "sft"}), description="Algorithm node (usually `${algorithm}`)."
    )

    @property
    def output_kind(self) -> str:
        if algorithms.get(self.algorithm.name).reward_model:
            return "reward_model"  # scores text, generates none: a verifier's model, not one to serve, probe or convert
        return "model" if self.adapter == "none" else "adapter"

    @model_validator(mode="after")
    def _algorithm_fits(self) -> TrainParams:
        check = algorithms.get(self.algorithm.name).check  # e.g. grpo: the batch a multiple of num_generations
        if check is not None and (problem := check(self.algorithm, self)):
            raise ValueError(problem)
        return self


def accepts(params: TrainParams, name: str) -> tuple[str, ...]:
    return ("adapter",) if name == "init" else algorithms.input_types(params.algorithm.name)


def check(params: TrainParams) -> list[Any]:
    from halo_pipeline.runtimes.catalog import check_reference
    from halo_pipeline.verifiers import check_spec

    problems: list[Any] = [("model", p) for p in check_reference(params.model)]
    if (teacher := getattr(params.algorithm, "teacher", None)) is not None:  # gkd: the model it distils from
        problems += [("algorithm.teacher", p) for p in check_reference(teacher)]
    backend = params.backend
    if why := backend.unavailable():
        problems.append(("backend", why))
    name = params.algorithm.name
    algorithm = algorithms.get(name)
    if algorithm.verifier:
        if params.verifier is None and not params.rewards:
            problems.append(("verifier", f"{name} rewards with a verifier: set `verifier: ${{verifier}}` in the train step"))
        problems += check_spec(params.verifier)
    if params.rewards:
        if name != "grpo" or backend.engine == "mlx":
            problems.append(
                (
                    "rewards",
                    f"rewards (several weighted verifiers) are GRPO's reward functions on a torch backend, not {name} on "
                    f"{backend.name}: use `verifier:` (one verifier, or `{{name: weighted, verifiers: [...], weights: [...]}}`)",
                )
            )
        for i, reward in enumerate(params.rewards):
            problems += check_spec(reward.verifier, f"rewards.{i}.verifier")
    if backend.engine == "mlx" and getattr(params.algorithm, "zero_variance_groups", "keep") != "keep":
        problems.append(("algorithm.zero_variance_groups", "drop runs in TRL's GRPO trainer (torch backends): keep it `keep` on mlx"))
    if params.adapter == "qlora" and not backend.on_gpu:
        problems.append(
            ("adapter", "adapter qlora quantizes the base to 4 bits with bitsandbytes, which needs CUDA: use backend=cuda, or adapter=lora")
        )
    if params.probe_every is not None:
        if not algorithm.probe or backend.engine == "mlx":
            with_probe = ", ".join(n for n in algorithms.NAMES if algorithms.get(n).probe)
            problems.append(("probe_every", f"probe_every runs with TRL's {with_probe} trainers, not {name} on {backend.name}"))
        if params.probe_verifier is None and params.verifier is None:
            problems.append(("probe_verifier", "probe_every scores the probe with a verifier: set probe_verifier (or verifier)"))
        problems += check_spec(params.probe_verifier, "probe_verifier")
    if backend.engine == "mlx":  # sft, dpo, orpo, grpo (mlx-lm, mlx-lm-lora), and what of their settings MLX runs
        from halo_pipeline.training.mlx import problems as mlx_problems

        problems += mlx_problems(params)
    from halo_pipeline.training.distributed import problems as distributed_problems
    from halo_pipeline.training.gpu import problems as gpu_problems

    return problems + distributed_problems(params) + gpu_problems(params)


def check_init(params: TrainParams, init: Artifact) -> None:
    """The `init` adapter must have been trained on this step's base model, and be continuable here: a PEFT adapter
    by a torch backend (adapter lora, dora, rslora or pissa), an MLX adapter (mlx-lm's) by backend=mlx."""
    from halo_pipeline.export.merging import is_mlx_adapter
    from halo_pipeline.runtimes.catalog import fingerprint as model_fingerprint
    from halo_pipeline.runtimes.formats import recorded_base_fingerprint

    made_by_mlx, here_mlx = is_mlx_adapter(init.path), params.backend.engine == "mlx"
    if made_by_mlx != here_mlx:
        made = "an MLX adapter (mlx-lm's adapters.safetensors)" if made_by_mlx else "a PEFT adapter (trained on a torch backend)"
        raise ValueError(
            f"input init ({init.path}) is {made}, which backend={params.backend.name} does not continue: train the step "
            "that made it on the same backend as this one (`backend: ${backend}` in both), or drop init"
        )
    if not here_mlx and params.adapter in ("none", "qlora"):
        raise ValueError(
            f"input init continues a LoRA adapter; this step has adapter={params.adapter}: drop init, or use adapter lora/dora/rslora/pissa"
        )
    recorded = recorded_base_fingerprint(init.path)
    if recorded is not None and recorded != model_fingerprint(params.model):
        raise ValueError(
            f"input init ({init.path}) was trained on another base model than this step's model "
            f"{params.model.name}: give both steps the same model (usually `${{model}}`)"
        )


def fingerprint(params: TrainParams) -> dict[str, Any]:
    """The base model's content, and its tokenizer's and chat template's: they decide what the examples are (and
    gkd's teacher's content)."""
    from halo_pipeline.runtimes.catalog import fingerprint as model_fingerprint
    from halo_pipeline.training.tokenization import fingerprint as tokenizer_fingerprint

    found: dict[str, Any] = {"base": model_fingerprint(params.model), "tokenizer": tokenizer_fingerprint(params.model)}
    if (teacher := getattr(params.algorithm, "teacher", None)) is not None:  # gkd learns the teacher's distributions
        found["teacher"] = model_fingerprint(teacher)
    if algorithms.get(params.algorithm.name).reward_model:  # was a merged `model`: a cached one must not stand in for it
        found["output"] = "reward_model"
    return found


def held_out(params: TrainParams) -> list[dict[str, Any]]:
    """The mid-training probe's tasks are held out too."""
    return [{"label": f"probe_source {params.probe_source}", "ref": params.probe_source}] if params.probe_every else []


def decontaminate(
    params: TrainParams,
    inputs: dict[str, Artifact],
    labels: dict[str, str],
    sets: list[dict[str, Any]],
    settings: dict[str, Any],
    cache: Any,
) -> Any:
    """Before training, cached or not: the dataset against every held-out set of the recipe (docs/data-steps.md)."""
    from halo_pipeline.data.decontaminate import before_training
    from halo_pipeline.evaluation.held_out import LOADER

    return before_training(inputs, ("dataset",), labels, sets, settings, cache, params.columns, {"lm_eval": LOADER})


@step(
    inputs={"dataset": ("sft_dataset", "preference_dataset", "prompts"), "init": "adapter"},
    optional_inputs={"init"},
    outputs={"model": TypeByParam("output_kind", {"adapter": "adapter", "model": "model", "reward_model": "reward_model"})},
    version="1",
    libraries=("torch", "transformers", "trl", "peft", "accelerate", "mlx-lm", "mlx-lm-lora"),
    deterministic=lambda p: p.backend.is_cpu,  # seeded; GPU kernels are not bit-reproducible
    check=check,
    check_inputs=sources.check_inputs,
    fingerprint=fingerprint,
    accepts=accepts,
    resumable=True,  # checkpoints (and RAFT's cycles) in the work dir: a killed run continues from the last complete one
    held_out=held_out,
    decontaminate=decontaminate,
)
def run(params: TrainParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    src = inputs["dataset"]
    init = inputs.get("init")
    if init is not None:
        check_init(params, init)
    bad: list[str] = []
    rows = list(read_rows(src.path, src.type, "skip", bad, params.columns))
    if not rows:
        raise ValueError(f"the training dataset {src.path} has no usable rows")
    from halo_pipeline.training.checks import Pending
    from halo_pipeline.training.curves import Plotter

    plotter = Plotter()  # imports matplotlib in a process of its own while the model loads and trains
    try:
        checks = Pending(params, rows, len(bad), ctx)  # beside the model's load; data_checks.json keeps their verdict
        summary = _train(params, rows, len(bad), src, init, ctx, checks)
        _report(params, ctx, summary, plotter)
    finally:
        plotter.close()
    return {"model": ctx.path("model")}


def _train(
    params: TrainParams, rows: list[dict[str, Any]], bad_rows: int, src: Artifact, init: Artifact | None, ctx: RunContext, checks: Any
) -> dict[str, Any]:
    """Train on the step's backend (the checks' verdict before the first step), and write training_summary.json."""
    started = time.time()
    if params.backend.engine == "mlx":
        from halo_pipeline.training.mlx import train_mlx

        checks.wait()
        summary = train_mlx(params, rows, ctx, init=init.path if init else None)
    elif params.distributed.launched:  # ranks in child processes, started by `accelerate launch`
        from halo_pipeline.training.distributed import launch

        checks.wait()
        summary = launch(params, (src.path, src.type), init.path if init else None, ctx)
    else:
        from halo_pipeline.training.trl_runner import train_torch

        summary = train_torch(params, rows, ctx, init=init.path if init else None, tokenizer=checks.tokenizer, ready=checks.wait)
    summary["wall_s"] = round(time.time() - started, 2)
    if summary.get("tokens") and summary.get("train_s"):
        summary["tokens_per_s"] = round(summary["tokens"] / max(summary["train_s"], 1e-9), 1)
    summary["bad_rows"] = bad_rows
    ctx.path("training_summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _report(params: TrainParams, ctx: RunContext, summary: dict[str, Any], plotter: Any) -> None:
    from halo_pipeline.training import metrics

    rows = metrics.read(ctx.path("metrics.jsonl"))
    title = f"{params.algorithm.name} · {params.adapter}"
    if plotter.draw(rows, ctx.path("curves.png"), title):
        ctx.summary(metrics.inline_image(ctx.path("curves.png")))
    ctx.metrics.update(
        {k: summary[k] for k in ("steps", "final_loss", "weights_changed", "tokens", "tokens_per_s", "mean_reward") if k in summary}
    )
    ctx.meta["model"] = {
        "base": params.model.model_dump(exclude_none=True),
        "algorithm": params.algorithm.name,
        "adapter": params.adapter,
        "format": "mlx" if params.backend.engine == "mlx" else "hf",
    }
    loss = summary.get("final_loss")
    ctx.summary(
        f"{params.algorithm.name} ({params.adapter}): {summary.get('steps')} steps, final loss "
        f"{loss if loss is None else round(loss, 4)}, weights changed: {summary.get('weights_changed')}, {summary.get('wall_s')} s."
    )
