"""`halo-pipeline`: parse arguments, call the library, print. Exit codes: 0 ok, 1 a step failed, 2 bad input, 130 interrupted."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from halo_pipeline.engine.errors import Issue, RecipeError


def _console() -> Any:
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)  # pipes and logs get whole lines


def _prefect_env() -> None:
    from halo_pipeline.orchestration.environment import apply_defaults

    apply_defaults()


def cmd_validate(args: argparse.Namespace) -> int:
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
        _print_warnings(plan)
    return 2 if bad else 0


def _print_warnings(plan: Any) -> None:
    for warning in plan.warnings:  # valid, but it will not do what it seems to (e.g. a gate too small to decide)
        print("  warning: " + warning.format().replace("\n", "\n  "), file=sys.stderr)


def _split_recipe_args(values: list[str]) -> tuple[list[str], list[str]]:
    recipes = [v for v in values if "=" not in v]
    overrides = [v for v in values if "=" in v]
    return recipes, overrides


def cmd_plan(args: argparse.Namespace) -> int:
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
    render_plan(plan, status, _console())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    _prefect_env()
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
        _print_warnings(plan)
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

        print_result(result, _console())
    else:
        print(result["run_dir"])
    if check:
        from halo_pipeline.engine import manifest
        from halo_pipeline.views.runs import compare_digests

        original = manifest.read(Path(recipe))
        return compare_digests(original, manifest.read(Path(result["run_dir"])), _console()) or _exit_code(result)
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


def cmd_replay(args: argparse.Namespace) -> int:
    _prefect_env()
    from halo_pipeline.engine import manifest
    from halo_pipeline.engine.plan import plan_recipe

    run_dir = Path(args.run_dir)
    mpath = run_dir / manifest.MANIFEST if run_dir.is_dir() else run_dir
    plan_recipe(str(mpath), args.overrides)
    args.no_cache = False
    return run_and_report(str(mpath), args.overrides, args, check=args.check)


def cmd_deploy(args: argparse.Namespace) -> int:
    _prefect_env()
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


def cmd_server(args: argparse.Namespace) -> int:
    _prefect_env()
    from halo_pipeline.orchestration import local_server

    if args.stop:
        print("stopped" if local_server.stop_background() else "no background server was running")
        return 0
    if args.status:  # the background server `run` started: where its API and UI are
        url = local_server.running_server()
        if url is None:
            print("no background server is running (the next `halo-pipeline run` starts one)")
            return 1
        print(f"background Prefect server: UI {local_server.ui_url(url)}  API {url}  (stop it with: halo-pipeline server --stop)")
        return 0
    return local_server.serve_foreground(args.host, args.port)


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


def cmd_step(args: argparse.Namespace) -> int:
    _prefect_env()
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


def cmd_steps(args: argparse.Namespace) -> int:
    from halo_pipeline.views.reference import render_steps

    print(render_steps(markdown=args.markdown))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from halo_pipeline.views.schema import recipe_schema

    print(json.dumps(recipe_schema(), indent=2, sort_keys=True))
    return 0


def cmd_verifiers(args: argparse.Namespace) -> int:
    from halo_pipeline.cli.verifiers import list_verifiers, run_verifier

    if args.action == "run":
        if not args.name or not args.input:
            raise RecipeError(
                [
                    Issue(
                        "verifiers run needs NAME and --input samples.jsonl",
                        hint="halo-pipeline verifiers run python_syntax --input s.jsonl",
                    )
                ]
            )
        output = Path(args.output) if args.output else None
        return run_verifier(args.name, Path(args.input), output, args.set or [], _console(), args.allow_code_execution, args.sandbox)
    return list_verifiers(_console())


def cmd_runs(args: argparse.Namespace) -> int:
    from halo_pipeline.views import runs

    console = _console()
    if args.action == "ls":
        return runs.ls(Path(args.root), console)
    if args.action == "show":
        return runs.show(runs.find_run(args.runs[0], Path(args.root)), console)
    if args.action == "diff":
        if len(args.runs) != 2:
            raise RecipeError([Issue("runs diff takes two runs", hint="halo-pipeline runs diff RUN_A RUN_B")])
        a, b = (runs.find_run(ref, Path(args.root), args.recipe) for ref in args.runs)
        return runs.diff(a, b, console)
    return 2


def cmd_cache(args: argparse.Namespace) -> int:
    from halo_pipeline.engine import housekeeping
    from halo_pipeline.engine.cache import Cache

    try:
        older = housekeeping.parse_age(args.older_than) if args.older_than else None
    except ValueError as exc:
        raise RecipeError([Issue(str(exc), key="--older-than")]) from None
    cache = Cache()
    roots = [Path(r) for r in (args.root or ["outputs", "multirun"])]
    found = housekeeping.collect(cache, roots, older, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path, size in found.removed:
        print(f"{verb} {path.relative_to(cache.root)} ({housekeeping.human(size)})")
    print(f"{cache.root}: {verb} {len(found.removed)}, {housekeeping.human(found.freed)}; kept {found.kept} entries that runs reference")
    return 0


def _export_command(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from halo_pipeline.cli.serve import cmd_serve

        return cmd_serve(args, _console())
    from halo_pipeline.cli import export as export_cli

    return int(getattr(export_cli, f"cmd_{args.command}")(args, _console()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="halo-pipeline", description="Declarative post-training pipelines: YAML recipes run as Prefect flows.")
    p.add_argument("--version", action="version", version=f"halo-pipeline {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check recipes without running anything")
    v.add_argument("items", nargs="+", metavar="RECIPE_OR_OVERRIDE")
    v.set_defaults(func=cmd_validate)

    pl = sub.add_parser("plan", help="show the DAG, resolved params and what is cached")
    pl.add_argument("recipe")
    pl.add_argument("--format", choices=["table", "json", "mermaid"], default="table")
    pl.add_argument("--no-cache", action="store_true")
    pl.set_defaults(func=cmd_plan)

    r = sub.add_parser("run", help="run a recipe (Hydra overrides after it; -m for a sweep)")
    r.add_argument("recipe")
    r.add_argument("-m", "--multirun", action="store_true", help="Hydra multirun: grid or hydra/sweeper=optuna")
    r.add_argument("--only", action="append", help="run only these steps (comma-separated); others come from the cache")
    r.add_argument("--from", dest="from_", metavar="STEP", help="run STEP and everything after it")
    r.add_argument("--until", metavar="STEP", help="run STEP and everything it needs")
    r.add_argument("--no-cache", action="store_true", help="run every selected step again, into the run directory (the cache is untouched)")
    r.add_argument("--tag", action="append", help="Prefect tag for the flow run")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress; print only the run directory")
    r.set_defaults(func=cmd_run)

    rp = sub.add_parser("replay", help="run again from a run's manifest (its resolved config)")
    rp.add_argument("run_dir")
    rp.add_argument("--check", action="store_true", help="re-execute deterministic steps and compare output digests")
    rp.add_argument("-q", "--quiet", action="store_true")
    rp.set_defaults(func=cmd_replay)

    d = sub.add_parser("deploy", help="a Prefect deployment of a recipe with a schedule; serves it until interrupted")
    d.add_argument("recipe")
    d.add_argument("--cron", help='cron schedule, e.g. "0 3 * * *"')
    d.add_argument("--interval", type=float, help="or an interval in seconds")
    d.add_argument("--name", help="deployment name (default: the recipe's name)")
    d.add_argument("--tag", action="append")
    d.add_argument("--register-only", action="store_true", help="register in a process work pool and exit; a Prefect worker runs it")
    d.add_argument("--pool", help="work pool for --register-only (default: halo-pipeline, created as a process pool)")
    d.set_defaults(func=cmd_deploy)

    s = sub.add_parser("server", help="start a local Prefect server + UI on loopback (for schedules)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=4200)
    s.add_argument("--stop", action="store_true", help="stop the background server that `run` started")
    s.add_argument("--status", action="store_true", help="print the background server's UI and API address (exit 1 if none runs)")
    s.set_defaults(func=cmd_server)

    one = sub.add_parser("step", help="run one step kind outside a recipe (same cache, manifest and Prefect run as a recipe)")
    one.add_argument("kind", help="a step kind (halo-pipeline steps lists them) or pkg.module:function")
    one.add_argument("--input", action="append", metavar="NAME=PATH", help="an input artifact from a file or directory (repeatable)")
    one.add_argument("--set", action="append", metavar="KEY=VALUE", help="a param, YAML-parsed; dotted keys nest (repeatable)")
    one.add_argument("--name", help="the run directory's name (default: step-<kind>)")
    one.add_argument("--no-cache", action="store_true", help="run it again, into the run directory")
    one.add_argument("-q", "--quiet", action="store_true", help="print only the run directory")
    one.set_defaults(func=cmd_step)

    st = sub.add_parser("steps", help="list step kinds with their params and artifact types")
    st.add_argument("--markdown", action="store_true", help="the reference page (docs/steps.md)")
    st.set_defaults(func=cmd_steps)

    sc = sub.add_parser("schema", help="JSON Schema of recipes (for editors)")
    sc.set_defaults(func=cmd_schema)

    vf = sub.add_parser("verifiers", help="list verifiers, or score a JSONL of samples with one (verifiers run NAME --input F)")
    vf.add_argument("action", nargs="?", choices=["ls", "run"], default="ls")
    vf.add_argument("name", nargs="?")
    vf.add_argument("--input", help="JSONL of samples: prompt, completion and the task's fields")
    vf.add_argument("--output", help="write each sample with its reward, passed, details and error")
    vf.add_argument("--set", action="append", metavar="KEY=VALUE", help="a verifier setting (repeatable)")
    vf.add_argument("--allow-code-execution", action="store_true", help="let code verifiers run the completions (sandboxed)")
    vf.add_argument(
        "--sandbox",
        choices=["bubblewrap", "rlimits"],
        help="isolation for code verifiers: bubblewrap (default, required) or rlimits (explicitly weaker: no file-system or network isolation)",
    )
    vf.set_defaults(func=cmd_verifiers)

    from halo_pipeline.cli.export import add_parsers

    add_parsers(sub)
    from halo_pipeline.cli.serve import add_parser as add_serve_parser

    add_serve_parser(sub)
    from halo_pipeline.cli.preview import add_parser as add_preview_parser

    add_preview_parser(sub)
    for name in ("merge", "convert", "verify", "serve"):
        sub.choices[name].set_defaults(func=_export_command)

    ca = sub.add_parser("cache", help="cache housekeeping: `cache gc` removes entries no run directory references")
    ca.add_argument("action", choices=["gc"])
    ca.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    ca.add_argument("--older-than", metavar="AGE", help="only entries unused for longer than AGE (30m, 12h, 7d)")
    ca.add_argument("--root", action="append", help="where run directories are (default: outputs/ and multirun/); repeatable")
    ca.set_defaults(func=cmd_cache)

    rs = sub.add_parser("runs", help="runs from their manifests: ls, show RUN, diff RUN_A RUN_B (a run dir, a suffix, or a git revision)")
    rs.add_argument("action", choices=["ls", "show", "diff"])
    rs.add_argument("runs", nargs="*")
    rs.add_argument("--root", default="outputs", help="where run directories are (default outputs/)")
    rs.add_argument("--recipe", help="with git revisions as RUN: the recipe (by name) whose runs to compare")
    rs.set_defaults(func=cmd_runs)
    return p


TAKES_OVERRIDES = {"plan", "run", "replay", "deploy", "preview"}


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
