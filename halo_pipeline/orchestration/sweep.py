"""Hydra multirun (`run -m`): Hydra's own sweepers and launchers, one Prefect flow run per job.

Every job is composed by Hydra, validated, and run through the same flow as a single run, with the
same step selection (`--only`, `--from`, `--until`); its run directory is the job's directory under
`multirun/<name>/<time>/<n>`. A recipe's `objective` (`<step>.<metric>`) is returned to the sweeper,
so `hydra/sweeper=optuna` optimizes it.

Launchers: Hydra's basic launcher runs the jobs one after another in this process; `hydra/launcher=joblib`
runs them in parallel worker processes, `submitit_local` / `submitit_slurm` as separate processes or
SLURM jobs. So a job shares no memory with this process: the job function is a picklable object, each
job writes its record to `<job dir>/job.json`, and `summary.json` (and the best job) is gathered from
the job directories once the launcher returns. Jobs share the cache safely (a lock per key).

A failed job: in a grid every job still runs, and the sweep exits 1; with Optuna it is a failed
trial (never a value the sampler learns from), and the sweep stops once failed trials exceed
`hydra.sweeper.max_failure_rate` (Hydra's default 0.0: at the first failure).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from halo_pipeline.engine.config import hydra_defaults, search_path, settable_overrides
from halo_pipeline.engine.errors import Issue, RecipeError
from halo_pipeline.engine.recipe import read_yaml


class SweepJobFailed(RuntimeError):
    """Raised to an Optuna sweeper so the job is a failed trial (and max_failure_rate applies)."""


JOB_RECORD = "job.json"  # in each job's directory: what the job did, for the sweep's summary
_SWEEP_DIRS: list[Path] = []  # set by SweepDir in the launching process


class SweepDir(Callback):
    """A Hydra callback that tells the launching process where the sweep's job directories are."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _SWEEP_DIRS.append(Path(str(config.hydra.sweep.dir)))


class Job:
    """One job, Hydra's task function: Hydra chose its overrides and directory; the job composes and runs on
    the same road as a single run. Picklable (plain fields only), since joblib and submitit run it in other processes."""

    def __init__(
        self,
        recipe: Path,
        sweep: str,
        sweeper: str,
        quiet: bool,
        command: list[str],
        selection: dict[str, Any],
        invalid: dict[tuple[str, ...], list[str]] | None = None,
        progress: Any = None,
    ) -> None:
        self.recipe, self.sweep, self.sweeper, self.quiet, self.command = str(recipe), sweep, sweeper, quiet, command
        self.selection, self.launcher_pid = selection, os.getpid()
        self.invalid = dict(invalid or {})  # a grid's jobs found invalid before the sweep started: their overrides -> problems
        self.progress = progress  # the terminal's progress view, for jobs that run in this process (the basic launcher)

    def __call__(self, cfg: Any) -> float | None:
        from hydra.core.hydra_config import HydraConfig

        from halo_pipeline.engine.cache import atomic_write_json
        from halo_pipeline.engine.plan import plan_recipe
        from halo_pipeline.orchestration import flow, local_server
        from halo_pipeline.orchestration.cached_run import run_if_cached
        from halo_pipeline.orchestration.runs import check_selection

        hc = HydraConfig.get()
        only, from_, until = self.selection["only"], self.selection["from"], self.selection["until"]
        job_overrides = [*hc.overrides.task, f"hydra.run.dir={hc.runtime.output_dir}"]
        problems = self.invalid.get(tuple(hc.overrides.task))
        if problems is None:
            try:
                plan = plan_recipe(self.recipe, job_overrides)
                check_selection(plan, only, from_, until)
            except RecipeError as exc:  # an Optuna trial's values, or a grid job the pre-check could not foresee
                problems = [issue.format() for issue in exc.issues]
        if problems is not None:
            self._invalid(hc, problems)
            return None
        here = not self.quiet and os.getpid() == self.launcher_pid
        if here:  # never silent while a job runs: which job, then its steps' progress
            print(f"job {hc.job.num} ({' '.join(hc.overrides.task)}): running", flush=True)
        opts = flow.RunOptions(only=only, from_=from_, until=until, command=self.command, progress=self.progress if here else None)
        tag_list = ["multirun", f"job-{hc.job.num}"]
        with local_server.active_run():
            result = run_if_cached(self.recipe, job_overrides, plan, opts, tag_list) or flow.run(
                self.recipe, job_overrides, opts, tag_list=tag_list
            )
        record = {
            "job": hc.job.num,
            "overrides": list(hc.overrides.task),
            "state": result["state"],
            "objective": result["objective"],
            "run_dir": result["run_dir"],
            "steps": {sid: state for sid, state in result["steps"].items() if state != "not-selected"},
            "sweep": self.sweep,
            "pid": os.getpid(),
        }
        atomic_write_json(Path(result["run_dir"]) / JOB_RECORD, record)
        if not self.quiet and os.getpid() == self.launcher_pid:  # in-process (basic launcher): a line as each job ends
            print(_job_line(record), flush=True)
        if result["state"] != "completed":
            if self.sweeper == "optuna":  # a failed trial: Optuna never learns from it, max_failure_rate decides
                raise SweepJobFailed(f"job {hc.job.num} failed")
            return None
        if plan.recipe.objective and result["objective"] is None and self.sweeper == "optuna":
            raise RecipeError([Issue(f"objective '{plan.recipe.objective}' produced no value", key="objective")])
        return result["objective"]

    def _invalid(self, hc: Any, problems: list[str]) -> None:
        """An invalid job runs nothing: its record says why, and the sweep goes on with the others."""
        from halo_pipeline.engine.cache import atomic_write_json

        run_dir = Path(str(hc.runtime.output_dir))
        record = {
            "job": hc.job.num,
            "overrides": list(hc.overrides.task),
            "state": "invalid",
            "objective": None,
            "run_dir": str(run_dir),
            "steps": {},
            "problems": problems,
            "sweep": self.sweep,
            "pid": os.getpid(),
        }
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / JOB_RECORD, record)
        if not self.quiet and os.getpid() == self.launcher_pid:
            print(_job_line(record), flush=True)
        if self.sweeper == "optuna":  # a failed trial, never a value the sampler learns from
            raise SweepJobFailed(f"job {hc.job.num} is invalid")
        return None


