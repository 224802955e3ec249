"""`halo-pipeline validate RECIPE... [OVERRIDES]`: check recipes without running anything (exit 2 if any is invalid)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from halo_pipeline.cli.common import print_warnings
from halo_pipeline.engine.errors import RecipeError


def add_parser(sub: Any) -> None:
    v = sub.add_parser("validate", help="check recipes without running anything")
    v.add_argument("items", nargs="+", metavar="RECIPE_OR_OVERRIDE")
    v.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from halo_pipeline.engine.plan import plan_recipe

    bad = 0
    for recipe in args.recipes:
        try:
            plan = plan_recipe(recipe, args.overrides)
        except RecipeError as exc:
            bad += 1
            print(f"✘ {recipe}\n{exc.format()}", file=sys.stderr)
            continue
        print(f"✔ {recipe}: {len(plan.steps)} steps ({', '.join(plan.steps)})")
        print_warnings(plan)
    return 2 if bad else 0
