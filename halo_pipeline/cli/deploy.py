"""`halo-pipeline deploy RECIPE --cron ...`: a Prefect deployment of a recipe with a schedule."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from halo_pipeline.cli.common import prefect_env


def add_parser(sub: Any) -> None:
    d = sub.add_parser("deploy", help="a Prefect deployment of a recipe with a schedule; serves it until interrupted")
    d.add_argument("recipe")
    d.add_argument("--cron", help='cron schedule, e.g. "0 3 * * *"')
    d.add_argument("--interval", type=float, help="or an interval in seconds")
    d.add_argument("--name", help="deployment name (default: the recipe's name)")
    d.add_argument("--tag", action="append")
    d.add_argument("--register-only", action="store_true", help="register in a process work pool and exit; a Prefect worker runs it")
    d.add_argument("--pool", help="work pool for --register-only (default: halo-pipeline, created as a process pool)")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prefect_env()
    from halo_pipeline.engine.plan import plan_recipe

    plan_recipe(args.recipe, args.overrides)  # refuse to schedule a recipe that cannot run
    from halo_pipeline.orchestration import local_server

    local_server.ensure_api_url()
    from halo_pipeline.orchestration.schedule import deploy

    with local_server.active_run():
        return deploy(
            recipe=str(Path(args.recipe).resolve()),
            overrides=args.overrides,
            name=args.name,
            cron=args.cron,
            interval=args.interval,
            serve=not args.register_only,
            tags=args.tag or [],
            pool=args.pool,
        )
