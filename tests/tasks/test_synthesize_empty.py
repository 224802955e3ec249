"""synthesize says why it kept nothing, and what to change (issue: 0 pairs reported as a success with no reason)."""

from __future__ import annotations

from halo_pipeline.engine.registry import get


def test_no_pairs_says_no_reward_gap_and_the_fix() -> None:
    kind = get("synthesize")
    params = kind.params.model_validate({"source": "humaneval:train", "output": "preference"})
    from halo_pipeline.tasks.synthesize import build_rows, why_empty

    prompts = [{"id": f"p{i}", "prompt": "q"} for i in range(3)]
    done = {p["id"]: [{"completion": c, "reward": 0.0, "verified": False, "error": None} for c in ("a", "b")] for p in prompts}
    rows, rejected = build_rows(prompts, done, params)  # type: ignore[arg-type]
    assert rows == [] and rejected == {"no reward gap between samples": 3}
    why = why_empty(len(prompts), rejected, params)  # type: ignore[arg-type]
    assert why.startswith("nothing kept from 3 prompts, rejected: no reward gap between samples (3); every prompt's samples got")
    assert "temperature" in why and "graded" in why
    assert why_empty(0, {}, params).startswith("the source gave no prompts")  # type: ignore[arg-type]


def test_settings_that_can_never_make_a_pair_are_validation_errors() -> None:
    from halo_pipeline.tasks.synthesize import check

    kind = get("synthesize")

    def problems(**settings: object) -> dict[str, str]:
        params = kind.params.model_validate({"source": "humaneval:train", "output": "preference", "model": "tiny", **settings})
        return {key: text for key, text in check(params) if isinstance(key, str)}  # type: ignore[arg-type]

    assert "needs 2 or more" in problems(samples_per_prompt=1, verifier="python_syntax")["samples_per_prompt"]
    assert "temperature 0" in problems(samples_per_prompt=4, temperature=0, verifier="python_syntax")["temperature"]
    assert "verifier" in problems(samples_per_prompt=4)
    assert not problems(samples_per_prompt=4, verifier="python_syntax")
