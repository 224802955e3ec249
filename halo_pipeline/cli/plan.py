"""`halo-pipeline plan RECIPE`: the DAG, resolved params and what is cached (a table, JSON or Mermaid)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from halo_pipeline.cli.common import console


def add_parser(sub: Any) -> None:
    pl = sub.add_parser("plan", help="show the DAG, resolved params and what is cached")
    pl.add_argument("recipe")
    pl.add_argument("--format", choices=["table", "json", "mermaid"], default="table")
    pl.add_argument("--no-cache", action="store_true")
    pl.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from halo_pipeline.engine.plan import plan_recipe
    from halo_pipeline.views.plan import cache_status, mermaid, render_plan

    plan = plan_recipe(args.recipe, args.overrides)
    if args.format == "mermaid":
        print(mermaid(plan))
        return 0
    status = cache_status(plan, no_cache=args.no_cache)
    if args.format == "json":
        print(
            json.dumps(
                {
                    sid: {"kind": ps.kind.name, "needs": ps.deps, "params": ps.params.model_dump(mode="json"), "status": status[sid]}
                    for sid, ps in plan.steps.items()
                },
                indent=2,
                sort_keys=True,
            )
        )
        return 0
    render_plan(plan, status, console())
    return 0
