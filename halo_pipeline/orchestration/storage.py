"""Shared storage, checked when a run starts on a cluster's workers.

A step reads its inputs and commits its outputs by path: the cache (`HALO_PIPELINE_CACHE`, default
`outputs/.cache`) and the run directory. On `runner=dask` or `runner=ray` with an `address` (an existing
cluster, perhaps other machines), every worker must see both at the same absolute paths — the same
directories, not directories of the same name. Before any step is submitted, the flow writes a probe
file with a fresh token into each, and every worker must read the token back and be able to write
there; a worker that cannot fails the run at once with the path and the fix (docs/scale.md).
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Any

from halo_pipeline.engine.errors import Issue, RecipeError

PROBE = ".halo-storage-probe"


def probe(expected: list[tuple[str, str, str, str]]) -> dict[str, Any]:
    """Run on a worker: for each (what, directory, probe file, token), why this worker cannot use it (if it cannot)."""
    problems = []
    for what, directory, name, token in expected:
        where = Path(directory)
        if not where.is_dir():
            problems.append((what, directory, "does not exist on this worker"))
            continue
        try:
            seen = (where / name).read_text()
        except OSError:
            seen = None
        if seen != token:
            problems.append((what, directory, "is a different directory on this worker (the flow's probe file is not in it)"))
            continue
        test = where / f"{name}.{socket.gethostname()}.{os.getpid()}"
        try:
            test.write_text("w")
            test.unlink()
        except OSError as exc:
            problems.append((what, directory, f"is not writable on this worker ({exc.strerror or exc})"))
    return {"host": socket.gethostname(), "problems": problems}


def check(runner_cfg: dict[str, Any], run_dir: Path, cache_root: Path | None = None) -> None:
    """Fail the run before any step starts when a worker of an existing cluster cannot see the cache or the run directory."""
    from halo_pipeline.engine.cache import default_cache_dir

    cfg = runner_cfg or {}
    name, address = cfg.get("name", "threads"), cfg.get("address")
    if name not in ("dask", "ray") or not address:
        return  # threads, processes and local clusters run on this machine: they see what the flow sees
    cache_root = cache_root or default_cache_dir()
    cache_root.mkdir(parents=True, exist_ok=True)
    expected, written = [], []
    for what, directory in (("cache", cache_root), ("run directory", run_dir)):
        token = secrets.token_hex(16)
        path = directory / f"{PROBE}-{token[:8]}"
        path.write_text(token)
        written.append(path)
        expected.append((what, str(directory), path.name, token))
    try:
        reports = _dask(address, expected) if name == "dask" else _ray(address, expected)
    finally:
        for path in written:
            path.unlink(missing_ok=True)
    if not reports:
        raise RecipeError(
            [Issue(f"the {name} cluster at {address} has no workers", key="runner.address", hint="start workers, then run again")]
        )
    issues = []
    for worker, report in sorted(reports.items()):
        for what, directory, why in report["problems"]:
            fix = (
                "put it on a filesystem every worker mounts at the same path (NFS, Lustre, a shared volume): "
                + ("HALO_PIPELINE_CACHE=/shared/halo-cache" if what == "cache" else "hydra.run.dir=/shared/runs/NAME")
                + "; see docs/scale.md"
            )
            issues.append(
                Issue(
                    f"{name} worker {worker} (host {report['host']}) cannot use the {what} {directory}: it {why}",
                    key="runner.address",
                    hint=fix,
                )
            )
    if issues:
        raise RecipeError(issues)


def _dask(address: str, expected: list[tuple[str, str, str, str]]) -> dict[str, Any]:
    from distributed import Client

    with Client(address, timeout="30s") as client:
        return dict(client.run(probe, expected))  # on every worker


def _ray(address: str, expected: list[tuple[str, str, str, str]]) -> dict[str, Any]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, namespace="prefect")  # kept: the task runner then reuses it
    remote = ray.remote(num_cpus=0)(probe)
    nodes = [n for n in ray.nodes() if n.get("Alive") or n.get("alive")]
    refs = {
        n["NodeID"]: remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False)).remote(expected)
        for n in nodes
    }
    return {node: ray.get(ref, timeout=60) for node, ref in refs.items()}
