"""Every `halo-pipeline …` command shown in README.md and docs/ parses, and every one that names a
shipped recipe validates with its overrides (each job of a sweep too), so the docs cannot drift."""

from __future__ import annotations

import glob
import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from halo_pipeline.cli import TAKES_OVERRIDES, build_parser
from halo_pipeline.engine.errors import RecipeError
from halo_pipeline.engine.plan import plan_recipe

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Recipe names the docs use as examples of a file the reader writes (a broken one, a benchmark's).
EXAMPLE_RECIPES = {"recipes/bad.yaml", "bench.yaml"}
SYNOPSIS = ("[", "|", "...", "…")  # `[--dry-run]`, `gguf|mlx`: a usage line, not a command to paste


@dataclass(frozen=True)
class Command:
    where: str
    argv: tuple[str, ...]

    @property
    def synopsis(self) -> bool:
        return any(mark in arg for arg in self.argv for mark in SYNOPSIS)

    def __str__(self) -> str:
        return f"{self.where}: halo-pipeline {' '.join(self.argv)}"


def _commands_in(doc: Path) -> list[Command]:
    found: list[Command] = []
    in_block, pending = False, ""
    for no, line in enumerate(doc.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if in_block:
            text = pending + line.strip()
            if text.endswith("\\"):  # a command continued on the next line
                pending = text[:-1] + " "
                continue
            pending = ""
            m = re.match(r"(?:\$\s+)?(?:[A-Z_]+=\S+\s+)*(?:\S*/)?halo-pipeline\s+(.*)", text)
            snippets = [m.group(1)] if m else []
        else:
            snippets = [m.group(1) for m in re.finditer(r"`halo-pipeline\s+([^`]*)`", line)]
        for snippet in snippets:
            snippet = re.sub(r"\s+#\s.*$", "", snippet)  # a trailing comment
            snippet = re.sub(r"\s+>\s*\S+\s*$", "", snippet)  # `> recipe.schema.json`
            found.append(Command(f"{doc.relative_to(ROOT)}:{no}", tuple(shlex.split(snippet))))
    return found


COMMANDS = [c for doc in DOCS for c in _commands_in(doc)]
FULL = [c for c in COMMANDS if len(c.argv) > 1 and not c.synopsis]


def _parse(command: Command):
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(list(command.argv))
    except SystemExit:
        pytest.fail(f"{command} does not parse")
    bad = [a for a in extra if a.startswith("-") or args.command not in TAKES_OVERRIDES]
    assert not bad, f"{command}: unrecognized arguments {bad}"
    return args, extra


def _jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The overrides of each job a sweep would run (Optuna's search spaces at their ends)."""
    if not multirun:
        return [overrides]
    choices: list[list[str]] = []
    for override in overrides:
        key, _, value = override.partition("=")
        value = re.sub(r"^(?:tag\([^,]+,\s*|int\()(.*)\)$", r"\1", value)  # tag(log, interval(..)), int(interval(..))
        if key.startswith("hydra"):  # the sweeper's own settings
            continue
        if m := re.fullmatch(r"(?:interval|range)\(([^,]+),([^,)]+)(?:,[^)]*)?\)", value):
            values = [m.group(1).strip(), m.group(2).strip()]
        elif m := re.fullmatch(r"choice\((.*)\)", value):
            values = [v.strip() for v in m.group(1).split(",")]
        else:
            values = value.split(",")
        choices.append([f"{key}={v}" for v in values])
    return [list(job) for job in itertools.product(*choices)]


def test_the_docs_show_commands() -> None:
    assert len(FULL) >= 30
    assert any(c.argv[:2] == ("run", "recipes/grpo_code.yaml") for c in FULL)


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_documented_subcommand_exists(command: Command) -> None:
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    if command.argv in (("--version",), ("--help",)):
        return
    assert command.argv and command.argv[0] in subcommands, f"{command}: no such command"


@pytest.mark.parametrize("command", FULL, ids=str)
def test_documented_command_parses_and_validates(command: Command) -> None:
    args, overrides = _parse(command)
    if args.command == "validate":
        recipes = [p for item in args.items if "=" not in item for p in (sorted(glob.glob(str(ROOT / item))) or [item])]
        overrides = [item for item in args.items if "=" in item]
    elif args.command in ("run", "plan", "deploy", "preview"):
        recipes = [args.recipe]
    else:
        return
    for recipe in recipes:
        path = ROOT / recipe
        if not path.is_file():
            assert recipe in EXAMPLE_RECIPES, f"{command}: {recipe} is not in the repository"
            continue
        for job in _jobs(overrides, getattr(args, "multirun", False)):
            try:
                plan = plan_recipe(str(path), job)
            except RecipeError as exc:
                pytest.fail(f"{command}: job {job} is invalid:\n{exc.format()}")
            for flag in ("only", "from_", "until"):
                named = getattr(args, flag, None) or []
                steps = [s for value in ([named] if isinstance(named, str) else named) for s in value.split(",")]
                unknown = [s for s in steps if s not in plan.steps]
                assert not unknown, f"{command}: {flag.rstrip('_')} names steps the recipe does not have: {unknown}"
            if args.command == "preview":  # the step it shows is one of the recipe's train steps
                from halo_pipeline.cli.preview import train_step

                train_step(plan, args.step)


def _yaml_blocks() -> list[tuple[str, str]]:
    blocks = []
    for doc in DOCS:
        for m in re.finditer(r"^```ya?ml\n(.*?)^```", doc.read_text(), re.S | re.M):
            line = doc.read_text()[: m.start()].count("\n") + 2
            blocks.append((f"{doc.relative_to(ROOT)}:{line}", m.group(1)))
    return blocks


@pytest.mark.parametrize(("where", "text"), _yaml_blocks(), ids=[w for w, _ in _yaml_blocks()])
def test_documented_yaml_parses_and_recipes_validate(where: str, text: str, tmp_path: Path) -> None:
    import textwrap

    import yaml

    try:
        data = yaml.safe_load(textwrap.dedent(text))
    except yaml.YAMLError as exc:
        pytest.fail(f"{where}: the YAML shown does not parse: {exc}")
    if isinstance(data, dict) and {"name", "defaults", "steps"} <= set(data):  # a whole recipe: it must validate
        recipe = tmp_path / "shown.yaml"
        recipe.write_text(text)
        try:
            plan_recipe(str(recipe), ["model=tiny"])
        except RecipeError as exc:
            pytest.fail(f"{where}: the recipe shown is invalid:\n{exc.format()}")
