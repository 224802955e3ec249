"""`halo-pipeline preview RECIPE [overrides] [--step STEP] [-n N]`: the examples a train step will see, token by
token, trained tokens told apart from masked ones, and what its dataset looks like to the trainer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from halo_pipeline.engine.errors import Issue, RecipeError

OPEN, CLOSE = "[[", "]]"  # around trained tokens when the output is not a terminal
TRAINED_STYLES = ("bold green", "bold bright_green")  # alternating, so that token boundaries show
MASKED_STYLES = ("grey50", "grey66")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("preview", help="the examples a train step trains on, token by token, with their loss masks and dataset checks")
    p.add_argument("recipe")
    p.add_argument("--step", help="the train step (default: the recipe's only one)")
    p.add_argument("-n", type=int, default=3, help="how many examples to show (default 3)")
    p.add_argument("--tokens", action="store_true", help="mark every token boundary with | (the colours show them on a terminal)")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_preview)


def cmd_preview(args: argparse.Namespace, console: Any = None) -> int:
    from halo_pipeline.data.rows import read_rows
    from halo_pipeline.engine.plan import plan_recipe
    from halo_pipeline.training.params import TrainingParams
    from halo_pipeline.training.preview import preview

    plan = plan_recipe(args.recipe, args.overrides)
    sid = train_step(plan, args.step)
    path, artifact_type = dataset_input(plan, sid, args.recipe)
    params = plan.steps[sid].params
    assert isinstance(params, TrainingParams)  # train_step() picked a train step
    bad: list[str] = []
    rows = list(read_rows(path, artifact_type, "skip", bad, getattr(params, "columns", None) or {}))
    if not rows:
        raise RecipeError([Issue(f"the training dataset {path} has no usable rows", key=f"steps.{sid}.inputs.dataset")])
    result = preview(params, rows, max(args.n, 0), bad_rows=len(bad))
    if args.format == "json":
        print(json.dumps({"step": sid, "dataset": str(path), **result.to_json()}, indent=2, sort_keys=True))
        return 0
    if console is None:
        from rich.console import Console

        console = Console(soft_wrap=True)  # examples keep their own lines
    render(result, sid, path, console, boundaries=args.tokens)
    return 0


def train_step(plan: Any, wanted: str | None) -> str:
    """The step to preview: the one named, else the recipe's only train step."""
    trains = [sid for sid, ps in plan.steps.items() if ps.kind.name == "train"]
    if wanted is not None:
        if wanted not in plan.steps or plan.steps[wanted].kind.name != "train":
            from halo_pipeline.engine.errors import did_you_mean

            hint = did_you_mean(wanted, trains) or f"train steps: {', '.join(trains) or 'none'}"
            raise RecipeError([Issue(f"--step {wanted} is not a train step of this recipe", key="--step", hint=hint)])
        return wanted
    if len(trains) != 1:
        listing = ", ".join(trains) or "none"
        raise RecipeError([Issue(f"the recipe has {len(trains)} train steps ({listing}): name one with --step", key="--step")])
    return trains[0]


def dataset_input(plan: Any, sid: str, recipe: str) -> tuple[Path, str]:
    """Where the step's dataset is: a `file:` input, or an upstream step's cached output. An upstream step that has
    not run (for these params) is named with the command that runs it."""
    ps = plan.steps[sid]
    ref = ps.inputs["dataset"]
    if isinstance(ref, Path):
        return ref, ps.input_types.get("dataset", "sft_dataset")
    from halo_pipeline.engine.execute import cached_result, step_calls

    calls = step_calls(plan, Path("/nonexistent"))
    known: dict[str, Any] = {}
    missing: list[str] = []
    for up, planned in plan.steps.items():
        if up == sid:
            break
        deps = {r.step for r in planned.inputs.values() if not isinstance(r, Path)}
        if any(d not in known for d in deps) or not planned.spec.cache:
            missing.append(up)
            continue
        _, hit = cached_result(calls[up], {d: known[d] for d in deps})
        if hit is None:
            missing.append(up)
        else:
            known[up] = hit
    if ref.step in known:
        out = known[ref.step].outputs[ref.output]
        return Path(out.path), out.type
    first = next((m for m in missing if m == ref.step or m in _ancestors(plan, ref.step)), ref.step)
    raise RecipeError(
        [
            Issue(
                f"{sid}'s dataset comes from {ref}, and {ref.step} has no cached output for these params ({first} must run first)",
                key=f"steps.{sid}.inputs.dataset",
                hint=f"halo-pipeline run {recipe} --until {ref.step}  (then preview again: it reads the cached output)",
            )
        ]
    )


