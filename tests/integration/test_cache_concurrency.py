"""One cache shared by concurrent processes, killed processes, `--no-cache` and `cache gc` — through the real CLI."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TESTS, cli, write
from halo_pipeline.engine.cache import Cache

pytestmark = pytest.mark.usefixtures("prefect_api")

SHARED = """
name: shared
steps:
  make:
    uses: fake_steps:make
    with: {{n: 5, counter: "{counter}"{extra}}}
  shards:
    uses: fake_steps:shards
    needs: [make]
    with: {{files: 6, sleep: 0.1, counter: "{counter}.shards"}}
  copy:
    uses: fake_steps:copy
    inputs: {{dataset: make.dataset}}
    with: {{counter: "{counter}.copy"}}
"""


def _popen(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    exe = Path(sys.executable).parent / "halo-pipeline"
    return subprocess.Popen([str(exe), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _manifest(run_dir: str) -> dict:
    return json.loads((Path(run_dir.strip().splitlines()[-1]) / "replay.json").read_text())


def _valid_entries(cache: Cache) -> list[str]:
    """Every committed entry verifies against its record: nothing half-written looks finished."""
    keys = [e.name for e in cache.entries()]
    bad = [k for k in keys if cache.lookup(k) is None]
    assert not bad, f"entries that do not verify: {bad}"
    return keys


def test_concurrent_runs_share_one_cache(project: Path) -> None:
    """Three runs of one recipe at once: each step is computed once, the others wait and reuse it."""
    counter = project / "runs.count"
    recipe = write(project / "recipes/shared.yaml", SHARED.format(counter=counter, extra=f', gate: "{counter}.gate"'))
    procs = [_popen("run", str(recipe), "-q", cwd=project) for _ in range(3)]
    # `make` finishes only once the other two runs are waiting for it: the runs really overlap
    deadline = time.time() + 240
    while time.time() < deadline:
        states = [json.loads(p.read_text()).get("state") for p in project.glob("outputs/shared/*/logs/make.state.json")]
        if states.count("waiting") == 2 and counter.exists():
            break
        time.sleep(0.1)
    Path(f"{counter}.gate").touch()
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out + err
    manifests = [_manifest(out) for out, _ in outs]
    for step, count_file in (("make", counter), ("shards", Path(f"{counter}.shards")), ("copy", Path(f"{counter}.copy"))):
        assert len(count_file.read_text().splitlines()) == 1, f"{step} was computed more than once"
        states = sorted(m["steps"][step]["state"] for m in manifests)
        assert states == ["cached", "cached", "ran"], (step, states)
        assert len({m["steps"][step]["outputs"][next(iter(m["steps"][step]["outputs"]))]["sha256"] for m in manifests}) == 1
    # the two runs that found `make` being computed by another process waited for it, then reused it
    assert sum(bool(m["steps"]["make"].get("waited_for")) for m in manifests) == 2
    cache = Cache(project / "outputs/.cache")
    assert len(_valid_entries(cache)) == 3
    assert not any((cache.root / "partial").iterdir())


def test_sigkill_at_random_points_then_rerun(project: Path) -> None:
    """Killed at random moments (start-up, mid-step, mid-commit), a run never leaves a result that looks
    finished but is not; the next run completes and its outputs are whole."""
    counter = project / "kill.count"
    recipe = write(project / "recipes/shared.yaml", SHARED.format(counter=counter, extra=", sleep: 0.5"))
    cache = Cache(project / "outputs/.cache")
    rng = random.Random(7)
    for _ in range(5):
        proc = _popen("run", str(recipe), "-q", "--no-cache" if rng.random() < 0.2 else "-q", cwd=project)
        time.sleep(rng.uniform(1.0, 9.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        _valid_entries(cache)
    final = cli("run", str(recipe), "-q", cwd=project)
    assert final.returncode == 0, final.stderr
    m = _manifest(final.stdout)
    assert m["state"] == "completed"
    shard_dir = Path(m["steps"]["shards"]["outputs"]["shards"]["path"])
    assert sorted(p.name for p in shard_dir.iterdir()) == [f"part-{i}.txt" for i in range(6)]
    assert all(p.read_text() == f"shard {i}\n" * 1000 for i, p in enumerate(sorted(shard_dir.iterdir())))
    assert len(_valid_entries(cache)) == 3


def test_resumable_step_continues_after_a_kill(project: Path) -> None:
    """A resumable step (like synthesize) killed mid-way continues where it stopped; a torn last line is cut."""
    recipe = write(
        project / "recipes/resume.yaml",
        """
        name: resume
        steps:
          grow:
            uses: fake_steps:appender
            with: {items: 20, sleep: 0.4}
        """,
    )
    proc = _popen("run", str(recipe), "-q", cwd=project)
    cache = Cache(project / "outputs/.cache")
    deadline = time.time() + 120
    partial = None
    while time.time() < deadline:
        found = list((cache.root / "partial").glob("*/data.jsonl")) if (cache.root / "partial").is_dir() else []
        if found and len(found[0].read_text().splitlines()) >= 4:
            partial = found[0]
            break
        time.sleep(0.2)
    assert partial is not None, "the step never started writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with open(partial, "a") as f:
        f.write('{"id": "torn", "prom')  # what a kill in the middle of a write leaves
    done = len(partial.read_text().splitlines()) - 1
    again = cli("run", str(recipe), "-q", cwd=project)
    assert again.returncode == 0, again.stderr
    m = _manifest(again.stdout)
    assert m["steps"]["grow"]["metrics"]["resumed_rows"] == done
    rows = [json.loads(line) for line in Path(m["steps"]["grow"]["outputs"]["dataset"]["path"]).read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(20)]


def test_no_cache_never_changes_what_an_older_run_points_at(project: Path) -> None:
    recipe = write(project / "recipes/shared.yaml", SHARED.format(counter=project / "c", extra=""))
    first = cli("run", str(recipe), "-q", cwd=project)
    assert first.returncode == 0, first.stderr
    old_run = Path(first.stdout.strip())
    before = (old_run / "steps/copy/data.jsonl").read_bytes()
    entry = (old_run / "steps/copy").resolve()
    again = cli("run", str(recipe), "-q", "--no-cache", cwd=project)
    assert again.returncode == 0, again.stderr
    new_run = Path(again.stdout.strip())
    m = _manifest(again.stdout)
    assert {s["state"] for s in m["steps"].values()} == {"ran"}
    assert (old_run / "steps/copy").resolve() == entry and (old_run / "steps/copy/data.jsonl").read_bytes() == before
    assert not (new_run / "steps/copy").is_symlink(), "--no-cache outputs live in the run directory"
    assert (new_run / "steps/copy/data.jsonl").read_bytes() == before  # same step, same bytes


def test_cache_gc_keeps_what_runs_reference(project: Path) -> None:
    recipe = write(project / "recipes/shared.yaml", SHARED.format(counter=project / "c", extra=""))
    kept = cli("run", str(recipe), "-q", cwd=project)
    gone = cli("run", str(recipe), "steps.make.with.n=2", "-q", cwd=project)
    assert kept.returncode == 0 and gone.returncode == 0
    kept_run, gone_run = Path(kept.stdout.strip()), Path(gone.stdout.strip())
    cache = Cache(project / "outputs/.cache")
    assert len(list(cache.entries())) == 5  # make and copy differ with n; shards does not
    import shutil

    shutil.rmtree(gone_run)
    dry = cli("cache", "gc", "--dry-run", cwd=project)
    assert dry.returncode == 0 and "would remove 2" in dry.stdout, dry.stdout
    assert len(list(cache.entries())) == 5
    recent = cli("cache", "gc", "--older-than", "1d", cwd=project)
    assert "removed 0" in recent.stdout  # unreferenced, but used within the last day
    done = cli("cache", "gc", cwd=project)
    assert done.returncode == 0 and "removed 2" in done.stdout, done.stdout
    assert len(list(cache.entries())) == 3
    rerun = cli("run", str(recipe), "-q", cwd=project)
    assert {s["state"] for s in _manifest(rerun.stdout)["steps"].values()} == {"cached"}
    assert (kept_run / "steps/copy/data.jsonl").exists()
