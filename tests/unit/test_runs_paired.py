"""`runs ls` shows each gate's verdict and interval; `runs diff` pairs the runs per task (probe) or uses lm-eval's
standard errors (eval), each difference with a 95% interval and a verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from halo_pipeline.engine.manifest import SCHEMA_VERSION
from halo_pipeline.views import runs


def fake_run(root: Path, name: str, per_task: dict[str, float], acc: float, samples: list[float] | None = None) -> Path:
    run = root / "demo" / name
    report = run / "steps/probe/report"
    report.mkdir(parents=True)
    rate = sum(per_task.values()) / len(per_task)
    gate = [{"metric": "pass@1", "baseline": 0.0, "candidate": rate, "delta": rate, "rule": "drop <= 0.1", "ok": True,
             "verdict": "inconclusive", "ci": [-0.095, 0.1], "method": "exact", "n": 10, "gained": 1, "lost": 0}]  # fmt: skip
    (report / "probe.json").write_text(json.dumps({"gate": gate, "per_task": {"candidate": {"pass@1": per_task}}}))
    steps = {
        "probe": {"kind": "probe", "state": "ran", "metrics": {"pass@1": rate}, "outputs": {"report": {"path": str(report)}}},
        "eval": {"kind": "eval", "state": "ran", "metrics": {"halo_arith/acc": acc, "halo_arith/acc_stderr": 0.02}},
    }
    if samples is not None:  # the eval step's per-document scores
        (run / "steps/eval/report").mkdir(parents=True)
        lines = [json.dumps({"task": "halo_arith", "doc_id": d, "filter": "none", "acc": v}) for d, v in enumerate(samples)]
        (run / "steps/eval/report/samples.jsonl").write_text("\n".join(lines) + "\n")
        steps["eval"]["outputs"] = {"report": {"path": str(run / "steps/eval/report")}}
    manifest = {"schema_version": SCHEMA_VERSION, "name": "demo", "state": "completed", "steps": steps, "config": {}, "groups": {}}
    (run / "replay.json").write_text(json.dumps(manifest))
    return run


def test_ls_shows_gates_and_diff_pairs_per_task(tmp_path: Path) -> None:
    tasks = [f"t{i}" for i in range(30)]
    a = fake_run(tmp_path, "a", dict.fromkeys(tasks, 0.0), acc=0.50)
    b = fake_run(tmp_path, "b", {t: float(i < 12) for i, t in enumerate(tasks)}, acc=0.52)
    console = Console(record=True, width=250)
    runs.ls(tmp_path, console)
    assert "probe pass@1: ok, inconclusive [-0.10, +0.10]" in console.export_text()
    console = Console(record=True, width=250)
    runs.diff(a, b, console)
    text = console.export_text()
    assert "paired per task (b vs a)" in text
    (probe,) = [r for r in runs.paired_rows(runs.read(a), runs.read(b)) if r["metric"] == "probe.pass@1"]
    assert probe["n"] == 30 and probe["verdict"] == "improved" and probe["delta"] == pytest.approx(0.4)  # 12 of 30 gained, none lost
    assert probe["low"] == pytest.approx(12 / 30 * (2 * 0.025 ** (1 / 12) - 1)) and probe["high"] == pytest.approx(0.4)  # exact, by hand
    (acc,) = [r for r in runs.paired_rows(runs.read(a), runs.read(b)) if r["metric"] == "eval.halo_arith/acc"]
    half = 1.96 * (2 * 0.02**2) ** 0.5  # lm-eval's standard errors of the two runs
    assert acc["verdict"] == "inconclusive" and (acc["low"], acc["high"]) == (pytest.approx(0.02 - half), pytest.approx(0.02 + half))


def test_report_html_shows_the_interval_as_an_error_bar(tmp_path: Path) -> None:
    from halo_pipeline.views.report import _verdicts

    run = fake_run(tmp_path, "a", {f"t{i}": float(i == 0) for i in range(10)}, acc=0.5)
    html = _verdicts(run / "steps/probe", "probe")
    assert "95% interval of Δ" in html and "<svg" in html and "[-0.095, +0.100]" in html
    assert "inconclusive (1 gained, 0 lost of 10 tasks)" in html


def test_diff_pairs_eval_metrics_per_document(tmp_path: Path) -> None:
    tasks = [f"t{i}" for i in range(10)]
    a = fake_run(tmp_path, "a", dict.fromkeys(tasks, 0.0), acc=0.0, samples=[0.0] * 40)
    b = fake_run(tmp_path, "b", dict.fromkeys(tasks, 0.0), acc=0.25, samples=[1.0] * 10 + [0.0] * 30)
    (acc,) = [r for r in runs.paired_rows(runs.read(a), runs.read(b)) if r["metric"] == "eval.halo_arith/acc"]
    assert acc["n"] == 40 and acc["verdict"] == "improved" and acc["delta"] == pytest.approx(0.25)
    assert acc["low"] == pytest.approx(10 / 40 * (2 * 0.025 ** (1 / 10) - 1))  # 10 documents gained of 40: exact, by hand
