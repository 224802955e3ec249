"""Decontamination, on by default: training data that holds the recipe's held-out items stops the run before
training (or is dropped, or recorded), through the real CLI with real steps on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import cli, write

pytestmark = pytest.mark.usefixtures("prefect_api")

RECIPE = """
# recipes/contaminated.yaml — run: halo-pipeline run recipes/contaminated.yaml
defaults:
  - backend: cpu
  - model: tiny
  - algorithm: sft
  - verifier: python_syntax
  - _self_
name: decontam
steps:
  train:
    inputs: {dataset: file:../data/train.jsonl}
    with: {model: "${model}", backend: "${backend}", algorithm: "${algorithm}", max_steps: 1}
  probe:
    inputs: {candidate: train.model}
    with: {model: "${model}", backend: "${backend}", source: "humaneval:test", limit: 1, max_new_tokens: 4, verifier: "${verifier}"}
  eval:
    inputs: {model: train.model}
    with: {model: "${model}", tasks: [halo_capitals], limit: 1}
"""


def _data(project: Path, contaminated: bool) -> Path:
    from halo_pipeline.data.humaneval import humaneval_prompts

    rows: list[dict[str, Any]] = [
        {"id": f"clean-{i}", "prompt": f"Write a short poem about the number {i}.", "completion": f"{i} is a fine number."}
        for i in range(6)
    ]
    if contaminated:  # two held-out HumanEval prompts with a solution, and one of the eval task's questions
        held = humaneval_prompts("test")[:2]
        rows.insert(1, {"id": "leak-a", "prompt": held[0]["prompt"], "completion": "    return None\n"})
        rows.insert(3, {"id": "leak-b", "prompt": held[1]["prompt"].replace("    ", "\t"), "completion": "    pass\n"})
        rows.append({"id": "leak-c", "prompt": "Q: What is the capital of France?\nA:", "completion": " Paris"})
    path = project / "data/train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(project: Path, *overrides: str, quiet: bool = True) -> tuple[Any, dict[str, Any]]:
    recipe = write(project / "recipes/contaminated.yaml", RECIPE)
    res = cli("run", str(recipe), "--until", "train", *(["-q"] if quiet else []), *overrides, cwd=project)
    runs = sorted((project / "outputs/decontam").glob("*/replay.json"))
    return res, json.loads(runs[-1].read_text()) if runs else {}


def test_a_contaminated_recipe_stops_before_training(project: Path) -> None:
    _data(project, contaminated=True)
    res, m = _run(project, quiet=False)
    assert res.returncode == 1, res.stdout + res.stderr
    train = m["steps"]["train"]
    assert train["state"] == "failed" and not any((project / "outputs/decontam").glob("*/steps/train/*"))  # nothing trained
    error = train["error"]
    assert "file:" in error and "data/train.jsonl: 3 of 9 rows overlap" in error
    assert "probe: source humaneval:test (2)" in error and "eval: lm-eval task halo_capitals (1)" in error
    assert "row 2 (id leak-a)" in error and "row 4 (id leak-b)" in error and "decontaminate: drop" in error
    assert "overlap" in res.stdout and "leak-a" in res.stdout, res.stdout  # the terminal says why
    found = train["decontamination"]  # and the manifest and report what was found
    assert found["mode"] == "stop" and found["sources"][0]["overlapping"] == 3 and len(found["sources"][0]["examples"]) == 2
    report = (Path(m["run_dir"]) / "report.html").read_text()
    assert "decontamination (stop, 13-grams)" in report and "leak-b" in report


def test_drop_trains_without_the_overlapping_rows_and_records_the_counts(project: Path) -> None:
    _data(project, contaminated=True)
    res, m = _run(project, "+decontaminate=drop")
    assert res.returncode == 0, res.stdout + res.stderr
    train = m["steps"]["train"]
    found = train["decontamination"]
    assert train["state"] == "ran" and found["mode"] == "drop"
    assert found["sources"][0] | {"examples": None} == {
        "input": "dataset", "source": found["sources"][0]["source"], "rows": 9, "overlapping": 3, "dropped": 3, "kept": 6,
        "by_held_out": {"probe: source humaneval:test": 2, "eval: lm-eval task halo_capitals": 1}, "examples": None,
    }  # fmt: skip
    from halo_pipeline.data.humaneval import humaneval_prompts

    items = {s["label"]: s["items"] for s in found["held_out"]}
    assert items == {"probe: source humaneval:test": len(humaneval_prompts("test")), "eval: lm-eval task halo_capitals": 16}
    file_sha = m["steps"]["train"]["input_digests"]["dataset"]
    rerun, m2 = _run(project, "+decontaminate=drop")  # the verdict and the trained model come from the cache
    assert rerun.returncode == 0 and m2["steps"]["train"]["state"] == "cached", rerun.stderr
    assert m2["steps"]["train"]["decontamination"]["cached"] is True and m2["steps"]["train"]["input_digests"]["dataset"] == file_sha
    report = (Path(rerun.stdout.strip()) / "report.html").read_text()
    assert "decontamination (drop, 13-grams)" in report and "3 rows overlap" in report


def test_warn_trains_on_everything_and_records_it(project: Path) -> None:
    data = _data(project, contaminated=True)
    res, m = _run(project, "+decontaminate=warn", quiet=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 of 9 rows of file:" in res.stdout and "trained on them (decontaminate: warn)" in res.stdout, res.stdout
    train = m["steps"]["train"]
    assert train["state"] == "ran" and train["decontamination"]["sources"][0]["overlapping"] == 3
    assert "dropped" not in train["decontamination"]["sources"][0]
    from halo_pipeline.engine.cache import sha256_file

    assert train["input_digests"]["dataset"] == sha256_file(data)  # trained on the file as it is


def test_a_clean_recipe_passes_untouched(project: Path) -> None:
    data = _data(project, contaminated=False)
    res, m = _run(project)
    assert res.returncode == 0, res.stdout + res.stderr
    train = m["steps"]["train"]
    from halo_pipeline.engine.cache import sha256_file

    assert train["state"] == "ran" and train["input_digests"]["dataset"] == sha256_file(data)
    assert train["decontamination"]["sources"][0]["overlapping"] == 0 and train["decontamination"]["mode"] == "stop"