def gather(sweep_dir: Path, sweep: str) -> list[dict[str, Any]]:
    """This sweep's job records, from its job directories (wherever the launcher ran the jobs), in job order."""
    import json

    jobs = []
    for path in sweep_dir.glob(f"*/{JOB_RECORD}"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("sweep") == sweep:  # not a job of an earlier sweep into the same directory
            jobs.append(record)
    return sorted(jobs, key=lambda j: j["job"])


def multirun(
    recipe: str,
    overrides: list[str],
    quiet: bool = False,
    only: list[str] | None = None,
    from_: str | None = None,
    until: str | None = None,
    progress: Any = None,
) -> int:
    import hydra

    from halo_pipeline.orchestration import local_server

    path = Path(recipe).resolve()
    if not path.exists():
        raise RecipeError([Issue(f"recipe not found: {recipe}")])
    _, _, issues = read_yaml(path)
    if issues:
        raise RecipeError(issues)
    sweeper = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra/sweeper=")), "basic")
    _quiet_sweeper_logs(sweeper)
    sweep = secrets.token_hex(8)
    overrides = settable_overrides(str(path), overrides)  # documented keys the recipe does not set, as for a single run
    selection = {"only": list(only or []), "from": from_, "until": until}
    invalid = invalid_jobs(path, overrides, selection) if sweeper == "basic" else {}
    if invalid:
        total = len(grid_jobs(overrides))
        print(f"{len(invalid)} of {total} jobs invalid (they will not run):", file=sys.stderr, flush=True)
        for job_overrides, problems in invalid.items():
            print(f"  job ({' '.join(job_overrides)}):", file=sys.stderr)
            for text in problems:
                print("    " + text.replace("\n", "\n    "), file=sys.stderr)
        if len(invalid) == total:
            return 2
    local_server.ensure_api_url()  # one API for every job (and for launcher subprocesses)
    job = Job(path, sweep, sweeper, quiet, ["halo-pipeline", *sys.argv[1:]], selection, invalid, progress)
    direction = _direction(path)
    extra = hydra_defaults(overrides)
    extra.append("hydra.searchpath=[" + ",".join(f"'{s}'" for s in search_path(path.parent)) + "]")
    extra.append(f"+hydra.callbacks.halo_sweep_dir._target_={SweepDir.__module__}.SweepDir")
    if sweeper == "optuna" and not any(o.startswith("hydra.sweeper.direction=") for o in overrides):
        extra.append(f"hydra.sweeper.direction={direction}")
    task = hydra.main(version_base="1.3", config_path=str(path.parent), config_name=path.stem)(job)
    argv, real_stderr = sys.argv, sys.stderr
    sys.argv = ["halo-pipeline", "-m", *overrides, *extra]
    stderr = _HydraStderr(real_stderr)
    sys.stderr = stderr
    stopped: str | None = None
    _SWEEP_DIRS.clear()
    try:
        task()
    except SystemExit as exc:
        if not stderr.stopped_by_failed_trials():
            stderr.release()
            return int(exc.code or 0) and 2  # hydra exits 1 on composition errors after printing them
        rate = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra.sweeper.max_failure_rate=")), "0.0")
        stopped = f"the sweep stopped: failed trials exceeded max_failure_rate={rate} (allow more with hydra.sweeper.max_failure_rate=0.5)"
    finally:
        sys.argv, sys.stderr = argv, real_stderr
    jobs = gather(_SWEEP_DIRS[-1], sweep) if _SWEEP_DIRS else []
    if not quiet:  # the lines of jobs that ran in other processes (joblib, submitit), in job order
        for record in jobs:
            if record.get("pid") != os.getpid():
                print(_job_line(record), flush=True)
    if jobs:
        write_summary(jobs, direction, quiet)
    failed = [j for j in jobs if j["state"] not in ("completed", "invalid")]
    bad = [j for j in jobs if j["state"] == "invalid"]
    if failed and not quiet:
        print(f"{len(failed)} of {len(jobs)} jobs failed: {', '.join(str(j['job']) for j in failed)}", flush=True)
    if bad and not quiet:
        print(f"{len(bad)} of {len(jobs)} jobs invalid: {', '.join(str(j['job']) for j in bad)}", flush=True)
    if stopped:
        print(stopped, file=sys.stderr, flush=True)
    return 1 if failed else 2 if bad else 0


def grid_jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of each job of a grid, as Hydra's basic sweeper makes them (its own function): the same
    text as each job's `hydra.overrides.task`."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = [o for o in OverridesParser.create().parse_overrides(overrides) if not o.key_or_group.startswith("hydra")]
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def invalid_jobs(path: Path, overrides: list[str], selection: dict[str, Any]) -> dict[tuple[str, ...], list[str]]:
    """Every job of a grid validated before any runs: the invalid ones' overrides -> their problems."""
    from hydra.errors import HydraException

    from halo_pipeline.engine.plan import plan_recipe
    from halo_pipeline.orchestration.runs import check_selection

    try:
        jobs = grid_jobs(overrides)
    except HydraException:  # what the sweeper itself must expand (a glob): each job is checked as it starts
        return {}
    invalid = {}
    for job in jobs:
        try:
            check_selection(plan_recipe(path, job), selection["only"], selection["from"], selection["until"])
        except RecipeError as exc:
            invalid[tuple(job)] = [issue.format() for issue in exc.issues]
    return invalid


def _job_line(job: dict[str, Any]) -> str:
    """One plain line per job: what it changed, how it ended, which steps it ran, where it is."""
    ran = " ".join(f"{sid}:{state}" for sid, state in job["steps"].items())
    head = f"job {job['job']} ({' '.join(job['overrides'])}): {job['state']}"
    objective = "" if job["objective"] is None else f"  objective={job['objective']}"
    return f"{head}{objective}  [{ran}]  {job['run_dir']}"


class _HydraStderr:
    """stderr during a sweep. Hydra writes `Error executing job with overrides: [...]` for every failed
    job, and a traceback when the Optuna sweeper gives up on failed trials; each job already has its
    own line, and the stop gets one plain line. Everything else passes through (composition errors)."""

    def __init__(self, real: Any) -> None:
        self.real, self.failed_trial = real, False
        self.held: list[str] = []

    def write(self, text: str) -> int:
        if text.startswith("Error executing job with overrides"):  # the sweeper read a failed job's result: what
            self.failed_trial = True  # follows may be its traceback (written here, wherever the job ran)
            return len(text)
        if self.failed_trial:  # perhaps the sweeper's traceback: decided when the sweep ends
            self.held.append(text)
            return len(text)
        return int(self.real.write(text))

    def flush(self) -> None:
        self.real.flush()

    def stopped_by_failed_trials(self) -> bool:
        return "SweepJobFailed" in "".join(self.held)

    def release(self) -> None:
        self.real.write("".join(self.held))
        self.held.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _quiet_sweeper_logs(sweeper: str) -> None:
    """The Optuna sweeper logs a failed trial as a warning and a stopped sweep as an ERROR with a list of
    exception reprs; with Hydra's logging off those reach stderr raw. We print one plain line instead."""
    for name in ("hydra_plugins.hydra_optuna_sweeper._impl", "hydra_plugins.hydra_optuna_sweeper"):
        logger = logging.getLogger(name)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
    if sweeper == "optuna":  # optuna announces every study it creates
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)


