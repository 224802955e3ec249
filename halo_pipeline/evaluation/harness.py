"""Run lm-evaluation-harness on a model and normalize what it returns.

Runtimes: `hf` (an HF directory, or a PEFT adapter on its base), `gguf` and `mlx` (in-process in their
runtime, `runtime_lm.RuntimeLM`), `endpoint` (lm-eval's `local-chat-completions` against an OpenAI-compatible
endpoint; generation tasks). Tasks: lm-eval's own (they need their datasets: offline, a clear error)
and local task YAMLs from include paths — the shipped ones in `conf/eval_tasks/` always.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from halo_pipeline.runtimes.constraints import ResponseFormat

SHIPPED_TASKS = Path(__file__).resolve().parent.parent / "conf" / "eval_tasks"


class EvalTaskUnavailable(RuntimeError):
    """A task that cannot run here: unknown, or its dataset is unreachable."""


def shipped_tasks_dir() -> Path:
    from importlib.resources import files

    packaged = Path(str(files("halo_pipeline.conf"))) / "eval_tasks"
    return packaged if packaged.is_dir() else SHIPPED_TASKS


def local_task_names(dirs: list[Path]) -> dict[str, Path]:
    """task name -> YAML for every task YAML in these directories (recursively)."""
    names = {}
    for d in dirs:
        for path in sorted(d.rglob("*.yaml")):
            try:
                doc = yaml.safe_load(path.read_text())
            except yaml.YAMLError:
                continue  # lm-eval YAMLs with !function tags: lm-eval reads them itself
            if isinstance(doc, dict) and isinstance(doc.get("task"), str):
                names[doc["task"]] = path
    return names


_TASK_NAME = re.compile(r"^\s*-?\s*(?:task|group|tag):\s*['\"]?([A-Za-z0-9_.\-]+)", re.M)


def lm_eval_task_names() -> set[str]:
    """Every task, group and tag name lm-eval ships, read from its task YAMLs without importing it (validation stays
    fast): a superset (subtask lists count too), enough to tell a misspelt name. Indexed once per lm-eval version, in
    HALO_PIPELINE_HOME (~/.cache/halo-pipeline)."""
    import importlib.util
    import os
    from importlib.metadata import PackageNotFoundError, version

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return set()
    try:
        tag = version("lm_eval")
    except PackageNotFoundError:
        tag = "unknown"
    home = Path(os.environ.get("HALO_PIPELINE_HOME", Path.home() / ".cache" / "halo-pipeline"))
    index = home / "lm_eval" / f"task-names-{tag}.json"
    try:
        return set(json.loads(index.read_text()))
    except (OSError, ValueError):
        pass
    names: set[str] = set()
    for path in (Path(list(spec.submodule_search_locations)[0]) / "tasks").rglob("*.yaml"):
        names.update(_TASK_NAME.findall(path.read_text(errors="ignore")))
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(sorted(names)))
        tmp.replace(index)
    except OSError:
        pass  # a read-only home: index again next time
    return names


def unknown_tasks(tasks: list[str], include: list[Path]) -> dict[str, str]:
    """Task names that are neither local (the shipped tasks, `include`) nor lm-eval's, each with a hint."""
    from halo_pipeline.engine.errors import did_you_mean

    local = set(local_task_names([shipped_tasks_dir(), *[d for d in include if d.is_dir()]]))
    missing = [t for t in tasks if t not in local]
    if not missing:
        return {}
    known = lm_eval_task_names()
    if not known:  # lm-eval is not installed: the run says so
        return {}
    found = {}
    for task in missing:
        if task not in known:
            close = did_you_mean(task, local) or did_you_mean(task, known)
            found[task] = close or f"local tasks: {', '.join(sorted(local))}; or an lm-eval task (`lm-eval ls tasks`)"
    return found


def stage_tasks(dirs: list[Path], into: Path) -> Path:
    """Copy task directories, making `dataset_kwargs.data_files` paths absolute (relative to their YAML),
    so a task directory works from anywhere — lm-eval would resolve them against the working directory."""
    into.mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(dirs):
        target = into / f"{i}-{d.name}"
        shutil.copytree(d, target, dirs_exist_ok=True)
        for path in target.rglob("*.yaml"):
            source = d / path.relative_to(target)
            try:
                doc = yaml.safe_load(path.read_text())
            except yaml.YAMLError:
                continue
            files = (doc or {}).get("dataset_kwargs", {}).get("data_files") if isinstance(doc, dict) else None
            if not files:
                continue

            def absolute(p: str, base: Path = source.parent) -> str:
                return p if "://" in p or Path(p).is_absolute() else str((base / p).resolve())

            if isinstance(files, str):
                doc["dataset_kwargs"]["data_files"] = absolute(files)
            elif isinstance(files, dict):
                doc["dataset_kwargs"]["data_files"] = {
                    k: [absolute(x) for x in v] if isinstance(v, list) else absolute(v) for k, v in files.items()
                }
            path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return into


