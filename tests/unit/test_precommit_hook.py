"""docs/recipes.md's pre-commit snippet works as written, with a local clone of this repository as `repo:`:
its `rev:` exists and has the hook, a broken recipe stops the commit with its problems, a valid one passes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, write

pytestmark = pytest.mark.skipif(not (REPO / ".git").exists() or shutil.which("git") is None, reason="needs this repository's git history")


def snippet() -> str:
    text = (REPO / "docs" / "recipes.md").read_text()
    (found,) = [m.group(1) for m in re.finditer(r"^```yaml\n(repos:.*?)^```", text, re.S | re.M)]
    return found


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=cwd, check=True, capture_output=True)


def test_the_documented_pre_commit_config_runs_against_a_local_clone(tmp_path: Path) -> None:
    clone = tmp_path / "halo-pipeline"
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(REPO), str(clone)], check=True, capture_output=True)
    config = snippet().replace("https://github.com/<you>/halo-pipeline", str(clone))
    assert config != snippet()
    project = tmp_path / "project"
    project.mkdir()
    git("init", "--quiet", cwd=project)
    write(project / ".pre-commit-config.yaml", config)
    write(project / "recipes/good.yaml", "name: good\nsteps:\n  dedup:\n    inputs: {dataset: file:rows.jsonl}\n")
    (project / "recipes/rows.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PRE_COMMIT_HOME": str(tmp_path / "pc")}
    git("add", ".", cwd=project)
    ok = subprocess.run([sys.executable, "-m", "pre_commit", "run", "--all-files"], cwd=project, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    write(project / "recipes/bad.yaml", "name: bad\nsteps:\n  dedup:\n    with: {threshhold: 0.8}\n")
    git("add", ".", cwd=project)
    bad = subprocess.run([sys.executable, "-m", "pre_commit", "run", "--all-files"], cwd=project, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "did you mean 'threshold'?" in bad.stdout, bad.stdout + bad.stderr
