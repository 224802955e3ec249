"""`halo-pipeline step KIND --input N=PATH --set K=V`: one step kind outside a recipe, run as a one-step recipe."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from halo_pipeline.cli.common import prefect_env
from halo_pipeline.cli.run import run_and_report
from halo_pipeline.engine.errors import Issue, RecipeError


def add_parser(sub: Any) -> None:
    one = sub.add_parser("step", help="run one step kind outside a recipe (same cache, manifest and Prefect run as a recipe)")
    one.add_argument("kind", help="a step kind (halo-pipeline steps lists them) or pkg.module:function")
    one.add_argument("--input", action="append", metavar="NAME=PATH", help="an input artifact from a file or directory (repeatable)")
    one.add_argument("--set", action="append", metavar="KEY=VALUE", help="a param, YAML-parsed; dotted keys nest (repeatable)")
    one.add_argument("--name", help="the run directory's name (default: step-<kind>)")
    one.add_argument("--no-cache", action="store_true", help="run it again, into the run directory")
    one.add_argument("-q", "--quiet", action="store_true", help="print only the run directory")
    one.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prefect_env()
    from halo_pipeline.engine.plan import plan_recipe

    text = step_recipe(args.kind, args.input or [], args.set or [], args.name)
    try:
        plan_recipe(text, [])
    except RecipeError as exc:  # the recipe is ours: blame the flag the value came from
        flags = {"steps.step.with": "--set ", "steps.step.inputs": "--input ", "steps.step.uses": "KIND", "steps.step": "KIND"}
        issues = []
        for issue in exc.issues:
            prefix = next((k for k in flags if issue.key == k or issue.key.startswith(k + ".")), None)
            key = (flags[prefix] + issue.key[len(prefix) + 1 :]).strip() if prefix else issue.key
            issues.append(Issue(issue.message, key=key, hint=issue.hint))
        raise RecipeError(issues) from None
    return run_and_report(text, [], args)


def step_recipe(kind: str, inputs: list[str], sets: list[str], name: str | None = None) -> str:
    """A one-step recipe (YAML text) for `halo-pipeline step`: the same run, cache and manifest as any recipe."""
    import yaml

    def pairs(items: list[str], flag: str) -> dict[str, str]:
        out = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise RecipeError([Issue(f"{flag} takes NAME=VALUE, got '{item}'", key=flag)])
            out[key] = value
        return out

    with_: dict[str, Any] = {}
    for dotted, raw in pairs(sets, "--set").items():
        node = with_
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        value = yaml.safe_load(raw) if raw.strip() else ""
        if isinstance(value, dict | list) and not raw.lstrip().startswith(("{", "[")):
            value = raw  # `?`, `- x` and the like are text here, not YAML structure
        node[last] = value
    wired = {n: f"file:{Path(v).expanduser().resolve()}" for n, v in pairs(inputs, "--input").items()}
    step: dict[str, Any] = {"uses": kind, **({"inputs": wired} if wired else {}), **({"with": with_} if with_ else {})}
    return yaml.safe_dump({"name": name or f"step-{kind}".replace(":", "-").replace(".", "-"), "seed": 0, "steps": {"step": step}})
