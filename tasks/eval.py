"""eval: lm-evaluation-harness on the model a pipeline produced — HF, GGUF or a running endpoint.

The `model` input (an HF directory, a GGUF export, an MLX directory, or an adapter applied to its
base) is evaluated with `lm_eval.simple_evaluate`: `runtime: auto` picks lm-eval's own `hf` for HF
directories and PEFT adapters (on the backend's device and dtype), and the model's own runtime in
process for GGUF (llama.cpp) and MLX (mlx-lm), scored as `hf` scores (log-likelihoods line up, a test
checks it); `runtime: endpoint` (`base_url`) evaluates an OpenAI-compatible endpoint with lm-eval's
`local-chat-completions` (generation tasks).
Tasks are lm-eval's own (their datasets must be reachable) or local YAML + JSONL tasks: the shipped
`halo_arith` (multiple choice), `halo_capitals` (generation, exact match) and `halo_prose_ppl`
(perplexity) run offline; `include_path` adds your own task directories. Results are normalized to
`{task: {metric: {value, stderr}}}` (eval.json) next to lm-eval's raw output, per-sample logs and a
chart with error bars; every value is also a step metric `<task>/<metric>` (for `runs diff` and sweep objectives),
and its standard error `<task>/<metric>_stderr` (the summary shows value +- 1.96 stderr as a 95% interval).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from halo_pipeline.engine.groups import Backend, ModelRef
from halo_pipeline.engine.step import Artifact, Params, Renamed, RunContext, step
from halo_pipeline.runtimes.constraints import ResponseFormat, response_format_problems


class EvalParams(Params):
    renamed: ClassVar[dict[str, Renamed]] = {"engine": Renamed("runtime", {"api": "endpoint"}), "api_model": Renamed("endpoint_model")}

    tasks: list[str] = Field(default_factory=lambda: ["halo_arith"], min_length=1, description="lm-eval task names (local or lm-eval's).")
    include_path: list[str] = Field(default_factory=list, description="Directories of your own task YAMLs (data_files relative to them).")
    runtime: Literal["auto", "hf", "gguf", "mlx", "endpoint"] = Field(
        "auto",
        description="What runs the model. auto: by the model's format (gguf, mlx; hf for HF directories and PEFT adapters), "
        "endpoint when base_url is set.",
    )
    model: ModelRef | None = Field(
        None, description="The base for an adapter input (usually `${model}`), or the model when there is no input."
    )
    backend: Backend = Field(default_factory=Backend, description="Device and precision (usually `${backend}`).")
    base_url: str | None = Field(
        None, description="runtime endpoint: the endpoint's chat completions URL (http://127.0.0.1:8001/v1/chat/completions)."
    )
    endpoint_model: str | None = Field(None, description="runtime endpoint: the model name sent to the endpoint.")
    limit: int | None = Field(None, ge=1, description="Documents per task (None: all).")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples (None: the task's default).")
    batch_size: int = Field(8, ge=1, description="hf runtime batch size.")
    apply_chat_template: bool | None = Field(None, description="Prompt through the chat template (default: only for an endpoint).")
    response_format: ResponseFormat | None = Field(
        None,
        description="Constrain generated answers (generation tasks): a JSON schema (inline or a .json file), regex, "
        "choice or grammar, as synthesize and probe take it. hf then generates in its runtime, not lm-eval's batched hf.",
    )

    @field_validator("tasks", "include_path", mode="before", json_schema_input_type=str | list[str])
    @classmethod
    def _one_name(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # `tasks: halo_arith` means [halo_arith]

    @model_validator(mode="after")
    def _consistent(self) -> EvalParams:
        from halo_pipeline.runtimes import with_endpoint

        self.runtime = with_endpoint(self.runtime, self.base_url, "an OpenAI-compatible /v1/chat/completions URL")  # type: ignore[assignment]
        return self


def check(params: EvalParams) -> list[Any]:
    from halo_pipeline.runtimes.catalog import check_reference

    problems: list[Any] = [("model", p) for p in check_reference(params.model)] + response_format_problems(params.response_format)
    if why := params.backend.unavailable():
        problems.append(("backend", why))
    for path in params.include_path:
        if not Path(path).is_dir():
            problems.append(("include_path", f"include_path '{path}' is not a directory of task YAMLs"))
    from halo_pipeline.evaluation.harness import unknown_tasks

    unknown = unknown_tasks(params.tasks, [Path(p) for p in params.include_path])
    for i, task in enumerate(params.tasks):
        if task in unknown:
            problems.append((f"tasks.{i}", f"unknown eval task '{task}': not a local task YAML and not an lm-eval task; {unknown[task]}"))
    return problems


def fingerprint(params: EvalParams) -> dict[str, Any]:
    from halo_pipeline.engine.execute import external_digest
    from halo_pipeline.runtimes.catalog import fingerprint as model_fingerprint

    found: dict[str, Any] = {"include": {p: external_digest(Path(p)) for p in params.include_path if Path(p).is_dir()}}
    if params.model is not None:
        found["model"] = model_fingerprint(params.model)
    return found


def held_out(params: EvalParams) -> list[dict[str, Any]]:
    """Each task's documents are held out: no train step of the recipe may train on them."""
    return [{"label": f"lm-eval task {t}", "kind": "lm_eval", "task": t, "include": list(params.include_path)} for t in params.tasks]


