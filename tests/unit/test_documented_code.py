"""The code the docs show runs as a user would run it: the custom step kind and verifier of
docs/writing-steps.md, written to the files their first comment names, found without PYTHONPATH."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import REPO, cli

WRITING_STEPS = REPO / "docs" / "writing-steps.md"


def shown_files(doc: Path) -> dict[str, str]:
    """Code blocks whose first line is a comment naming a file (`# my_pkg/steps/upper.py`), by that file."""
    files = {}
    for m in re.finditer(r"^```(?:python|yaml)\n# (\S+\.(?:py|yaml))\b.*?\n(.*?)^```", doc.read_text(), re.S | re.M):
        files[m.group(1)] = m.group(2)
    return files


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    for name, text in shown_files(WRITING_STEPS).items():
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in ("my_pkg", "my_pkg/steps"):
        (project / package / "__init__.py").touch()
    rows = [{"id": f"r{i}", "prompt": f"say {i}", "completion": f"answer {i}"} for i in range(3)]
    (project / "recipes" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return project


def test_the_docs_show_the_files() -> None:
    assert {"my_pkg/steps/upper.py", "recipes/upper.yaml", "my_pkg/verifiers.py", "conf/verifier/short_answer.yaml"} <= set(
        shown_files(WRITING_STEPS)
    )


def test_a_custom_step_is_found_from_the_working_directory_and_the_recipes_folder(user_project: Path, tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(REPO / "tests")}  # nothing of the user's project
    done = cli("validate", "recipes/upper.yaml", cwd=user_project, env=env)
    assert done.returncode == 0, done.stderr
    beside = user_project / "upper.yaml"  # the recipe beside the package, run from elsewhere
    beside.write_text((user_project / "recipes/upper.yaml").read_text().replace("file:rows.jsonl", "file:recipes/rows.jsonl"))
    done = cli("validate", str(beside), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    (user_project / "recipes/upper.yaml").rename(tmp_path / "upper.yaml")  # neither: the hint says where modules come from
    done = cli("validate", str(tmp_path / "upper.yaml"), cwd=tmp_path, env=env)
    assert done.returncode == 2 and "No module named 'my_pkg'" in done.stderr
    assert "recipe's folder, the working directory" in done.stderr and "pip install -e" in done.stderr


def test_the_custom_step_runs_as_shown(user_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from halo_pipeline.engine.plan import plan_recipe
    from halo_pipeline.engine.step import Artifact, RunContext

    monkeypatch.chdir(user_project)
    planned = plan_recipe("recipes/upper.yaml", []).steps["rows"]
    out = user_project / "out"
    out.mkdir()
    ctx = RunContext("rows", planned.kind.name, out, user_project, 0, logging.getLogger("test"))
    data = Artifact("sft_dataset", user_project / "recipes/rows.jsonl")
    result = planned.kind.fn(planned.params, {"dataset": data}, ctx)
    rows = [json.loads(line) for line in Path(result["dataset"]).read_text().splitlines()]
    assert [r["completion"] for r in rows] == ["ANSWER 0", "ANSWER 1", "ANSWER 2"] and ctx.metrics["rows"] == 3


def test_the_custom_verifier_runs_by_path_and_as_a_group_option(user_project: Path) -> None:
    env = {"PYTHONPATH": str(REPO / "tests")}
    samples = user_project / "samples.jsonl"
    samples.write_text(json.dumps({"prompt": "p", "completion": "short"}) + "\n")
    done = cli("verifiers", "run", "my_pkg.verifiers:short_answer", "--input", str(samples), cwd=user_project, env=env)
    assert done.returncode == 0, done.stderr
    recipe = user_project / "recipes" / "scored.yaml"
    recipe.write_text(
        "defaults:\n  - verifier: short_answer\n  - _self_\nname: scored\nsteps:\n"
        "  score:\n    inputs: {dataset: file:rows.jsonl}\n    with: {verifier: '${verifier}'}\n"
    )
    for verifier in ([], ["verifier.max_words=3"]):
        done = cli("validate", "recipes/scored.yaml", *verifier, cwd=user_project, env=env)
        assert done.returncode == 0, done.stderr
