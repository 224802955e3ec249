"""Hydra multirun (grid and Optuna), the dask and process runners, Prefect deployments, the reusable server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TESTS, cli, write

SWEEP = """
# a sweepable recipe: its objective is copy.score = rows / 10
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
    with: {n: 4}
  copy:
    uses: fake_steps:copy
    inputs: {dataset: make.dataset}
    with: {suffix: "-${algorithm.name}"}
"""


@pytest.mark.usefixtures("prefect_api")
def test_multirun_grid_one_flow_run_per_job(project: Path) -> None:
    recipe = write(project / "recipes/sweep.yaml", SWEEP)
    res = cli("run", str(recipe), "-m", "algorithm=sft,dpo", "steps.make.with.n=3,5", cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    (sweep_dir,) = (project / "multirun/sweep").iterdir()
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        m = json.loads((job / "replay.json").read_text())
        seen.add((m["groups"]["algorithm"], m["config"]["steps"]["make"]["with"]["n"]))
        assert m["state"] == "completed" and m["objective"] == m["config"]["steps"]["make"]["with"]["n"] / 10
    assert seen == {("sft", 3), ("sft", 5), ("dpo", 3), ("dpo", 5)}
    assert (sweep_dir / "multirun.yaml").exists()
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert len(summary["jobs"]) == 4 and summary["best"]["objective"] == 0.5 and "steps.make.with.n=5" in summary["best"]["overrides"]
    assert "best: job" in res.stdout


@pytest.mark.usefixtures("prefect_api")
def test_optuna_sweep_optimizes_the_objective(project: Path) -> None:
    recipe = write(project / "recipes/sweep.yaml", SWEEP)
    res = cli(
        "run", str(recipe), "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4",
        "hydra.sweeper.sampler.seed=0", "steps.make.with.n=int(interval(1,9))", cwd=project,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    (sweep_dir,) = (project / "multirun/sweep").iterdir()
    results = (sweep_dir / "optimization_results.yaml").read_text()
    import yaml

    best = yaml.safe_load(results)
    values = [json.loads((j / "replay.json").read_text())["objective"] for j in sweep_dir.iterdir() if j.name.isdigit()]
    assert len(values) == 4 and best["best_value"] == max(values)
    assert best["best_params"]["steps.make.with.n"] == round(best["best_value"] * 10)


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("runner", ["threads", "dask", "processes"])
def test_runner_group_runs_a_real_recipe(project: Path, runner: str) -> None:
    recipe = write(
        project / "recipes/par.yaml",
        """
defaults:
  - runner: threads
  - _self_
name: par
steps:
  make:
    uses: fake_steps:make
  other:
    uses: fake_steps:rendezvous
    inputs: {dataset: make.dataset}
    with: {dir: "RDV", me: other, other: slow}
  slow:
    uses: fake_steps:rendezvous
    inputs: {dataset: make.dataset}
    with: {dir: "RDV", me: slow, other: other}
