"""What a newcomer types first: `--version`, and `plan … | head` (a reader that goes away is not an error)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, TESTS, cli
from halo_pipeline import __version__


def test_version() -> None:
    done = cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"halo-pipeline {__version__}"


def test_a_closed_pipe_is_not_a_traceback() -> None:
    exe = Path(sys.executable).parent / "halo-pipeline"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    read, write = os.pipe()
    os.close(read)  # `| head` that has already gone: the first write gets EPIPE
    proc = subprocess.run(
        [str(exe), "plan", str(REPO / "recipes/quickstart.yaml"), "model=tiny", "--format", "json"],
        stdout=write, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == 0
