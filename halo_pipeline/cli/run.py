"""`halo-pipeline run RECIPE [OVERRIDES]`: validate, then run a recipe as a Prefect flow (or sweep it with -m);
`run_and_report` is the road `replay` and `step` take too."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from halo_pipeline.cli.common import console, prefect_env, print_warnings


def add_parser(sub: Any) -> None:
    r = sub.add_parser("run", help="run a recipe (Hydra overrides after it; -m for a sweep)")
    r.add_argument("recipe")
    r.add_argument("-m", "--multirun", action="store_true", help="Hydra multirun: grid or hydra/sweeper=optuna")
    r.add_argument("--only", action="append", help="run only these steps (comma-separated); others come from the cache")
    r.add_argument("--from", dest="from_", metavar="STEP", help="run STEP and everything after it")
    r.add_argument("--until", metavar="STEP", help="run STEP and everything it needs")
    r.add_argument("--no-cache", action="store_true", help="run every selected step again, into the run directory (the cache is untouched)")
    r.add_argument("--tag", action="append", help="Prefect tag for the flow run")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress; print only the run directory")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prefect_env()
    only = [s for part in (args.only or []) for s in part.split(",") if s]
    if args.multirun:
        from halo_pipeline.cli import progress
        from halo_pipeline.orchestration.sweep import multirun

        return multirun(
            args.recipe,
            args.overrides,
            quiet=args.quiet,
            only=only,
            from_=args.from_,
            until=args.until,
            progress=None if args.quiet else progress.show,
        )
    from halo_pipeline.engine.plan import one_command, plan_recipe
    from halo_pipeline.orchestration.runs import check_selection

    with one_command():  # validation, the cache check and the flow compose the recipe once
        plan = plan_recipe(args.recipe, args.overrides)  # every problem at once, exit 2, before Prefect starts
        check_selection(plan, only, args.from_, args.until)
        print_warnings(plan)
        return run_and_report(args.recipe, args.overrides, args, only=only)


def _exit_code(result: dict[str, Any]) -> int:
    return 0 if result["state"] == "completed" else 1


def run_and_report(recipe: str, overrides: list[str], args: argparse.Namespace, only: list[str] | None = None, check: bool = False) -> int:
    """Run a validated recipe as a Prefect flow and print how it went; the exit code (0 completed, 1 failed)."""
    from halo_pipeline.cli import progress
    from halo_pipeline.orchestration import local_server

    local_server.ensure_api_url()  # before Prefect is imported: its settings (the UI's address too) are read then
    from halo_pipeline.orchestration.runs import RunOptions

    opts = RunOptions(
        only=only or [],
        from_=getattr(args, "from_", None),
        until=getattr(args, "until", None),
        no_cache=getattr(args, "no_cache", False),
        check=check,
        command=["halo-pipeline", *sys.argv[1:]],
        progress=None if args.quiet else progress.show,
    )
    tag_list = getattr(args, "tag", None) or []
    with local_server.active_run(), _stdout_carries_results_only(args.quiet):
        result = None if check else _run_if_cached(recipe, overrides, opts, tag_list)
        if result is None:
            from halo_pipeline.orchestration import flow

            result = flow.run(recipe, overrides, opts, tag_list=tag_list)
    if not args.quiet:
        from halo_pipeline.views.runs import print_result

        print_result(result, console())
    else:
        print(result["run_dir"])
    if check:
        from halo_pipeline.engine import manifest
        from halo_pipeline.views.runs import compare_digests

        original = manifest.read(Path(recipe))
        return compare_digests(original, manifest.read(Path(result["run_dir"])), console()) or _exit_code(result)
    return _exit_code(result)


@contextlib.contextmanager
def _stdout_carries_results_only(quiet: bool) -> Iterator[None]:
    """With -q, stdout is the run directory alone (scripts read it): whatever a library prints while the
    steps run (import-time warnings, banners) goes to stderr instead, at the file-descriptor level."""
    if not quiet:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _run_if_cached(recipe: str, overrides: list[str], opts: Any, tag_list: list[str]) -> dict[str, Any] | None:
    """A run whose every step is a verified cache hit, recorded in Prefect without importing it (see cached_run)."""
    from halo_pipeline.engine.plan import plan_recipe
    from halo_pipeline.orchestration.cached_run import run_if_cached

    return run_if_cached(recipe, overrides, plan_recipe(recipe, overrides), opts, tag_list)
