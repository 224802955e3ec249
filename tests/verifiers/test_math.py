"""verifier=math with the real math-verify: equivalent and non-equivalent answers, a reference or completion that
does not parse, a pathological answer that runs past its timeout (the worker's own timer, and the parent's kill
of a worker that does not answer), and calls from threads (where math-verify's own signal timeouts break)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from halo_pipeline.verifiers import build_verifier, check_spec
from halo_pipeline.verifiers.maths import POOL


def judge(completion: str, answer: str, **settings):  # type: ignore[no-untyped-def]
    return build_verifier({"name": "math", **settings}).verify({"completion": completion, "answer": answer})


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("The answer is $\\boxed{\\frac{1}{2}}$.", "0.5"),  # a fraction and a decimal
        ("So $x = \\boxed{0.5}$", "\\frac{1}{2}"),
        ("1/3", "\\frac{1}{3}"),
        ("$\\boxed{\\{1, 2\\}}$", "\\{2, 1\\}"),  # sets, in any order
        ("$\\boxed{(0, 1]}$", "(0,1]"),  # intervals
        ("$\\boxed{(x+1)^2}$", "x^2+2x+1"),  # expressions, expanded or not
        ("We get $\\boxed{\\sqrt{8}}$", "2\\sqrt{2}"),
    ],
)
def test_equivalent_answers_pass(completion: str, answer: str) -> None:
    result = judge(completion, answer)
    assert (result.reward, result.passed, result.error) == (1.0, True, None), result


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        ("$\\boxed{\\{1, 3\\}}$", "\\{2, 1\\}"),
        ("$\\boxed{[0, 1]}$", "(0,1]"),  # a closed end is another interval
        ("$\\boxed{x^2+1}$", "x^2+2x+1"),
        ("The answer is 3", "4"),
        ("$\\boxed{0.33}$", "\\frac{1}{3}"),
    ],
)
def test_other_answers_fail(completion: str, answer: str) -> None:
    result = judge(completion, answer)
    assert (result.reward, result.passed, result.error) == (0.0, False, None), result
    assert result.details["got"] and result.details["expected"]


def test_no_answer_or_no_reference_is_zero_with_why() -> None:
    empty = judge("I cannot solve this.", "4")
    assert empty.reward == 0 and empty.details["reason"] == "no answer found in the completion"
    missing = build_verifier("math").verify({"completion": "$\\boxed{4}$"})
    assert missing.reward == 0 and missing.error == "sample has no 'answer' field"
    for reference in ("???", "\\frac{", ""):
        unparsable = judge("$\\boxed{4}$", reference)
        assert unparsable.reward == 0 and f"reference answer '{reference}' does not parse as math" == unparsable.error


def test_a_pathological_answer_times_out_and_the_next_sample_is_judged() -> None:
    slow = judge("$\\boxed{9^{9^{9^{9}}}}$", "1", timeout=1)
    assert slow.reward == 0 and not slow.passed
    assert slow.error is not None and "timed out" in slow.error and "1.0 s" in slow.error
    assert judge("$\\boxed{2}$", "2", timeout=1).passed


def test_a_worker_that_does_not_answer_is_killed_and_replaced() -> None:
    request = {"gold": "1", "completion": "$\\boxed{9^{9^{9^{9}}}}$", "timeout": 60, "float_rounding": 6, "strict": True}
    assert POOL.judge(request, timeout=0.5) is None  # the parent's deadline, whatever the worker does
    assert POOL.judge({**request, "completion": "$\\boxed{1}$"}, timeout=30) == {
        "equivalent": True,
        "details": {"expected": "1", "got": "1"},
        "error": None,
    }


def test_threads_share_the_workers() -> None:
    verifier = build_verifier({"name": "math", "timeout": 10})
    samples = [{"completion": f"$\\boxed{{\\frac{{{n}}}{{2}}}}$", "answer": str(n / 2)} for n in range(12)]
    samples += [{"completion": f"$\\boxed{{{n + 1}}}$", "answer": str(n)} for n in range(4)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(verifier.verify, samples))
    assert [r.passed for r in results] == [True] * 12 + [False] * 4
    assert verifier.verify_batch(samples, workers=3) == results


def test_settings_are_checked() -> None:
    assert check_spec({"name": "math"}) == []
    assert check_spec({"name": "math", "timeout": 0})[0][0] == "verifier.timeout"
    assert check_spec({"name": "math", "answer": "x"})[0][0] == "verifier.answer"