""".replace("RDV", str(project)),
    )
    res = cli("run", str(recipe), f"runner={runner}", "-q", cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    m = json.loads((Path(res.stdout.strip()) / "replay.json").read_text())
    assert m["groups"]["runner"] == runner and m["config"]["runner"]["name"] == runner
    assert {s["state"] for s in m["steps"].values()} == {"ran"}
    # each of the two independent steps waited for the other to start: they ran at the same time
    assert (project / "other").exists() and (project / "slow").exists()


@pytest.mark.usefixtures("prefect_api")
def test_deployment_triggered_through_the_api_runs_the_recipe(project: Path) -> None:
    recipe = write(project / "recipes/sweep.yaml", SWEEP)
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    exe = Path(sys.executable).parent / "halo-pipeline"
    server = subprocess.Popen(
        [str(exe), "deploy", str(recipe), "--cron", "0 3 * * *", "--name", "nightly"],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment

        deadline = time.time() + 90
        deployment = None
        while time.time() < deadline and deployment is None:
            try:
                with get_client(sync_client=True) as client:
                    deployment = client.read_deployment_by_name("halo-pipeline/nightly")
            except Exception:
                time.sleep(1)
        assert deployment is not None, "deployment was not registered"
        assert deployment.parameters["recipe"] == str(recipe)
        assert any("0 3 * * *" in str(s.schedule) for s in deployment.schedules)
        flow_run = run_deployment("halo-pipeline/nightly", parameters={"overrides": ["algorithm=dpo"]}, timeout=120)
        assert flow_run.state.is_completed(), flow_run.state
    finally:
        server.terminate()
        server.wait(timeout=30)
    (run_dir,) = (project / "outputs/sweep").iterdir()
    m = json.loads((run_dir / "replay.json").read_text())
    assert m["groups"]["algorithm"] == "dpo" and m["state"] == "completed"


def test_local_server_is_started_once_and_reused(project: Path, tmp_path: Path) -> None:
    """Without PREFECT_API_URL, the first run starts a background server and later runs reuse it."""
    recipe = write(project / "recipes/sweep.yaml", SWEEP)
    home = tmp_path / "home"
    env = {"HALO_PIPELINE_HOME": str(home), "HALO_PIPELINE_LOCAL_SERVER": "1", "PREFECT_API_URL": "", "PREFECT_HOME": str(tmp_path / "ph")}
    try:
        first = cli("run", str(recipe), "-q", cwd=project, env=env)
        assert first.returncode == 0, first.stderr
        info = json.loads((home / "server.json").read_text())
        t0 = time.time()
        second = cli("run", str(recipe), "-q", cwd=project, env=env)
        warm = time.time() - t0
        assert second.returncode == 0, second.stderr
        assert json.loads((home / "server.json").read_text())["pid"] == info["pid"]  # same server
        assert warm < 15, f"a warm run took {warm:.1f} s"
        status = cli("server", "--status", cwd=project, env=env)  # the one command that says where it is
        assert status.returncode == 0 and info["url"] in status.stdout and info["url"].removesuffix("/api") in status.stdout
    finally:
        stop = cli("server", "--stop", cwd=project, env=env)
        assert stop.returncode == 0
    status = cli("server", "--status", cwd=project, env=env)
    assert status.returncode == 1 and "no background server is running" in status.stdout


@pytest.mark.usefixtures("prefect_api")
def test_step_selection_means_the_same_in_a_sweep(project: Path) -> None:
    """`--until make -m ...`: every job runs make only; the summary says which steps each job ran."""
    recipe = write(project / "recipes/sweep.yaml", SWEEP)
    res = cli("run", str(recipe), "--until", "make", "-m", "steps.make.with.n=3,5", cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    (sweep_dir,) = (project / "multirun/sweep").iterdir()
    for job in sorted(p for p in sweep_dir.iterdir() if p.name.isdigit()):
        m = json.loads((job / "replay.json").read_text())
        assert m["selected"] == ["make"] and m["steps"]["make"]["state"] == "ran"
        assert m["steps"]["copy"]["state"] == "not-selected"
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert [j["steps"] for j in summary["jobs"]] == [{"make": "ran"}, {"make": "ran"}]
    assert "[make:ran]" in res.stdout and "copy" not in res.stdout.split("best:")[0].replace("copy.score", "")
    bad = cli("run", str(recipe), "--until", "mkae", "-m", "steps.make.with.n=3,5", cwd=project)
    assert bad.returncode == 2 and "no step 'mkae'" in bad.stderr and "did you mean 'make'" in bad.stderr


@pytest.mark.usefixtures("prefect_api")
def test_a_failed_optuna_trial_is_a_failed_trial_said_in_one_line(project: Path) -> None:
    recipe = write(project / "recipes/sweep.yaml", SWEEP.replace('suffix: "-${algorithm.name}"', 'suffix: "!", fail_below: 4'))
    res = cli(
        "run", str(recipe), "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.seed=1",
        "hydra.sweeper.max_failure_rate=1.0", "steps.make.with.n=int(interval(1,5))", cwd=project,
    )  # fmt: skip
    (sweep_dir,) = (project / "multirun/sweep").iterdir()
    jobs = json.loads((sweep_dir / "summary.json").read_text())["jobs"]
    failed = [j for j in jobs if j["state"] == "failed"]
    for j in jobs:  # exactly the jobs with fewer than 4 rows failed, at copy
        n = int(next(o for o in j["overrides"] if o.startswith("steps.make.with.n=")).split("=")[1])
        assert (j["state"] == "failed") == (n < 4) and (j["steps"]["copy"] == "failed") == (n < 4)
    assert res.returncode == (1 if failed else 0), res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "Traceback" not in out and "ERROR" not in out and "float-castable" not in out and "Error executing job" not in out
    assert failed and f"{len(failed)} of 4 jobs failed" in res.stdout  # seed 1 samples rows below 4 (failures) and above
    import yaml

    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(j["objective"] for j in jobs if j["state"] == "completed")
    # with Hydra's default max_failure_rate (0.0) the sweep stops after the batch holding the first failed trial
    stop = cli(
        "run", str(recipe), "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler.seed=1",
        "steps.make.with.n=int(interval(1,5))", cwd=project,
    )  # fmt: skip
    assert stop.returncode == 1 and "the sweep stopped: failed trials exceeded max_failure_rate=0.0" in stop.stderr
    ended = [line for line in stop.stdout.splitlines() if line.startswith("job ") and not line.endswith(": running")]
    assert "Traceback" not in stop.stdout + stop.stderr and len(ended) < 4  # a line per job that ran: fewer than all four
