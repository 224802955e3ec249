"""Beyond one process: sweeps on Hydra's process launchers (joblib, submitit_local), runs on a Dask cluster
started apart as a user would (and one whose worker cannot see the cache), and runner=ray on a local Ray."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TESTS, cli, write

SWEEP = """
# a sweepable recipe: its objective is copy.score = rows / 10; `make` is shared by every job
defaults:
  - backend: cpu
  - algorithm: sft
  - runner: threads
  - _self_
name: sweep
objective: copy.score
direction: maximize
steps:
  make:
    uses: fake_steps:make
    with: {n: 4, counter: COUNTER, sleep: 1.0}
  copy:
    uses: fake_steps:copy
    inputs: {dataset: make.dataset}
    with: {suffix: "-${algorithm.name}", fail_below: 2}
"""


def _sweep_recipe(project: Path) -> Path:
    return write(project / "recipes/sweep.yaml", SWEEP.replace("COUNTER", str(project / "make-runs.txt")))


def _jobs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(
    "launcher",
    [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]],
    ids=["joblib", "submitit_local"],
)
def test_sweep_on_a_process_launcher_gathers_its_summary_from_the_job_directories(project: Path, launcher: list[str]) -> None:
    recipe = _sweep_recipe(project)
    res = cli("run", str(recipe), "-m", *launcher, "algorithm=sft,dpo", "steps.make.with.n=1,3,5", cwd=project)
    assert res.returncode == 1, res.stdout + res.stderr  # n=1 fails copy's fail_below: a failed job, the others complete
    (sweep_dir,) = (project / "multirun/sweep").iterdir()
    jobs = _jobs(sweep_dir)
    assert [j.name for j in jobs] == ["0", "1", "2", "3", "4", "5"]
    manifests = [json.loads((j / "replay.json").read_text()) for j in jobs]
    records = [json.loads((j / "job.json").read_text()) for j in jobs]
    # each job is its own Prefect flow run, in a process other than the launcher's
    assert len({m["prefect"]["flow_run_id"] for m in manifests}) == 6
    pids = {r["pid"] for r in records}
    assert len(pids) >= 2 if "joblib" in launcher[0] else len(pids) == 6  # joblib reuses its 2 workers; submitit: a process per job
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert [j["job"] for j in summary["jobs"]] == [0, 1, 2, 3, 4, 5]
    assert {j["state"] for j in summary["jobs"] if "steps.make.with.n=1" in j["overrides"]} == {"failed"}
    assert summary["best"]["objective"] == 0.5 and "steps.make.with.n=5" in summary["best"]["overrides"]
    assert "best: job" in res.stdout and "2 of 6 jobs failed" in res.stdout
    assert sum(line.startswith("job ") for line in res.stdout.splitlines()) == 6  # one line per job, printed by the launcher
    # the jobs shared one cache: each `make` variant ran once although two jobs (sft, dpo) needed it
    runs = (project / "make-runs.txt").read_text().split()
    assert len(runs) == 3, runs
    states = [r["steps"]["make"] for r in records]
    assert states.count("ran") == 3 and states.count("cached") == 3


@pytest.fixture()
def dask_cluster(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """`dask scheduler` and two `dask worker`s (one with a GPU resource), started from the venv as a user would;
    yields (address, the GPU worker, scheduler file)."""
    dask = str(Path(sys.executable).parent / "dask")
    info = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    log = open(tmp_path / "dask.log", "wb")  # noqa: SIM115
    scheduler = subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(info)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and not info.exists():
        time.sleep(0.2)
    address = json.loads(info.read_text())["address"]
    worker = subprocess.Popen(
        [dask, "worker", address, "--nworkers", "1", "--nthreads", "2", "--no-dashboard", "--name", "cpu"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    gpu = subprocess.Popen(  # a worker that declares a GPU (the tests have none: Dask only counts it)
        [dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--name", "gpu", "--resources", "GPU=1"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address, gpu, info
    finally:
        for proc in (worker, gpu, scheduler):
            proc.terminate()
        for proc in (worker, scheduler):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


PAR = """
defaults:
  - runner: threads
  - _self_
name: par
steps:
  make:
    uses: fake_steps:make
    with: {n: 3, counter: COUNTER}
  copy:
    uses: fake_steps:copy
    inputs: {dataset: make.dataset}
"""


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.add(int(entry.name))
    return found


@pytest.mark.usefixtures("prefect_api")
def test_a_run_on_a_separately_started_dask_cluster(project: Path, dask_cluster: tuple[str, subprocess.Popen[bytes], Path]) -> None:
    address, gpu_worker, _ = dask_cluster
    recipe = write(project / "recipes/par.yaml", PAR.replace("COUNTER", str(project / "pids.txt")))
    res = cli("run", str(recipe), "runner=dask", f"runner.address={address}", "+runner.resources.make.GPU=1", "-q", cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    m = json.loads((Path(res.stdout.strip()) / "replay.json").read_text())
    assert m["config"]["runner"]["address"] == address and {s["state"] for s in m["steps"].values()} == {"ran"}
    (pid,) = map(int, (project / "pids.txt").read_text().split())
    assert pid in _children(gpu_worker.pid)  # `make` asked for a GPU: it ran in the process of the worker that has one
    assert not list((project / "outputs/.cache").glob(".halo-storage-probe*")), "the storage probe files are removed"


@pytest.mark.usefixtures("prefect_api")
def test_a_worker_that_cannot_see_the_cache_fails_the_run_at_once(project: Path, tmp_path: Path) -> None:
    """A second worker in its own mount namespace, where the project directory is an empty tmpfs: another machine
    without the shared filesystem. The run fails before any step, naming the worker, the path and the fix."""
    if shutil.which("bwrap") is None or subprocess.run(["bwrap", "--bind", "/", "/", "true"], capture_output=True).returncode:
        pytest.skip("bubblewrap cannot make a mount namespace here")
    dask = str(Path(sys.executable).parent / "dask")
    info = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(info)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
    ]
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not info.exists():
            time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        blind = ["bwrap", "--bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", str(project)]
        procs.append(
            subprocess.Popen(
                [*blind, dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--name", "blind"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        )
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(1, timeout=60)
        recipe = write(project / "recipes/par.yaml", PAR.replace("COUNTER", str(project / "pids.txt")))
        started = time.time()
        res = cli("run", str(recipe), "runner=dask", f"runner.address={address}", cwd=project)
        assert res.returncode == 2, res.stdout + res.stderr
        cache = str(project / "outputs" / ".cache")
        assert f"cannot use the cache {cache}: it does not exist on this worker" in res.stderr, res.stderr
        assert "HALO_PIPELINE_CACHE=/shared/halo-cache" in res.stderr and "docs/scale.md" in res.stderr
        assert not (project / "pids.txt").exists(), "no step ran"
        assert time.time() - started < 60
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.mark.slow  # Ray's own start-up is ~15 s on 2 cores; the default suite keeps Dask as the cluster runner
@pytest.mark.usefixtures("prefect_api")
def test_runner_ray_runs_the_steps_as_ray_tasks(project: Path) -> None:
    """runner=ray on a local Ray instance (prefect-ray starts it and stops it with the flow)."""
    pytest.importorskip("prefect_ray")
    recipe = write(project / "recipes/par.yaml", PAR.replace("COUNTER", str(project / "pids.txt")))
    res = cli("run", str(recipe), "runner=ray", "runner.num_cpus=2", "-q", cwd=project, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    m = json.loads((Path(res.stdout.strip()) / "replay.json").read_text())
    assert m["groups"]["runner"] == "ray" and {s["state"] for s in m["steps"].values()} == {"ran"}
