"""Dataset checks that stop a train step before it trains: what `halo-pipeline preview` measures (the trainer's own
preparation of every row), held to thresholds a recipe may set (`with.data_checks`). The defaults stop only on
data that is almost certainly not what its owner meant (most examples cut or dropped, empty, or pairs whose two
sides are the same); a recipe tightens them, or sets `on_fail: warn` to record and go on."""

from __future__ import annotations

import contextvars
import json
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from halo_pipeline.training.params import DataChecks, TrainingParams

EXAMPLES = 3  # the first examples, as the trainer sees them, kept for the step's report


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def evaluate(checks: DataChecks, stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Each check that applies to these statistics: `{name, value, limit, ok, what}`."""
    rows, examples = stats["rows"], stats["examples"]
    found: list[tuple[str, float, float | None, bool, str]] = []  # name, value, limit, is-a-maximum, what

    def most(name: str, value: float, limit: float | None, what: str) -> None:
        found.append((name, value, limit, True, what))

    def least(name: str, value: float, limit: float | None, what: str) -> None:
        found.append((name, value, limit, False, what))

    if stats.get("max_length") is not None:
        most(
            "max_truncated",
            _share(stats["truncated"], examples),
            checks.max_truncated,
            f"examples longer than max_length {stats['max_length']}",
        )
        most("max_dropped", _share(stats["dropped"], examples), checks.max_dropped, "examples the trainer drops")
    most("max_empty", _share(stats["empty_rows"], rows), checks.max_empty, "rows with an empty prompt, completion, side or turn")
    most(
        "max_duplicate_prompts", _share(stats["duplicate_prompts"], rows), checks.max_duplicate_prompts, "rows repeating an earlier prompt"
    )
    least("min_tokens", stats["tokens"]["p50"], checks.min_tokens, "median tokens per example")
    most("max_tokens", stats["tokens"]["p99"], checks.max_tokens, "99th-percentile tokens per example")
    pairs = stats.get("pairs")
    if pairs:
        most("max_identical_pairs", _share(pairs["identical"], pairs["pairs"]), checks.max_identical_pairs, "pairs with identical sides")
        if "rewarded" in pairs:
            most(
                "max_inverted_pairs",
                _share(pairs["inverted"], pairs["rewarded"]),
                checks.max_inverted_pairs,
                "pairs rewarded the wrong way",
            )
        least("min_chosen_longer", pairs["chosen_longer_share"], checks.min_chosen_longer, "pairs whose chosen side is longer")
        most("max_chosen_longer", pairs["chosen_longer_share"], checks.max_chosen_longer, "pairs whose chosen side is longer")
    return [
        {"name": name, "value": value, "limit": limit, "ok": value <= limit if maximum else value >= limit, "what": what}
        for name, value, limit, maximum, what in found
        if limit is not None
    ]


def failure(step: str, results: list[dict[str, Any]]) -> str | None:
    """The message that stops the step (None when every check passed)."""
    failed = [r for r in results if not r["ok"]]
    if not failed:
        return None
    parts = [f"{r['name']}: {r['what']} {r['value']} {'>' if r['name'].startswith('max') else '<'} {r['limit']}" for r in failed]
    fix = f"see them with `halo-pipeline preview RECIPE --step {step}`; fix the data, or set steps.{step}.with.data_checks.<check> (or on_fail: warn)"
    return "the training dataset fails its checks: " + "; ".join(parts) + f" ({fix})"


def before_training(params: TrainingParams, rows: list[dict[str, Any]], bad_rows: int, ctx: Any, tokenizer: Any = None) -> None:
    """Measure the dataset as the trainer will prepare it, keep the measures and the first examples
    (`data_checks.json`, shown on the report page), and stop (or warn) when a check fails."""
    checks: DataChecks = params.data_checks
    if checks.on_fail == "off":
        return
    if params.backend.engine == "mlx":  # mlx-lm prepares its own examples: TRL's preparation would not be what trains
        ctx.log.info("data checks: not run on backend=mlx")
        return
    from halo_pipeline.training.preview import preview

    shown = preview(params, rows, EXAMPLES, tokenizer=tokenizer, bad_rows=bad_rows)
    results = evaluate(checks, shown.stats)
    record = {**shown.to_json(), "checks": results, "on_fail": checks.on_fail}
    ctx.path("data_checks.json").write_text(json.dumps(record, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    failed = [r["name"] for r in results if not r["ok"]]
    ctx.metrics["data_checks"] = {"passed": not failed, "failed": failed, **{r["name"]: r["value"] for r in results}}
    message = failure(ctx.step_id, results)
    if message is None:
        return
    if checks.on_fail == "stop":
        raise ValueError(message)
    ctx.log.warning(message)
    ctx.summary(f"warning: {message}")


class Pending:
    """The data checks, running on a side thread while the model loads and the trainer is built. `wait()` returns
    once they passed (or warned) and raises their error when they stop the step.

    `tokenizer` is the step's own, loaded here first: that load imports what a tokenizer needs, so the checks'
    thread can load its own (a fast tokenizer is not to be shared between threads) without importing anything
    while the main thread does (two threads importing modules that import each other can deadlock, which Python
    reports as an import error); what the preview imports is imported here too."""

    def __init__(self, params: TrainingParams, rows: list[dict[str, Any]], bad_rows: int, ctx: Any):
        self.tokenizer: Any = None
        self._verdict: Future[None] | None = None
        if params.data_checks.on_fail == "off" or params.backend.engine == "mlx":
            before_training(params, rows, bad_rows, ctx)  # says why it does not check
            return
        from halo_pipeline.training.preview import import_modules
        from halo_pipeline.training.tokenization import load_tokenizer

        import_modules(params)
        self.tokenizer = load_tokenizer(params)
        pool = ThreadPoolExecutor(1, thread_name_prefix="halo-data-checks")
        run = contextvars.copy_context().run
        self._verdict = pool.submit(run, lambda: before_training(params, rows, bad_rows, ctx, load_tokenizer(params)))
        pool.shutdown(wait=False)  # the checks run on; the thread ends with them

    def wait(self) -> None:
        if self._verdict is not None:
            self._verdict.result()
