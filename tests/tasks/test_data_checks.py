"""Dataset checks stop a train step before it trains (real steps, the tiny model): what `preview` measures, held to
thresholds the recipe may set; the measures and the first examples are kept for the manifest and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halo_pipeline.engine.step import Artifact
from halo_pipeline.views import train_data
from helpers import run_kind, write_jsonl

QA = [{"id": f"r{i}", "prompt": f"What is {i}+{i}?", "completion": f"It is {2 * i}."} for i in range(4)]
SFT = {"model": "tiny", "algorithm": {"name": "sft", "batch_size": 2}, "max_steps": 1}


def test_a_dataset_cut_by_max_length_stops_before_training(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "long.jsonl", [{**r, "completion": r["completion"] * 20} for r in QA])
    with pytest.raises(ValueError, match=r"fails its checks: max_truncated: examples longer than max_length 24 1\.0 > 0\.5") as info:
        run_kind("train", {**SFT, "max_length": 24}, {"dataset": Artifact("sft_dataset", data)}, tmp_path / "stop")
    assert "halo-pipeline preview RECIPE --step train" in str(info.value) and "data_checks" in str(info.value)
    assert not (tmp_path / "stop/model").exists()  # nothing trained
    params = {**SFT, "max_length": 24, "data_checks": {"on_fail": "warn"}}
    _, ctx = run_kind("train", params, {"dataset": Artifact("sft_dataset", data)}, tmp_path / "warn")
    assert ctx.metrics["data_checks"]["passed"] is False and ctx.metrics["data_checks"]["failed"] == ["max_truncated"]
    assert any("fails its checks" in line for line in ctx.summary_lines) and (tmp_path / "warn/model").is_dir()


def test_a_passing_dataset_keeps_its_measures_and_first_examples_for_the_report(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "qa.jsonl", [*QA, {"id": "empty", "prompt": "Say nothing.", "completion": ""}])
    params = {**SFT, "data_checks": {"max_empty": 0.25, "min_tokens": 5}}
    _, ctx = run_kind("train", params, {"dataset": Artifact("sft_dataset", data)}, tmp_path / "ok")
    assert ctx.metrics["data_checks"] == {
        "passed": True,
        "failed": [],
        "max_truncated": 0.0,
        "max_dropped": 0.0,
        "max_empty": 0.2,
        "min_tokens": 22,
    }
    record = json.loads((tmp_path / "ok/data_checks.json").read_text())
    assert record["stats"]["empty"] == {"completion": 1} and len(record["examples"]) == 3
    page = train_data.render(tmp_path / "ok")
    assert "dataset checks passed" in page and "row 1 · id r0" in page and "background:#c6f0c2" in page
    from halo_pipeline.views.report import _step_section

    (tmp_path / "run/steps").mkdir(parents=True)
    (tmp_path / "run/steps/train").symlink_to(tmp_path / "ok")
    section = _step_section(tmp_path / "run", "train", {"kind": "train", "state": "ran", "metrics": ctx.metrics})
    assert "dataset checks passed" in section and "the first 3 examples as the trainer sees them" in section
    with pytest.raises(ValueError, match=r"max_empty: rows with an empty prompt, completion, side or turn 0\.2 > 0\.1"):
        run_kind("train", {**params, "data_checks": {"max_empty": 0.1}}, {"dataset": Artifact("sft_dataset", data)}, tmp_path / "empty")


def test_preference_pairs_are_checked_for_identical_sides_and_inverted_rewards(tmp_path: Path) -> None:
    pairs = [
        {
            "id": f"p{i}",
            "prompt": f"What is {i}+{i}?",
            "chosen": f"It is {2 * i}.",
            "rejected": "No",
            "chosen_reward": 1.0,
            "rejected_reward": 0.0,
        }
        for i in range(4)
    ]
    same = write_jsonl(tmp_path / "same.jsonl", [{**p, "rejected": p["chosen"]} for p in pairs])
    dpo = {"model": "tiny", "algorithm": {"name": "dpo", "batch_size": 2}, "max_steps": 1}
    with pytest.raises(ValueError, match=r"max_identical_pairs: pairs with identical sides 1\.0 > 0\.5"):
        run_kind("train", dpo, {"dataset": Artifact("preference_dataset", same)}, tmp_path / "same")
    inverted = write_jsonl(
        tmp_path / "inv.jsonl", [{**p, "chosen_reward": 0.0, "rejected_reward": 1.0} if i else p for i, p in enumerate(pairs)]
    )
    checks = {"max_inverted_pairs": 0.0, "max_chosen_longer": 0.9}
    with pytest.raises(
        ValueError, match=r"max_inverted_pairs: pairs rewarded the wrong way 0\.75 > 0\.0; max_chosen_longer: .* 1\.0 > 0\.9"
    ):
        run_kind("train", {**dpo, "data_checks": checks}, {"dataset": Artifact("preference_dataset", inverted)}, tmp_path / "inv")


def test_the_engine_records_the_checks_and_a_failure_names_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import write
    from halo_pipeline.engine.execute import StepError, execute, step_calls
    from halo_pipeline.engine.plan import plan_recipe

    monkeypatch.setenv("HALO_PIPELINE_CACHE", str(tmp_path / "cache"))
    write_jsonl(tmp_path / "recipes/qa.jsonl", QA)
    recipe = write(
        tmp_path / "recipes/r.yaml",
        """
        name: checks
        steps:
          train:
            inputs: {dataset: file:qa.jsonl}
            with: {model: tiny, algorithm: {name: sft, batch_size: 2}, max_steps: 1, data_checks: {min_tokens: 5}}
        """,
    )
    result = execute(step_calls(plan_recipe(str(recipe), []), tmp_path / "run")["train"], {})
    assert result.metrics["data_checks"]["passed"] is True and result.metrics["data_checks"]["min_tokens"] == 22
    plan = plan_recipe(str(recipe), ["steps.train.with.data_checks.min_tokens=100"])
    with pytest.raises(StepError, match=r"train \(train\): ValueError: .*min_tokens: median tokens per example 22 < 100"):
        execute(step_calls(plan, tmp_path / "run2")["train"], {})
    state = json.loads((tmp_path / "run2/logs/train.state.json").read_text())
    assert state["state"] == "failed" and "min_tokens" in state["error"]