def _is_deterministic(params: EvalParams) -> bool:
    return params.runtime != "endpoint"  # an endpoint can change under us


@step(
    inputs={"model": ("model", "adapter")},
    optional_inputs=("model",),
    outputs={"report": "report"},
    version="3",  # 2: samples.jsonl holds each document's scores (runs diff pairs on them); 3: eval_run.json names the runtime
    libraries=("lm-eval", "torch", "transformers", "peft", "llama-cpp-python", "mlx-lm"),
    deterministic=_is_deterministic,
    check=check,
    fingerprint=fingerprint,
    held_out=held_out,
)
def run(params: EvalParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    from halo_pipeline.evaluation import harness
    from halo_pipeline.runtimes.catalog import resolve
    from halo_pipeline.runtimes.formats import is_adapter, model_format

    artifact = inputs.get("model")
    model_path, adapter = (artifact.path if artifact else None), None
    if model_path is not None and is_adapter(model_path):
        if params.model is None:
            raise ValueError("an adapter input needs its base: set `model: ${model}`")
        model_path, adapter = resolve(params.model), artifact.path  # type: ignore[union-attr]
    elif model_path is None and params.runtime != "endpoint":
        if params.model is None:
            raise ValueError("nothing to evaluate: connect a `model` input or set `model:`")
        model_path = resolve(params.model)
    runtime: str = params.runtime
    if runtime == "auto":  # the model's own runtime; a PEFT adapter on an HF base goes through lm-eval's hf
        mlx_adapter = adapter is not None and (adapter / "adapters.safetensors").is_file()
        runtime = "mlx" if mlx_adapter else {"gguf": "gguf", "mlx": "mlx"}.get(model_format(model_path), "hf")  # type: ignore[arg-type]
    raw = harness.evaluate(
        runtime,
        params.tasks,
        ctx.path("work"),
        model_path=model_path,
        adapter=adapter,
        include=[Path(p) for p in params.include_path],
        limit=params.limit,
        num_fewshot=params.num_fewshot,
        batch_size=params.batch_size,
        base_url=params.base_url,
        endpoint_model=params.endpoint_model,
        apply_chat_template=params.apply_chat_template,
        seed=ctx.seed,
        backend=params.backend,
        base=params.model,
        response_format=params.response_format,
    )
    normalized = harness.normalize(raw)
    report_dir = ctx.path("report")
    harness.save(raw, normalized, report_dir, ctx.path("work"))
    lines = ["| task | metric | value | stderr | 95% interval |", "|---|---|---|---|---|"]
    for task, metrics in normalized.items():
        for metric, m in metrics.items():
            ctx.metrics[f"{task}/{metric}"] = m["value"]
            if m["stderr"] is not None:  # lm-eval's standard error, kept beside the value (runs show, runs diff, report)
                ctx.metrics[f"{task}/{metric}_stderr"] = m["stderr"]
            value, se = m["value"], m["stderr"]
            stderr = "" if se is None else f"{se:.4g}"
            interval = "" if se is None or value is None else f"[{value - 1.96 * se:.4g}, {value + 1.96 * se:.4g}]"
            lines.append(f"| {task} | {metric} | {m['value']:.4g} | {stderr} | {interval} |")
    ctx.summary(f"lm-eval on {runtime} ({model_path or params.base_url}):\n\n" + "\n".join(lines))
    if harness.plot(normalized, report_dir / "eval.png", f"eval ({runtime})"):
        from halo_pipeline.training.metrics import inline_image

        ctx.summary(inline_image(report_dir / "eval.png"))
    ctx.meta["report"] = {"runtime": runtime, "tasks": params.tasks}
    (report_dir / "eval_run.json").write_text(json.dumps({"runtime": runtime, "adapter": adapter is not None}, sort_keys=True) + "\n")
    return {"report": report_dir}
