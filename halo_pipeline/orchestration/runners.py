"""The `runner` group: which Prefect task runner runs a run's steps.

threads and processes stay on this machine; dask (prefect-dask) and ray (prefect-ray) run steps on a
cluster's workers, a local one or an existing one (`runner.address=`). On those two, a step can ask for
what its worker must have — a GPU — with `runner.resources`: step id or kind -> Dask worker resources
(`{train: {GPU: 1}}`, for workers started with `dask worker --resources GPU=1`) or Ray remote options
(`{train: {num_gpus: 1}}`). Steps read and write the cache and the run directory by path, so every
worker must see both (`storage.py` checks it when the run starts; docs/scale.md).
"""

from __future__ import annotations

from typing import Any

from halo_pipeline.engine.errors import Issue, RecipeError

RUNNERS = ("threads", "processes", "dask", "ray")


def requested(task_name: str, resources: dict[str, Any]) -> dict[str, Any]:
    """What the step behind a task named `<id>:<kind>` asks of its worker: by step id, else by kind."""
    sid, _, kind = task_name.partition(":")
    found = resources.get(sid, resources.get(kind))
    return dict(found) if isinstance(found, dict) else {}


def make_task_runner(runner_cfg: dict[str, Any]) -> Any:
    cfg = runner_cfg or {}
    name = cfg.get("name", "threads")
    resources = dict(cfg.get("resources") or {})
    if resources and name not in ("dask", "ray"):
        raise RecipeError(
            [Issue(f"runner.resources is for runner=dask or ray (a worker per resource), not {name}", key="runner.resources")]
        )
    if name == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=int(cfg.get("max_workers", 4)))
    if name == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=int(cfg.get("max_workers", 2)))
    if name == "dask":
        return _dask(cfg, resources)
    if name == "ray":
        return _ray(cfg, resources)
    raise RecipeError([Issue(f"unknown runner '{name}'", key="runner", hint=f"choose runner={', '.join(RUNNERS)}")])


def _dask(cfg: dict[str, Any], resources: dict[str, Any]) -> Any:
    import dask
    from prefect_dask import DaskTaskRunner

    class DaskRunner(DaskTaskRunner):
        """prefect-dask's runner; a step's resources become its Dask task's resource restrictions."""

        def submit(self, task: Any, parameters: Any, wait_for: Any = None, dependencies: Any = None) -> Any:
            asked = requested(task.name, resources)
            if not asked:
                return super().submit(task, parameters, wait_for, dependencies)
            with dask.annotate(resources=asked):  # the scheduler sends it only to workers that have them
                return super().submit(task, parameters, wait_for, dependencies)

        def duplicate(self) -> Any:
            return make_task_runner(cfg)

    if cfg.get("address"):
        return DaskRunner(address=cfg["address"])
    return DaskRunner(
        cluster_kwargs={
            "n_workers": int(cfg.get("n_workers", 2)),
            "threads_per_worker": int(cfg.get("threads_per_worker", 1)),
            "processes": True,
            "dashboard_address": None,
        }
    )


def _ray(cfg: dict[str, Any], resources: dict[str, Any]) -> Any:
    try:
        from prefect_ray import RayTaskRunner
        from prefect_ray.context import remote_options
    except ImportError:
        raise RecipeError([Issue("runner=ray needs prefect-ray and ray", key="runner", hint="pip install 'halo-pipeline[ray]'")]) from None

    class RayRunner(RayTaskRunner):
        """prefect-ray's runner; a step's resources become its Ray task's remote options (num_gpus, resources)."""

        def submit(self, task: Any, parameters: Any, wait_for: Any = None, dependencies: Any = None) -> Any:
            with remote_options(**requested(task.name, resources)):
                return super().submit(task, parameters, wait_for, dependencies)

        def duplicate(self) -> Any:
            return make_task_runner(cfg)

    init_kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    if not cfg.get("address") and cfg.get("num_cpus"):
        init_kwargs["num_cpus"] = int(cfg["num_cpus"])  # a local instance: how much of this machine it takes
    return RayRunner(address=cfg.get("address") or None, init_kwargs=init_kwargs)
