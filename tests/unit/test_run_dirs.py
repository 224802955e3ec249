"""Runs started in the same second (two terminals, overlapping schedules) never share a run directory."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

from halo_pipeline.engine import manifest
from halo_pipeline.orchestration.runs import fresh_dir


def _claim(run_dir: str, start_at: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    time.sleep(max(0.0, start_at - time.time()))
    out.put(str(fresh_dir(Path(run_dir))))


def test_concurrent_runs_each_get_their_own_directory(tmp_path: Path) -> None:
    run_dir = tmp_path / "outputs/quickstart/2026-11-28_13-23-35"
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 3  # every process is started and waiting: they claim at the same instant
    procs = [ctx.Process(target=_claim, args=(str(run_dir), start_at, out)) for _ in range(6)]
    for p in procs:
        p.start()
    claimed = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert len(set(claimed)) == 6, claimed
    assert sorted(Path(c).name for c in claimed) == [run_dir.name] + [f"{run_dir.name}-{n}" for n in range(1, 6)]


def test_an_older_runs_directory_is_never_reused(tmp_path: Path) -> None:
    older = tmp_path / "run"
    older.mkdir()
    (older / manifest.MANIFEST).write_text(json.dumps({"state": "completed"}))  # written before claims existed
    assert fresh_dir(older) == tmp_path / "run-1"
    assert fresh_dir(older) == tmp_path / "run-2"  # run-1 is claimed now, though it has no manifest yet


def test_a_directory_made_by_a_sweep_launcher_is_taken(tmp_path: Path) -> None:
    job = tmp_path / "multirun/0"
    job.mkdir(parents=True)
    (job / ".hydra").mkdir()  # Hydra's launcher made the job's directory before the run starts
    assert fresh_dir(job) == job
