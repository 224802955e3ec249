"""`halo-pipeline deploy`: a Prefect deployment of a recipe (parameters: recipe + overrides) with a schedule."""

from __future__ import annotations

from typing import Any


def deploy(
    recipe: str,
    overrides: list[str],
    name: str | None,
    cron: str | None,
    interval: float | None,
    serve: bool,
    tags: list[str],
) -> int:
    import yaml
    from prefect import serve as prefect_serve
    from prefect.deployments.runner import RunnerDeployment

    from halo_pipeline.runner import pipeline

    with open(recipe) as f:
        recipe_name = (yaml.safe_load(f) or {}).get("name", "recipe")
    schedule: dict[str, Any] = {}
    if cron:
        schedule["cron"] = cron
    if interval:
        schedule["interval"] = interval
    deployment: RunnerDeployment = pipeline.to_deployment(  # type: ignore[assignment]  # sync call, sync context
        name=name or str(recipe_name),
        parameters={"recipe": recipe, "overrides": overrides, "tags": tags},
        tags=["halo-pipeline", str(recipe_name), *tags],
        description=f"halo-pipeline run {recipe} {' '.join(overrides)}".strip(),
        **schedule,
    )
    if not serve:
        deployment_id = deployment.apply()
        print(f"registered deployment halo-pipeline/{deployment.name} ({deployment_id}); runs need `halo-pipeline deploy` serving it")
        return 0
    print(f"serving deployment halo-pipeline/{deployment.name} (Ctrl-C to stop)", flush=True)
    prefect_serve(deployment)
    return 0