def _ancestors(plan: Any, sid: str) -> set[str]:
    found: set[str] = set()
    todo = [sid]
    while todo:
        for dep in plan.steps[todo.pop()].deps:
            if dep not in found:
                found.add(dep)
                todo.append(dep)
    return found


# ------------------------------------------------------------------ rendering


def render(result: Any, sid: str, path: Path, console: Any, boundaries: bool = False) -> None:
    from rich.text import Text

    colour = bool(console.is_terminal)
    template = "through the chat template" if result.chat_template else "as plain text (no chat template)"
    console.print(
        f"{sid}: {result.algorithm}, {template}, max_length {result.max_length} — the first {len(result.examples)} "
        f"of {result.stats['examples']} examples from {path}",
        highlight=False,
    )
    legend = "trained tokens in green, masked ones grey" if colour else f"trained tokens between {OPEN} {CLOSE}; the rest is masked"
    console.print(legend + (" · | between tokens" if boundaries and not colour else ""), highlight=False)
    for ex in result.examples:
        for seq in ex.sequences:
            head = f"── row {ex.row} · id {ex.id}" + (f" · {seq.side}" if seq.side else "")
            head += f" · {len(seq.ids)} tokens, {sum(seq.trained)} trained"
            if seq.truncated:
                head += f" · TRUNCATED from {seq.length}"
            if ex.dropped:
                head += " · DROPPED (nothing left to train on)"
            console.print(head + " ──", highlight=False, markup=False)
            if colour:
                text = Text()
                for i, (piece, trained) in enumerate(zip(seq.pieces, seq.trained, strict=True)):
                    text.append(piece, style=(TRAINED_STYLES if trained else MASKED_STYLES)[i % 2])
                console.print(text)
            else:
                console.print(marked(seq.pieces, seq.trained, boundaries), markup=False, highlight=False)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    console.print(summary(result.stats), highlight=False, markup=False)


def marked(pieces: list[str], trained: list[bool], boundaries: bool = False) -> str:
    """The tokens as text, trained spans between [[ and ]] (and | between tokens with `boundaries`)."""
    out: list[str] = []
    inside = False
    for i, (piece, on) in enumerate(zip(pieces, trained, strict=True)):
        if on != inside:
            out.append(OPEN if on else CLOSE)
            inside = on
        elif boundaries and i:
            out.append("|")
        out.append(piece)
    if inside:
        out.append(CLOSE)
    return "".join(out)


def summary(stats: dict[str, Any]) -> str:
    tokens = stats["tokens"]
    lines = [
        f"dataset: {stats['rows']} rows" + (f" ({stats['bad_rows']} malformed, skipped)" if stats["bad_rows"] else "")
        + f", {stats['examples']} examples; tokens p50 {tokens['p50']} · p90 {tokens['p90']} · p99 {tokens['p99']} · max {tokens['max']}"
    ]  # fmt: skip
    if stats.get("max_length") is not None:
        lines.append(
            f"  against max_length {stats['max_length']}: {stats['truncated']} truncated, {stats['dropped']} dropped by the trainer"
        )
    empty = ", ".join(f"{k} {v}" for k, v in sorted(stats["empty"].items())) or "none"
    lines.append(f"  empty turns: {empty}; duplicate prompts: {stats['duplicate_prompts']}")
    if "pairs" in stats:
        pairs = stats["pairs"]
        text = f"  pairs: {pairs['identical']} identical, chosen is the longer side in {pairs['chosen_longer_share']:.0%}"
        if "rewarded" in pairs:
            text += f"; of {pairs['rewarded']} with rewards, {pairs['inverted']} rank rejected higher, {pairs['tied']} tie"
        lines.append(text)
    for check in stats.get("checks", []):
        lines.append(f"  check {check['name']}: {check['value']} (limit {check['limit']}) {'ok' if check['ok'] else 'FAILS'}")
    return "\n".join(lines)
