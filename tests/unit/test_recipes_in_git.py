"""Habits around recipes kept in git: the pre-commit hook other repositories reference, the editor schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, cli, write

GOOD = """
name: good
steps:
  dedup:
    inputs: {dataset: "file:data.jsonl"}
    with: {threshold: 0.8}
"""


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="needs this project as a git repository (pre-commit try-repo clones it)")
def test_pre_commit_hook_validates_changed_recipes(tmp_path: Path) -> None:
    user = tmp_path / "user-repo"
    write(user / "recipes/good.yaml", GOOD)
    write(user / "recipes/data.jsonl", '{"id": "a", "prompt": "p", "completion": "c"}\n')
    write(user / "recipes/bad.yaml", GOOD.replace("threshold: 0.8", "treshold: 0.8"))
    _git("init", "-q", cwd=user)
    _git("add", ".", cwd=user)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PRE_COMMIT_HOME": str(tmp_path / "pc")}
    pre_commit = [sys.executable, "-m", "pre_commit", "try-repo", str(REPO), "halo-pipeline-validate"]
    ok = subprocess.run([*pre_commit, "--files", "recipes/good.yaml"], cwd=user, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = subprocess.run([*pre_commit, "--files", "recipes/bad.yaml"], cwd=user, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "unknown param 'treshold'" in bad.stdout and "did you mean 'threshold'" in bad.stdout


def test_every_shipped_recipe_satisfies_the_editor_schema(tmp_path: Path) -> None:
    import jsonschema

    res = cli("schema", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    validator = jsonschema.Draft202012Validator(json.loads(res.stdout))
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        errors = [f"{'/'.join(map(str, e.path))}: {e.message[:100]}" for e in validator.iter_errors(yaml.safe_load(recipe.read_text()))]
        assert not errors, (recipe.name, errors)  # `${model}` and other interpolations are fine anywhere
    typo = yaml.safe_load(GOOD.replace("threshold: 0.8", "treshold: 0.8"))
    assert any("treshold" in e.message for e in validator.iter_errors(typo))  # what the editor underlines
