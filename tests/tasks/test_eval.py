"""eval: lm-evaluation-harness offline on the tiny model — hf, in-process llama.cpp (GGUF) and an endpoint."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import llama_cpp_server
from halo_pipeline.engine.step import Artifact
from halo_pipeline.evaluation.harness import EvalTaskUnavailable, normalize
from halo_pipeline.export.converting import convert
from halo_pipeline.runtimes.catalog import build_tiny
from helpers import read_jsonl, run_kind


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "model"
    convert(build_tiny(), "gguf", "fp32", out)
    return out


def evaluate(tmp: Path, model: Path | None, **params: object) -> tuple[dict, Path, dict]:
    inputs = {"model": Artifact("model", model)} if model else {}
    outputs, ctx = run_kind("eval", {"tasks": ["halo_arith", "halo_prose_ppl"], "limit": 12, **params}, inputs, tmp)
    report = outputs["report"]
    return json.loads((report / "eval.json").read_text()), report, ctx.metrics


def test_hf_and_gguf_give_the_same_scores(tmp_path: Path, tiny_gguf: Path) -> None:
    hf, hf_dir, metrics = evaluate(tmp_path / "hf", build_tiny())
    gg, gg_dir, _ = evaluate(tmp_path / "gguf", tiny_gguf)
    assert json.loads((gg_dir / "eval_run.json").read_text())["runtime"] == "gguf"
    assert set(hf) == set(gg) == {"halo_arith", "halo_prose_ppl"}
    assert hf["halo_arith"]["acc"]["value"] == gg["halo_arith"]["acc"]["value"]
    assert hf["halo_arith"]["acc"]["stderr"] is not None and "acc_norm" in hf["halo_arith"]
    assert math.isclose(hf["halo_prose_ppl"]["bits_per_byte"]["value"], gg["halo_prose_ppl"]["bits_per_byte"]["value"], rel_tol=1e-3)
    # every choice's log-likelihood, request by request: the in-process llama.cpp model scores what hf scores
    hf_rows = {(r["task"], r["doc_id"]): r for r in read_jsonl(hf_dir / "samples.jsonl")}
    gg_rows = {(r["task"], r["doc_id"]): r for r in read_jsonl(gg_dir / "samples.jsonl")}
    assert hf_rows.keys() == gg_rows.keys() and len(hf_rows) == 12 + 6
    for key, row in hf_rows.items():
        if key[0] == "halo_arith":
            for (a, _), (b, _) in zip(row["resps"], gg_rows[key]["resps"], strict=True):
                assert math.isclose(float(a), float(b), rel_tol=1e-3, abs_tol=2e-3), (key, row["resps"], gg_rows[key]["resps"])
    assert metrics["halo_arith/acc"] == hf["halo_arith"]["acc"]["value"]  # step metrics for runs diff / objectives
    assert metrics["halo_arith/acc_stderr"] == hf["halo_arith"]["acc"]["stderr"]  # lm-eval's standard error is kept
    arith = [r for r in hf_rows.values() if r["task"] == "halo_arith"]  # each document's score, to pair runs on (runs diff)
    assert sum(r["acc"] for r in arith) / len(arith) == pytest.approx(hf["halo_arith"]["acc"]["value"])
    assert (hf_dir / "eval.png").stat().st_size > 1000 and "results" in json.loads((hf_dir / "lm_eval_raw.json").read_text())


def test_generation_task_and_an_adapter_on_its_base(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(build_tiny()), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    outputs, _ = run_kind(
        "eval", {"tasks": ["halo_capitals"], "limit": 4, "model": "tiny"}, {"model": Artifact("adapter", adapter)}, tmp_path / "e"
    )
    result = json.loads((outputs["report"] / "eval.json").read_text())
    assert set(result["halo_capitals"]) == {"exact_match"} and 0.0 <= result["halo_capitals"]["exact_match"]["value"] <= 1.0
    rows = read_jsonl(outputs["report"] / "samples.jsonl")
    assert len(rows) == 4 and all(isinstance(r["resps"][0], str) for r in rows)


def test_local_chat_completions_against_an_endpoint(tmp_path: Path, tiny_gguf: Path) -> None:
    with llama_cpp_server(next(tiny_gguf.glob("*.gguf")), n_ctx=512) as url:
        result, _, _ = evaluate(tmp_path, None, runtime="endpoint", base_url=f"{url}/chat/completions", tasks=["halo_capitals"], limit=4)
    assert "exact_match" in result["halo_capitals"]


def test_your_own_task_directory_with_relative_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    (tasks / "yes_no.jsonl").write_text("".join(json.dumps({"q": f"Is {i} even?", "a": int(i % 2 == 1)}) + "\n" for i in range(6)))
    (tasks / "yes_no.yaml").write_text(
        "task: my_yes_no\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: yes_no.jsonl\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: ['yes', 'no']\ndoc_to_target: '{{a}}'\n"
        "metric_list:\n  - metric: acc\n"
    )
    monkeypatch.chdir(tmp_path.parent)  # data_files resolve against the YAML, not the working directory
    result, _, _ = evaluate(tmp_path / "run", build_tiny(), tasks=["my_yes_no"], include_path=[str(tasks)])
    assert set(result["my_yes_no"]) == {"acc"}


def test_unknown_and_offline_tasks_fail_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EvalTaskUnavailable, match="unknown eval task.*no_such_task.*halo_arith"):
        evaluate(tmp_path / "a", build_tiny(), tasks=["no_such_task"])
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(EvalTaskUnavailable, match=r"arc_easy \(dataset allenai/ai2_arc\).*unreachable.*halo_arith"):
        evaluate(tmp_path / "b", build_tiny(), tasks=["arc_easy"])


def test_normalize_maps_lm_eval_keys() -> None:
    raw = {"results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "exact_match,strict": 1.0, "exact_match_stderr,strict": "N/A",
                             "exact_match,flex": 0.0, "exact_match_stderr,flex": 0.0}}}  # fmt: skip
    assert normalize(raw) == {
        "t": {
            "acc": {"value": 0.5, "stderr": 0.1},
            "exact_match[strict]": {"value": 1.0, "stderr": None},
            "exact_match[flex]": {"value": 0.0, "stderr": 0.0},
        }
    }


@pytest.fixture(autouse=True)
def _quiet_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    yield


def test_an_mlx_model_evaluates_in_its_own_runtime_with_the_same_scores(tmp_path: Path) -> None:
    """eval takes every format the runtime layer knows: MLX (mlx-lm on the CPU here) scores what hf scores."""
    mlx_dir = tmp_path / "mlx"
    convert(build_tiny(), "mlx", "fp32", mlx_dir)
    hf, _, _ = evaluate(tmp_path / "hf", build_tiny(), tasks=["halo_arith"])
    mx, mx_dir, _ = evaluate(tmp_path / "mx", mlx_dir, tasks=["halo_arith"])
    assert json.loads((mx_dir / "eval_run.json").read_text())["runtime"] == "mlx"
    assert mx["halo_arith"]["acc"]["value"] == hf["halo_arith"]["acc"]["value"]
    hf_rows = {r["doc_id"]: r for r in read_jsonl(tmp_path / "hf" / "report" / "samples.jsonl")}
    for row in read_jsonl(mx_dir / "samples.jsonl"):
        for (a, _), (b, _) in zip(hf_rows[row["doc_id"]]["resps"], row["resps"], strict=True):
            assert math.isclose(float(a), float(b), rel_tol=1e-2, abs_tol=1e-2), (row["doc_id"], a, b)
