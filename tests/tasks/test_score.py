"""score: components kept on every row, weights, and the filters in order."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from halo_pipeline.engine import registry
from halo_pipeline.engine.step import Artifact
from helpers import read_jsonl, run_kind, write_jsonl

GOOD = "def add(a, b):\n    return a + b  # adds two numbers together"
REPEAT = "spam " * 60
rows = [
    {"id": "g1", "source_id": "p1", "prompt": "p1", "completion": GOOD, "reward": 1.0},
    {"id": "g2", "source_id": "p1", "prompt": "p1", "completion": GOOD + " again", "reward": 0.8},
    {"id": "g3", "source_id": "p1", "prompt": "p1", "completion": GOOD + " more", "reward": 0.9},
    {"id": "r1", "source_id": "p2", "prompt": "p2", "completion": REPEAT, "reward": 0.0},
    {"id": "s1", "source_id": "p3", "prompt": "p3", "completion": "ok", "reward": 0.5},
]


def test_components_are_kept_and_combined(tmp_path: Path) -> None:
    art = Artifact("sft_dataset", write_jsonl(tmp_path / "in.jsonl", rows))
    out, ctx = run_kind("score", {"format": "python"}, {"dataset": art}, tmp_path / "o")
    scored = {r["id"]: r for r in read_jsonl(out["dataset"])}
    g1 = scored["g1"]
    assert set(g1["score_components"]) == {"length", "alpha", "whitespace", "repetition", "format", "reward"}
    assert g1["score_components"]["format"] == 1.0 and g1["score_components"]["reward"] == 1.0
    assert scored["r1"]["score_components"]["repetition"] < 0.05
    assert g1["score"] > scored["r1"]["score"] and g1["score"] > scored["s1"]["score"]
    assert ctx.metrics["rows_in"] == 5 and (tmp_path / "o/scores.png").exists()


def test_filters_min_score_balancing_and_top(tmp_path: Path) -> None:
    art = Artifact("sft_dataset", write_jsonl(tmp_path / "in.jsonl", rows))
    out, ctx = run_kind("score", {"min_score": 0.5, "max_per_prompt": 2}, {"dataset": art}, tmp_path / "o")
    kept = [r["id"] for r in read_jsonl(out["dataset"])]
    assert "r1" not in kept and ctx.metrics["below_min_score"] >= 1
    assert sum(1 for k in kept if k.startswith("g")) == 2 and "g1" in kept and ctx.metrics["removed_by_balancing"] == 1
    out, _ = run_kind("score", {"top_k": 1}, {"dataset": art}, tmp_path / "p")
    assert [r["id"] for r in read_jsonl(out["dataset"])] == ["g1"]
    out, _ = run_kind("score", {"top_fraction": 0.4}, {"dataset": art}, tmp_path / "q")
    assert len(read_jsonl(out["dataset"])) == 2


def test_weights_change_the_ranking(tmp_path: Path) -> None:
    art = Artifact("sft_dataset", write_jsonl(tmp_path / "in.jsonl", rows))
    only_reward = {k: 0.0 for k in ("length", "alpha", "whitespace", "repetition", "format", "verifier")} | {"reward": 1.0}
    out, _ = run_kind("score", {"weights": only_reward}, {"dataset": art}, tmp_path / "o")
    assert {r["id"]: r["score"] for r in read_jsonl(out["dataset"])}["s1"] == 0.5


def test_verifier_component(tmp_path: Path) -> None:
    art = Artifact("sft_dataset", write_jsonl(tmp_path / "in.jsonl", rows))
    out, _ = run_kind("score", {"verifier": {"name": "regex_format", "pattern": "^def "}}, {"dataset": art}, tmp_path / "o")
    comps = {r["id"]: r["score_components"]["verifier"] for r in read_jsonl(out["dataset"])}
    assert comps["g1"] == 1.0 and comps["r1"] == 0.0


def test_bad_params_are_rejected() -> None:
    params = registry.get("score").params
    with pytest.raises(ValidationError, match="unknown score components"):
        params.model_validate({"weights": {"lenght": 1}})
    with pytest.raises(ValidationError, match="top_k or top_fraction"):
        params.model_validate({"top_k": 1, "top_fraction": 0.5})
