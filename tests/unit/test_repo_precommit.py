"""The repository's own .pre-commit-config.yaml: the checks `make lint` runs, and the recipe check, as local hooks
of the tools this environment installs; its recipe hook stops a broken recipe."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, write

CONFIG = REPO / ".pre-commit-config.yaml"
BIN = Path(sys.executable).parent


def hooks() -> dict[str, dict[str, object]]:
    (repo,) = yaml.safe_load(CONFIG.read_text())["repos"]
    assert repo["repo"] == "local"
    return {h["id"]: h for h in repo["hooks"]}


def test_the_hooks_are_make_lints_checks_and_the_recipe_check() -> None:
    found = hooks()
    assert set(found) == {"ruff", "ruff-format", "mypy", "lint-imports", "validate-recipes"}
    lint = (REPO / "Makefile").read_text().split("\nlint:", 1)[1].split("\n\n", 1)[0]
    for program in ("ruff check", "ruff format", "mypy", "lint-imports"):
        assert f"$(BIN)/{program}" in lint  # the same tools make lint runs
    for hook in found.values():
        assert hook["language"] == "system"
        program = str(hook["entry"]).split()[0]
        assert (BIN / program).is_file(), f"{hook['id']}: {program} is not installed in this environment"
    assert found["mypy"]["pass_filenames"] is False and found["lint-imports"]["pass_filenames"] is False  # they read pyproject


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_recipe_hook_stops_a_broken_recipe(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "--quiet"], cwd=project, check=True)
    only_recipes = {"repos": [{"repo": "local", "hooks": [hooks()["validate-recipes"]]}]}
    write(project / ".pre-commit-config.yaml", yaml.safe_dump(only_recipes))
    write(project / "recipes/good.yaml", "name: good\nsteps:\n  dedup:\n    inputs: {dataset: file:rows.jsonl}\n")
    (project / "recipes/rows.jsonl").write_text('{"prompt": "p", "completion": "c"}\n')
    write(project / "recipes/bad.yaml", "name: bad\nsteps:\n  dedup:\n    with: {threshhold: 0.8}\n")
    subprocess.run(["git", "add", "."], cwd=project, check=True)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PRE_COMMIT_HOME": str(tmp_path / "pc")}
    run = [sys.executable, "-m", "pre_commit", "run", "validate-recipes", "--files"]
    ok = subprocess.run([*run, "recipes/good.yaml"], cwd=project, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run([*run, "recipes/bad.yaml"], cwd=project, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "did you mean 'threshold'?" in bad.stdout, bad.stdout + bad.stderr
