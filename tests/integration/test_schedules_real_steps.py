"""Scheduled and UI-triggered runs execute what the terminal executes: the tiny quickstart's real step kinds,
through a served deployment and through a registered deployment picked up by a Prefect worker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO


def _project(project: Path) -> None:
    shutil.copytree(REPO / "recipes", project / "recipes", dirs_exist_ok=True)


def _start(args: list[str], cwd: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).parent / "halo-pipeline"
    out = open(log, "wb")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen([str(exe), *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _deployment(name: str, timeout: float = 120) -> object:
    from prefect.client.orchestration import get_client

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with get_client(sync_client=True) as client:
                return client.read_deployment_by_name(f"halo-pipeline/{name}")
        except Exception:
            time.sleep(1)
    raise AssertionError(f"deployment {name} was not registered")


def _finished_run(deployment_id: object, timeout: float) -> object:
    """The deployment's first flow run to reach a final state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.time() + timeout
    while time.time() < deadline:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        done = [r for r in runs if r.state and r.state.is_final()]
        if done:
            return done[0]
        time.sleep(2)
    raise AssertionError("no run of the deployment finished in time")


def _check_run(project: Path, name: str, **expect: object) -> dict:
    (run_dir,) = list((project / "outputs" / name).iterdir())
    m = json.loads((run_dir / "replay.json").read_text())
    assert m["state"] == "completed", {s: (v["state"], v.get("error")) for s, v in m["steps"].items()}
    assert all(s["state"] in ("ran", "cached") for s in m["steps"].values())
    for key, value in expect.items():
        assert m["steps"]["synthesize"]["metrics"][key] == value
    return m


def test_served_deployment_first_scheduled_run_completes_every_step(tmp_path: Path) -> None:
    """`deploy --interval 30` on the reusable local server, as a user starts it: schedules need the server's
    scheduler (the test harness's ephemeral server has none)."""
    project = tmp_path / "project"
    _project(project)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(HALO_PIPELINE_HOME=str(home), HALO_PIPELINE_LOCAL_SERVER="1", PREFECT_HOME=str(tmp_path / "prefect"))
    env["HALO_PIPELINE_CACHE"] = str(project / "outputs/.cache")
    log = tmp_path / "deploy.log"
    proc = _start(["deploy", "recipes/tiny_debug.yaml", "--interval", "30", "--name", "tiny-every-30s"], project, log, env)
    try:
        deadline = time.time() + 420
        first = None
        while time.time() < deadline and first is None:
            for manifest in sorted((project / "outputs/tiny-debug").glob("*/replay.json")):
                if json.loads(manifest.read_text())["state"] != "running":
                    first = manifest
                    break
            time.sleep(2)
        assert first is not None, "no scheduled run finished: " + log.read_text()[-3000:]
    finally:
        _stop(proc)
        exe = Path(sys.executable).parent / "halo-pipeline"
        subprocess.run([str(exe), "server", "--stop"], env=env, capture_output=True, timeout=60)
    m = json.loads(first.read_text())
    assert m["state"] == "completed", {s: (v["state"], v.get("error")) for s, v in m["steps"].items()}
    assert all(s["state"] in ("ran", "cached") for s in m["steps"].values())
    assert m["steps"]["synthesize"]["metrics"]["prompts"] == 8 and m["steps"]["serve"]["state"] in ("ran", "cached")
    assert m["prefect"]["flow_run_id"], "the run is a Prefect flow run of the deployment"
    assert "Prefect UI: http://127.0.0.1:" in log.read_text()


@pytest.mark.usefixtures("prefect_api")
def test_registered_deployment_runs_on_a_worker_with_overrides_from_the_call(project: Path, tmp_path: Path) -> None:
    """`deploy --register-only` + `prefect worker start`, triggered like the UI's "run with parameters"."""
    _project(project)
    pool = f"halo-test-{os.getpid()}"
    exe = Path(sys.executable).parent / "halo-pipeline"
    reg = subprocess.run(
        [str(exe), "deploy", "recipes/tiny_debug.yaml", "--register-only", "--pool", pool, "--name", "tiny-worker"],
        cwd=project, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert reg.returncode == 0, reg.stdout + reg.stderr
    assert f"prefect worker start --pool {pool}" in reg.stdout
    deployment = _deployment("tiny-worker")
    env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        triggered = subprocess.run(
            [str(Path(sys.executable).parent / "prefect"), "deployment", "run", "halo-pipeline/tiny-worker",
             "--param", 'overrides=["steps.synthesize.with.limit=3"]'],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert triggered.returncode == 0, triggered.stdout + triggered.stderr
        run = _finished_run(deployment.id, timeout=420)  # type: ignore[attr-defined]
        assert run.state.is_completed(), (run.state, (tmp_path / "worker.log").read_text()[-3000:])  # type: ignore[attr-defined]
    finally:
        _stop(worker)
        log.close()
    # the worker ran in the project directory it was deployed from, with the override given at trigger time
    m = _check_run(project, "tiny-debug", prompts=3)
    assert "steps.synthesize.with.limit=3" in m["overrides"]
