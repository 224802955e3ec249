"""`halo-pipeline runs ls|show|diff|results`: runs from their manifests."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from halo_pipeline.cli import common
from halo_pipeline.engine.errors import Issue, RecipeError


def add_parser(sub: Any) -> None:
    rs = sub.add_parser(
        "runs",
        help="runs from their manifests: ls, show RUN, diff RUN_A RUN_B (a run dir, a suffix, or a git revision), "
        "results RUN (the probe's base-vs-tuned table and the time per step, in Markdown)",
    )
    rs.add_argument("action", choices=["ls", "show", "diff", "results"])
    rs.add_argument("runs", nargs="*")
    rs.add_argument("--root", default="outputs", help="where run directories are (default outputs/)")
    rs.add_argument("--recipe", help="with git revisions as RUN: the recipe (by name) whose runs to compare")
    rs.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from halo_pipeline.views import runs

    console = common.console()
    if args.action == "ls":
        return runs.ls(Path(args.root), console)
    if args.action == "show":
        return runs.show(runs.find_run(args.runs[0], Path(args.root)), console)
    if args.action == "results":
        from halo_pipeline.views.results import markdown

        if len(args.runs) != 1:
            raise RecipeError([Issue("runs results takes one run", hint="halo-pipeline runs results RUN")])
        run_dir = runs.find_run(args.runs[0], Path(args.root))
        print(markdown(run_dir, json.loads((run_dir / "replay.json").read_text())), end="")
        return 0
    if args.action == "diff":
        if len(args.runs) != 2:
            raise RecipeError([Issue("runs diff takes two runs", hint="halo-pipeline runs diff RUN_A RUN_B")])
        a, b = (runs.find_run(ref, Path(args.root), args.recipe) for ref in args.runs)
        return runs.diff(a, b, console)
    return 2
