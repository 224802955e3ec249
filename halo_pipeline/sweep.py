"""Hydra multirun (`run -m`): Hydra's own sweepers and launchers, one Prefect flow run per job.

Every job is composed by Hydra, validated, and run through the same flow as a single run; its run
directory is the job's directory under `multirun/<name>/<time>/<n>`. A recipe's `objective`
(`<step>.<metric>`) is returned to the sweeper, so `hydra/sweeper=optuna` optimizes it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from halo_pipeline.cache import sha256_file
from halo_pipeline.config import Composed, hydra_defaults, search_path
from halo_pipeline.errors import Issue, RecipeError
from halo_pipeline.recipe import read_yaml


def multirun(recipe: str, overrides: list[str], quiet: bool = False) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    from halo_pipeline import local_server
    from halo_pipeline.validate import build_plan

    path = Path(recipe).resolve()
    if not path.exists():
        raise RecipeError([Issue(f"recipe not found: {recipe}")])
    _, smap, issues = read_yaml(path)
    if issues:
        raise RecipeError(issues)
    local_server.ensure_api_url()  # one API for every job (and for launcher subprocesses)
    failures: list[str] = []
    jobs: list[dict[str, Any]] = []
    sweeper = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra/sweeper=")), "basic")

    def job(cfg: DictConfig) -> float | None:
        from halo_pipeline import runner

        hc = HydraConfig.get()
        job_overrides = list(hc.overrides.task)
        OmegaConf.set_struct(cfg, False)
        config = OmegaConf.to_container(cfg, resolve=True)
        composed = Composed(
            config=config,  # type: ignore[arg-type]
            choices={k: str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and v is not None},
            recipe_path=path,
            base_dir=path.parent,
            overrides=job_overrides,
            run_dir=Path(hc.runtime.output_dir),
            source=smap,
            recipe_sha256=sha256_file(path),
        )
        plan = build_plan(composed)
        opts = runner.RunOptions(run_dir=composed.run_dir, command=["halo-pipeline", *sys.argv[1:]], plan=plan)
        with local_server.active_run():
            result = runner.run(str(path), job_overrides, opts, tag_list=["multirun", f"job-{hc.job.num}"])
        jobs.append(
            {
                "job": hc.job.num,
                "overrides": job_overrides,
                "state": result["state"],
                "objective": result["objective"],
                "run_dir": result["run_dir"],
            }
        )
        if not quiet:
            line = f"job {hc.job.num} ({' '.join(job_overrides)}): {result['state']}  objective={result['objective']}  {result['run_dir']}"
            print(line, flush=True)
        if result["state"] != "completed":
            failures.append(result["run_dir"])
            if sweeper == "optuna":
                return None
        if plan.recipe.objective and result["objective"] is None and sweeper == "optuna":
            raise RecipeError([Issue(f"objective '{plan.recipe.objective}' produced no value", key="objective")])
        return result["objective"]

    direction = _direction(path)
    extra = hydra_defaults(overrides)
    extra.append("hydra.searchpath=[" + ",".join(f"'{s}'" for s in search_path(path.parent)) + "]")
    if sweeper == "optuna" and not any(o.startswith("hydra.sweeper.direction=") for o in overrides):
        extra.append(f"hydra.sweeper.direction={direction}")
    task = hydra.main(version_base="1.3", config_path=str(path.parent), config_name=path.stem)(job)
    argv = sys.argv
    sys.argv = ["halo-pipeline", "-m", *overrides, *extra]
    try:
        task()
    except SystemExit as exc:  # hydra exits 1 on composition errors after printing them
        return int(exc.code or 0) and 2
    finally:
        sys.argv = argv
    if jobs:
        write_summary(jobs, direction, quiet)
    return 1 if failures else 0


def write_summary(jobs: list[dict[str, Any]], direction: str, quiet: bool) -> None:
    """`summary.json` in the sweep directory: every job, and the best one by the recipe's objective."""
    from halo_pipeline.cache import atomic_write_json

    scored = [j for j in jobs if j["objective"] is not None]
    best = (max if direction == "maximize" else min)(scored, key=lambda j: j["objective"]) if scored else None
    sweep_dir = Path(jobs[0]["run_dir"]).parent
    atomic_write_json(sweep_dir / "summary.json", {"direction": direction, "best": best, "jobs": jobs})
    if not quiet and best is not None:
        print(f"best: job {best['job']} ({' '.join(best['overrides'])}) objective={best['objective']}  -> {sweep_dir / 'summary.json'}")


def _direction(path: Path) -> str:
    import yaml

    data: Any = yaml.safe_load(path.read_text()) or {}
    return str(data.get("direction", "maximize"))
