"""score: heuristic quality signals per row, combined with documented weights, then filters.

Components (each in [0, 1], kept on the row under `score_components`):
- `length`: 1 inside [`min_words`, `max_words`], falling linearly to 0 at half the minimum / twice the maximum.
- `alpha`: share of letters and digits among non-space characters, relative to `alpha_target`.
- `whitespace`: 1 while the whitespace share is inside [0.02, 0.4], lower outside.
- `repetition`: unique word trigrams / all word trigrams (1 = no repetition).
- `format`: with `format: python|json|regex`, 1 when the text parses / matches, else 0 (absent with `none`).
- `reward`: the row's verifier `reward` (or `chosen_reward`) when present.
- `verifier`: with `verifier:` set, the reward of that registered verifier (e.g. an LLM judge).
`score` is the weighted mean of the components present. Filters then apply in order:
`min_score`, `max_per_prompt` (best rows per prompt), then `top_k` or `top_fraction`.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from halo_pipeline.data import sources
from halo_pipeline.data.rows import OnBadRows, read_rows, write_rows
from halo_pipeline.engine.groups import VerifierSpec
from halo_pipeline.engine.step import Artifact, Params, RunContext, step

DEFAULT_WEIGHTS = {"length": 1.0, "alpha": 0.5, "whitespace": 0.5, "repetition": 1.0, "format": 1.0, "reward": 2.0, "verifier": 2.0}


class ScoreParams(Params):
    field: str | None = Field(None, description="Text field scored (default: completion, chosen, or the last message).")
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS), description="Weight per component.")
    min_words: int = Field(3, ge=0, description="Shortest length (words) that scores 1 on `length`.")
    max_words: int = Field(400, ge=1, description="Longest length (words) that scores 1 on `length`.")
    alpha_target: float = Field(0.6, gt=0, le=1, description="Letter/digit share that scores 1 on `alpha`.")
    format: Literal["none", "python", "json", "regex"] = Field("none", description="Format check for the `format` component.")
    format_regex: str | None = Field(None, description="Pattern for `format: regex` (re.search).")
    verifier: VerifierSpec | None = Field(None, description="A registered verifier scoring each row (e.g. llm_judge).")
    min_score: float | None = Field(None, ge=0, le=1, description="Drop rows scoring below this.")
    max_per_prompt: int | None = Field(None, ge=1, description="Keep at most this many (best) rows per prompt.")
    top_k: int | None = Field(None, ge=1, description="Keep the k best rows.")
    top_fraction: float | None = Field(None, gt=0, le=1, description="Keep this fraction of rows, best first.")
    on_bad_rows: OnBadRows = Field("error", description="`error` stops at a malformed row; `skip` counts it.")
    columns: dict[str, str] = Field(default_factory=dict, description=sources.COLUMNS_HELP)

    @model_validator(mode="after")
    def _check(self) -> ScoreParams:
        unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown score components {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")
        if self.top_k and self.top_fraction:
            raise ValueError("set top_k or top_fraction, not both")
        if self.format == "regex" and not self.format_regex:
            raise ValueError("format: regex needs format_regex")
        if self.min_words > self.max_words:
            raise ValueError("min_words must be <= max_words")
        return self


def row_text(row: dict[str, Any], field: str | None) -> str:
    if field:
        return str(row.get(field, ""))
    for name in ("completion", "chosen"):
        if row.get(name) is not None:
            return str(row[name])
    messages = row.get("messages") or []
    return str(messages[-1].get("content", "")) if messages else ""


def components(text: str, row: dict[str, Any], p: ScoreParams) -> dict[str, float]:
    words = text.split()
    n = len(words)
    comps: dict[str, float] = {}
    if n < p.min_words:
        comps["length"] = max(0.0, (n - p.min_words / 2) / (p.min_words / 2)) if p.min_words else 1.0
    elif n > p.max_words:
        comps["length"] = max(0.0, 1 - (n - p.max_words) / p.max_words)
    else:
        comps["length"] = 1.0
    visible = [c for c in text if not c.isspace()]
    alpha = sum(c.isalnum() for c in visible) / len(visible) if visible else 0.0
    comps["alpha"] = min(1.0, alpha / p.alpha_target)
    ws = (len(text) - len(visible)) / len(text) if text else 0.0
    comps["whitespace"] = 1.0 if 0.02 <= ws <= 0.4 else (ws / 0.02 if ws < 0.02 else max(0.0, 1 - (ws - 0.4) / 0.6))
    grams = [tuple(words[i : i + 3]) for i in range(max(0, n - 2))]
    comps["repetition"] = len(set(grams)) / len(grams) if grams else (1.0 if n else 0.0)
    if p.format == "python":
        try:
            ast.parse(text)
            comps["format"] = 1.0
        except (SyntaxError, ValueError):
            comps["format"] = 0.0
    elif p.format == "json":
        try:
            json.loads(text)
            comps["format"] = 1.0
        except ValueError:
            comps["format"] = 0.0
    elif p.format == "regex":
        comps["format"] = 1.0 if re.search(p.format_regex or "", text) else 0.0
    reward = row.get("reward", row.get("chosen_reward"))
    if isinstance(reward, int | float):
        comps["reward"] = float(min(1.0, max(0.0, reward)))
    return {k: round(v, 6) for k, v in comps.items()}


def combine(comps: dict[str, float], weights: dict[str, float]) -> float:
    total = sum(weights.get(k, 0.0) for k in comps)
    return round(sum(v * weights.get(k, 0.0) for k, v in comps.items()) / total, 6) if total else 0.0


def check(params: ScoreParams) -> list[Any]:
    from halo_pipeline.verifiers import check_spec

    return check_spec(params.verifier)


@step(
    inputs={"dataset": ("sft_dataset", "preference_dataset")},
    outputs={"dataset": "same:dataset"},
    version="1",
    check=check,
    check_inputs=sources.check_inputs,
)
def run(params: ScoreParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    src = inputs["dataset"]
    bad: list[str] = []
    rows = list(read_rows(src.path, src.type, params.on_bad_rows, bad, params.columns))
    weights = {**DEFAULT_WEIGHTS, **params.weights}
    judge = _verifier(params.verifier)
    judged = judge.verify_batch([_sample(row, params.field) for row in rows]) if judge is not None else None
    for i, row in enumerate(rows):
        comps = components(row_text(row, params.field), row, params)
        if judged is not None:
            comps["verifier"] = round(judged[i].reward, 6)
        row["score_components"] = comps
        row["score"] = combine(comps, weights)
    scores = [r["score"] for r in rows]
    kept = [r for r in rows if params.min_score is None or r["score"] >= params.min_score]
    below = len(rows) - len(kept)
    if params.max_per_prompt:
        by_prompt: dict[str, list[dict[str, Any]]] = {}
        for r in kept:
            by_prompt.setdefault(str(r.get("source_id") or r.get("prompt")), []).append(r)
        allowed = {id(r) for group in by_prompt.values() for r in sorted(group, key=lambda r: -r["score"])[: params.max_per_prompt]}
        kept = [r for r in kept if id(r) in allowed]
    balanced_out = len(rows) - below - len(kept)
    limit = params.top_k or (round(params.top_fraction * len(kept)) if params.top_fraction else None)
    if limit is not None and limit < len(kept):
        best = {id(r) for r in sorted(kept, key=lambda r: -r["score"])[:limit]}
        kept = [r for r in kept if id(r) in best]
    out = ctx.path("dataset.jsonl")
    write_rows(out, kept)
    ctx.metrics.update(
        rows_in=len(rows),
        rows_out=len(kept),
        below_min_score=below,
        removed_by_balancing=balanced_out,
        removed_by_top=len(rows) - below - balanced_out - len(kept),
        bad_rows=len(bad),
        mean_score=round(sum(scores) / len(scores), 4) if scores else None,
        mean_score_kept=round(sum(r["score"] for r in kept) / len(kept), 4) if kept else None,
    )
    ctx.meta["dataset"] = {"rows": len(kept)}
    ctx.summary(f"{len(rows)} rows scored, {len(kept)} kept (min_score={params.min_score}, max_per_prompt={params.max_per_prompt}).")
    if scores:
        _plot(scores, params.min_score, ctx.path("scores.png"))
    return {"dataset": out}


def _sample(row: dict[str, Any], field: str | None) -> dict[str, Any]:
    return {**row, "completion": row_text(row, field)}


def _verifier(spec: VerifierSpec | None) -> Any:
    if spec is None:
        return None
    from halo_pipeline.verifiers import build_verifier

    return build_verifier(spec)


def _plot(scores: list[float], threshold: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(scores, bins=20, range=(0, 1), color="#4c72b0")
    if threshold is not None:
        ax.axvline(threshold, color="#c44e52", linestyle="--", label=f"min_score {threshold}")
        ax.legend()
    ax.set_xlabel("score")
    ax.set_ylabel("rows")
    ax.set_title("row scores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