def normalize(raw: dict[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """lm-eval's `{"acc,none": .., "acc_stderr,none": ..}` -> `{task: {"acc": {"value", "stderr"}}}`.
    A metric under a named filter keeps it (`exact_match[strip]`) when a task reports several filters."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for task, metrics in raw.get("results", {}).items():
        pairs = [k.split(",", 1) for k in metrics if "," in k and "_stderr," not in k]
        filters_per_metric: dict[str, set[str]] = {}
        for metric, flt in pairs:
            filters_per_metric.setdefault(metric, set()).add(flt)
        entry: dict[str, dict[str, float | None]] = {}
        for metric, flt in pairs:
            name = metric if len(filters_per_metric[metric]) == 1 else f"{metric}[{flt}]"
            stderr = metrics.get(f"{metric}_stderr,{flt}")
            entry[name] = {
                "value": float(metrics[f"{metric},{flt}"]),
                "stderr": float(stderr) if isinstance(stderr, int | float) else None,
            }
        out[task] = entry
    return out


def evaluate(
    runtime: str,
    tasks: list[str],
    work: Path,
    model_path: Path | None = None,
    adapter: Path | None = None,
    include: list[Path] | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    base_url: str | None = None,
    endpoint_model: str | None = None,
    apply_chat_template: bool | None = None,
    seed: int = 0,
    backend: Any = None,
    base: Any = None,
    response_format: ResponseFormat | None = None,
) -> dict[str, Any]:
    """simple_evaluate on one runtime; returns lm-eval's raw output (with per-sample logs under "samples"). A
    `response_format` constrains every generated answer: in process (hf then runs in its runtime too, not through
    lm-eval's batched hf), or sent with each request to an endpoint."""
    import lm_eval
    import lm_eval.evaluator
    from lm_eval.tasks import TaskManager

    from halo_pipeline.runtimes import as_backend

    backend = as_backend(backend)

    # lm-eval shells out to `git describe` in the working directory: git's "fatal: not a git repository"
    # lands on the terminal outside a checkout, and the user's commit has nothing to do with the model's scores.
    lm_eval.evaluator.get_git_commit_hash = lambda: None

    dirs = [shipped_tasks_dir(), *(include or [])]
    local = local_task_names(dirs)
    # indexing lm-eval's thousands of task YAMLs takes ~20 s: skip it when every task is local
    manager = TaskManager(include_path=[str(stage_tasks(dirs, work / "tasks"))], include_defaults=not set(tasks) <= set(local))
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise EvalTaskUnavailable(
            f"unknown eval task(s) {unknown}: not an lm-eval task and not in the task directories "
            f"({', '.join(map(str, dirs))}); local tasks: {', '.join(sorted(local))}"
        )
    model: Any
    model_args: dict[str, Any] = {}
    if runtime in ("gguf", "mlx") or (runtime == "hf" and response_format is not None):
        # in-process in their own runtime (log-likelihoods scored as hf does; a constraint masks each greedy token)
        from halo_pipeline import runtimes
        from halo_pipeline.evaluation.runtime_lm import RuntimeLM

        loaded = runtimes.load(adapter or model_path, backend, base=base)  # type: ignore[arg-type]
        constraint = loaded.grammars.compile(response_format.spec()) if response_format is not None else None
        model = RuntimeLM(loaded, constraint=constraint)
    elif runtime == "hf":  # lm-eval's own, batched; on the backend's device and dtype
        model, model_args = "hf", {"pretrained": str(model_path), "dtype": backend.dtype, "device": backend.device}
        if adapter is not None:
            model_args["peft"] = str(adapter)
    elif runtime == "endpoint":
        model = "local-chat-completions"
        model_args = {
            "model": endpoint_model or "default",
            "base_url": base_url,
            "num_concurrent": 2,
            "max_retries": 2,
            "tokenized_requests": False,
        }
        apply_chat_template = True if apply_chat_template is None else apply_chat_template
        if response_format is not None:
            model, model_args = constrained_api(model_args, response_format), {}
    else:
        raise ValueError(f"unknown eval runtime '{runtime}' (hf, gguf, mlx, endpoint)")
    try:
        raw = lm_eval.simple_evaluate(
            model=model,
            model_args=model_args or None,
            tasks=tasks,
            num_fewshot=num_fewshot,
            batch_size=batch_size if runtime == "hf" else None,
            limit=limit,
            task_manager=manager,
            apply_chat_template=bool(apply_chat_template),
            log_samples=True,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            bootstrap_iters=1000,
        )
    except Exception as exc:
        raise _explain(exc, tasks, manager, dirs) from exc
    if raw is None:
        raise RuntimeError("lm-eval returned no results")
    return dict(raw)


def constrained_api(model_args: dict[str, Any], response_format: ResponseFormat) -> Any:
    """lm-eval's `local-chat-completions` whose every request carries the constraint (OpenAI's response_format, or
    vLLM's guided_* that `serve` reads too) and no stop strings (they would cut a constrained answer short)."""
    from lm_eval.models.openai_completions import LocalChatCompletion

    fields = response_format.openai()
    fields |= fields.pop("extra_body", {})  # over HTTP the client's extra_body is the request's own fields

    class ConstrainedChatCompletion(LocalChatCompletion):
        def _create_payload(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            payload = dict(super()._create_payload(*args, **kwargs))
            payload.pop("stop", None)
            return payload | fields

    return ConstrainedChatCompletion(**model_args)


def _explain(exc: Exception, tasks: list[str], manager: Any, dirs: list[Path]) -> Exception:
    text = f"{type(exc).__name__}: {exc}"
    offline = any(
        s in text
        for s in ("ConnectionError", "offline", "Couldn't reach", "resolve", "LocalEntryNotFound", "Max retries", "HF_HUB_OFFLINE")
    )
    if not offline:
        return exc
    local = local_task_names(dirs)
    needs = []
    for task in tasks:
        if task in local:
            continue
        entry = manager.task_index.get(task)
        dataset = (getattr(entry, "cfg", None) or {}).get("dataset_path")
        needs.append(f"{task} (dataset {dataset or 'from the hub'})")
    return EvalTaskUnavailable(
        f"lm-eval task(s) {', '.join(needs) or tasks} need datasets from the Hugging Face hub, which is unreachable "
        f"here ({text[:200]}). Offline, use local tasks ({', '.join(sorted(local))}) or your own task YAML + JSONL "
        "via include_path."
    )


# lm-eval's record of one evaluation run (when, how long, on which machine): not part of the result
RUN_KEYS = {
    "date", "start_time", "end_time", "total_evaluation_time_seconds", "pretty_env_info", "transformers_version", "git_hash",
    "upper_git_hash",
}  # fmt: skip


def content_only(obj: Any, work: Path) -> Any:
    """lm-eval's output without timestamps and with paths made relative to the work dir (same inputs, same bytes)."""
    if isinstance(obj, dict):
        return {k: content_only(v, work) for k, v in obj.items() if k not in RUN_KEYS}
    if isinstance(obj, list):
        return [content_only(v, work) for v in obj]
    if isinstance(obj, str) and str(work) in obj:
        return obj.replace(str(work), "<work>")
    return obj


def save(raw: dict[str, Any], normalized: dict[str, Any], report_dir: Path, work: Path) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "eval.json").write_text(json.dumps(normalized, indent=2, sort_keys=True) + "\n")
    keep = content_only({k: v for k, v in raw.items() if k != "samples"}, work)
    (report_dir / "lm_eval_raw.json").write_text(json.dumps(keep, indent=2, sort_keys=True, default=str) + "\n")
    with open(report_dir / "samples.jsonl", "w") as f:  # per request: the doc, what the model answered, its score
        for task, samples in raw.get("samples", {}).items():
            # lm-eval logs a sample's scores under the metric's bare name (`acc`), its results as `acc,<filter>`
            names = sorted({k.split(",", 1)[0] for k in raw["results"].get(task, {}) if "," in k and "_stderr," not in k})
            for s in samples:
                row = {"task": task, "doc_id": s.get("doc_id"), "doc": s.get("doc"), "target": s.get("target")}
                row |= {"resps": s.get("filtered_resps"), "filter": s.get("filter"), **{m: s[m] for m in names if m in s}}
                f.write(json.dumps(row, default=str) + "\n")


def plot(normalized: dict[str, Any], path: Path, title: str) -> bool:
    bars = [
        (f"{task}\n{metric}", m["value"], m["stderr"])
        for task, metrics in normalized.items()
        for metric, m in metrics.items()
        if "perplexity" not in metric and metric != "bits_per_byte"  # unbounded: a table, not a 0-1 bar
    ]
    if not bars:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.4 * len(bars) + 2, 3))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.bar(range(len(bars)), [b[1] for b in bars], yerr=[b[2] or 0 for b in bars], color="#4c72b0", capsize=3)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True
