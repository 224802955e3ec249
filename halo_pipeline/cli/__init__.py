"""`halo-pipeline`: parse arguments, call the library, print. Exit codes: 0 ok, 1 a step failed, 2 bad input, 130 interrupted.

One module per command (`cli/<command>.py`: its `add_parser` and what it runs); this module is only the
entry point: the parser they make up together and the dispatch."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from typing import Any

from halo_pipeline.cli import (
    cache,
    common,
    deploy,
    export,
    plan,
    preview,
    replay,
    run,
    runs,
    schema,
    serve,
    server,
    step,
    steps,
    validate,
    verifiers,
)
from halo_pipeline.engine.errors import RecipeError

TAKES_OVERRIDES = {"plan", "run", "replay", "deploy", "preview"}


def _split_recipe_args(values: list[str]) -> tuple[list[str], list[str]]:
    recipes = [v for v in values if "=" not in v]
    overrides = [v for v in values if "=" in v]
    return recipes, overrides


def _export_command(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return serve.cmd_serve(args, common.console())
    return int(getattr(export, f"cmd_{args.command}")(args, common.console()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="halo-pipeline", description="Declarative post-training pipelines: YAML recipes run as Prefect flows.")
    p.add_argument("--version", action="version", version=f"halo-pipeline {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in (validate, plan, run, replay, deploy, server, step, steps, schema, verifiers):
        command.add_parser(sub)
    export.add_parsers(sub)
    serve.add_parser(sub)
    preview.add_parser(sub)
    for name in ("merge", "convert", "verify", "serve"):
        sub.choices[name].set_defaults(func=_export_command)
    cache.add_parser(sub)
    runs.add_parser(sub)
    return p


def _version() -> str:
    """The installed distribution's version (what pip installed), else the package's own."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("halo-pipeline")
    except PackageNotFoundError:
        from halo_pipeline import __version__

        return __version__


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: handled like Ctrl-C (manifest says interrupted), exit 143."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)
    parser = build_parser()
    # Hydra overrides may come before or after options (`run r.yaml -m a=1,2 --quiet b=3`): they are
    # the arguments argparse does not know, and must look like overrides.
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if a.startswith("-") or args.command not in TAKES_OVERRIDES]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = extra
    if args.command == "validate":
        args.recipes, args.overrides = _split_recipe_args(args.items)
    try:
        code = args.func(args)
    except RecipeError as exc:
        print(exc.format(), file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt as exc:
        print("terminated" if isinstance(exc, Terminated) else "interrupted", file=sys.stderr)
        code = 143 if isinstance(exc, Terminated) else 130
    return code


def entry() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `halo-pipeline plan … | head`: the reader has gone, which is not an error to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python flushes stdout again at exit: let that go nowhere
        code = 0
    if code in (130, 143):
        # Steps still running in worker threads would keep the process alive until they finish;
        # the manifest already says where the run stopped, and their sandboxes and children die with us.
        _stop_what_exit_would_not()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _stop_what_exit_would_not() -> None:
    """os._exit skips the hooks that end a foreground serve step's streams cleanly and stop the temporary
    Prefect server (HALO_PIPELINE_LOCAL_SERVER=0): run them first, briefly."""
    launch = sys.modules.get("halo_pipeline.serving.launch")
    if launch is not None:
        launch.stop_servers(wait_s=5)
    server = sys.modules.get("prefect.server.api.server")
    for instance in list(getattr(getattr(server, "SubprocessASGIServer", None), "_instances", {}).values()):
        with contextlib.suppress(Exception):
            instance.stop()


if __name__ == "__main__":
    entry()
