"""`halo-pipeline deploy`: a Prefect deployment of a recipe (parameters: recipe + overrides) with a schedule.

Served (default): this process polls for the deployment's runs and executes each in a child
process, until interrupted. Registered (`--register-only`): the deployment goes to a process work
pool, and any `prefect worker start --pool <pool>` on a machine with the project runs it.

Either way the flow is loaded by its module path (`halo_pipeline.orchestration.flow.pipeline`), never from a
file (which would put our package's folder on `sys.path`), and runs in the project directory with
the environment the terminal had: the same pipeline `halo-pipeline run` executes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

# What a scheduled run takes from the shell that deployed it (the cache and home resolved to absolute paths).
CARRIED_ENV = (
    "OMP_NUM_THREADS", "HALO_PIPELINE_CACHE", "HALO_PIPELINE_HOME", "HALO_PIPELINE_SANDBOX", "HF_HOME", "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE", "PYTHONPATH",
)  # fmt: skip
DEFAULT_POOL = "halo-pipeline"


def run_environment() -> dict[str, str]:
    from halo_pipeline.engine.cache import default_cache_dir

    env = {k: os.environ[k] for k in CARRIED_ENV if os.environ.get(k)}
    env["HALO_PIPELINE_CACHE"] = str(default_cache_dir())
    if "HALO_PIPELINE_HOME" in env:
        env["HALO_PIPELINE_HOME"] = str(Path(env["HALO_PIPELINE_HOME"]).resolve())
    return env


def deploy(
    recipe: str,
    overrides: list[str],
    name: str | None,
    cron: str | None,
    interval: float | None,
    serve: bool,
    tags: list[str],
    pool: str | None = None,
) -> int:
    import yaml
    from prefect import serve as prefect_serve
    from prefect.deployments.runner import EntrypointType, RunnerDeployment

    from halo_pipeline.orchestration.flow import pipeline

    with open(recipe) as f:
        recipe_name = str((yaml.safe_load(f) or {}).get("name", "recipe"))
    options: dict[str, Any] = {
        "name": name or recipe_name,
        "parameters": {"recipe": recipe, "overrides": overrides, "tags": tags},
        "tags": ["halo-pipeline", recipe_name, *tags],
        "description": f"halo-pipeline run {recipe} {' '.join(overrides)}".strip(),
        "entrypoint_type": EntrypointType.MODULE_PATH,
    }
    if cron:
        options["cron"] = cron
    if interval:
        options["interval"] = interval
    if not serve:
        pool = pool or DEFAULT_POOL
        _ensure_process_pool(pool)
        deployment_id = pipeline.deploy(
            work_pool_name=pool,
            job_variables={"working_dir": str(Path.cwd()), "env": run_environment()},
            build=False,
            push=False,
            print_next_steps=False,
            **options,
        )
        print(f"registered deployment halo-pipeline/{options['name']} in work pool '{pool}'")
        print(f"  runs start once a worker polls the pool:  prefect worker start --pool {pool}")
        _print_ui(str(deployment_id))
        return 0
    deployment: RunnerDeployment = pipeline.to_deployment(**options)  # type: ignore[assignment]  # sync call, sync context
    deployment_id = deployment.apply()
    print(f"serving deployment halo-pipeline/{deployment.name} (Ctrl-C to stop)", flush=True)
    _print_ui(str(deployment_id))
    prefect_serve(deployment)
    return 0


def _ensure_process_pool(pool: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_work_pool(pool)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another deploy created it meanwhile
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            return
        if found.type != "process":
            raise SystemExit(f"work pool '{pool}' is a {found.type} pool; use a process pool (--pool NAME) for halo-pipeline runs")


def _print_ui(deployment_id: str) -> None:
    from halo_pipeline.orchestration.local_server import ui_url

    api = os.environ.get("PREFECT_API_URL")
    if api:
        print(f"  Prefect UI: {ui_url(api)}/deployments/deployment/{deployment_id}", flush=True)