def write_summary(jobs: list[dict[str, Any]], direction: str, quiet: bool) -> None:
    """`summary.json` in the sweep directory: every job (with the steps it ran), and the best one by the objective."""
    from halo_pipeline.engine.cache import atomic_write_json

    scored = [j for j in jobs if j["objective"] is not None and j["state"] == "completed"]
    best = (max if direction == "maximize" else min)(scored, key=lambda j: j["objective"]) if scored else None
    sweep_dir = Path(jobs[0]["run_dir"]).parent
    across = seed_summary(jobs)
    atomic_write_json(sweep_dir / "summary.json", {"direction": direction, "best": best, "jobs": jobs, "across_seeds": across})
    if not quiet:
        for line in _seed_lines(across):
            print(line)
    if not quiet and best is not None:
        print(f"best: job {best['job']} ({' '.join(best['overrides'])}) objective={best['objective']}  -> {sweep_dir / 'summary.json'}")


def _is_seed(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return key == "seed" or key.endswith(".seed")


def seed_summary(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every numeric step metric summarised across the completed jobs that differ only in a seed (`seed=0,1,2`, or
    any `*.seed`): its mean and 95% Student-t interval over those jobs, one group per setting of the other overrides."""
    import json

    from halo_pipeline.evaluation import stats
    from halo_pipeline.views.runs import flatten

    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for job in jobs:
        if job["state"] == "completed":
            groups.setdefault(tuple(o for o in job["overrides"] if not _is_seed(o)), []).append(job)
    out = []
    for rest, members in groups.items():
        values: dict[str, list[float]] = {}
        for job in members:
            try:
                manifest = json.loads((Path(job["run_dir"]) / "replay.json").read_text())
            except (OSError, ValueError):
                continue
            for sid, step in manifest.get("steps", {}).items():
                for key, value in flatten(step.get("metrics") or {}).items():
                    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                        values.setdefault(f"{sid}.{key}", []).append(float(value))
        seeds = [o for job in members for o in job["overrides"] if _is_seed(o)]
        metrics = {k: stats.mean_interval(v) for k, v in sorted(values.items()) if len(v) == len(members)}
        out.append({"overrides": list(rest), "jobs": [j["job"] for j in members], "seeds": seeds, "metrics": metrics})
    return out


def _seed_lines(across: list[dict[str, Any]], most: int = 12) -> list[str]:
    """The printed summary: per group of 2+ jobs, the metrics that vary across seeds, mean and interval."""
    lines = []
    for group in across:
        if len(group["jobs"]) < 2:
            continue
        varying = {k: m for k, m in group["metrics"].items() if m["std"]}
        setting = " ".join(group["overrides"]) or "all jobs"
        lines.append(f"across {len(group['jobs'])} seeds ({setting}): mean [95% interval] of the metrics that vary")
        for key, m in list(varying.items())[:most]:
            lines.append(f"  {key}: {m['mean']:.4g} [{m['low']:.4g}, {m['high']:.4g}]")
        if len(varying) > most:
            lines.append(f"  ... {len(varying) - most} more in summary.json")
        if not varying:
            lines.append("  (every metric is the same in every job)")
    return lines


def _direction(path: Path) -> str:
    import yaml

    data: Any = yaml.safe_load(path.read_text()) or {}
    return str(data.get("direction", "maximize"))
