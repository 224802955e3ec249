"""`halo-pipeline replay RUN_DIR`: run again from a run's manifest (its resolved config); --check compares digests."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from halo_pipeline.cli.common import prefect_env
from halo_pipeline.cli.run import run_and_report


def add_parser(sub: Any) -> None:
    rp = sub.add_parser("replay", help="run again from a run's manifest (its resolved config)")
    rp.add_argument("run_dir")
    rp.add_argument("--check", action="store_true", help="re-execute deterministic steps and compare output digests")
    rp.add_argument("-q", "--quiet", action="store_true")
    rp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prefect_env()
    from halo_pipeline.engine import manifest
    from halo_pipeline.engine.plan import plan_recipe

    run_dir = Path(args.run_dir)
    mpath = run_dir / manifest.MANIFEST if run_dir.is_dir() else run_dir
    plan_recipe(str(mpath), args.overrides)
    args.no_cache = False
    return run_and_report(str(mpath), args.overrides, args, check=args.check)
