"""Datasets from where they live, for real and offline: parquet, CSV/TSV, arrow, JSON and JSONL files, datasets
written by `save_to_disk`, and `hf:` ids that resolve from a local `datasets` cache (HF_HUB_OFFLINE=1), mapped
onto our fields with `columns:`, read by the step kinds, and checked when a recipe is validated."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from halo_pipeline.data import sources
from halo_pipeline.engine.errors import RecipeError
from halo_pipeline.engine.step import Artifact
from helpers import read_jsonl, run_kind

QA = [
    {"question": f"What is {i}+{i}?", "answer": f"It is {2 * i}.", "task_id": f"t/{i}", "tests": f"assert f({i}) == {2 * i}"}
    for i in range(6)
]


def hub_cache(cache: Path, repo_id: str, splits: dict[str, list[dict[str, Any]]], config: str = "default") -> None:
    """What loading `repo_id` from the hub once leaves in the `datasets` cache: its parquet files prepared as arrow
    under <cache>/<namespace>___<name>/<config>/<version>/<hash>/ (built here from local files, offline)."""
    from datasets import Dataset
    from datasets.packaged_modules.parquet.parquet import Parquet

    files = {}
    for split, rows in splits.items():
        files[split] = str(cache.parent / f"{repo_id.replace('/', '_')}-{config}-{split}.parquet")
        Dataset.from_list(rows).to_parquet(files[split])
    namespace, name = repo_id.split("/")
    builder = Parquet(cache_dir=str(cache), dataset_name=name, config_name=config, config_id=config, hash="0a1b2c3d", data_files=files)
    builder.download_and_prepare()
    (cache / f"{namespace}___{name}").mkdir(exist_ok=True)
    shutil.move(str(cache / name / config), str(cache / f"{namespace}___{name}" / config))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same rows in every local form."""
    import pyarrow as pa
    from datasets import Dataset, DatasetDict

    root = tmp_path_factory.mktemp("sources")
    ds = Dataset.from_list(QA)
    out = {"parquet": root / "qa.parquet", "csv": root / "qa.csv", "tsv": root / "qa.tsv", "jsonl": root / "qa.jsonl"}
    ds.to_parquet(str(out["parquet"]))
    ds.to_csv(str(out["csv"]), index=False)
    ds.to_pandas().to_csv(out["tsv"], sep="\t", index=False)
    out["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in QA))
    out["json"] = root / "qa.json"
    out["json"].write_text(json.dumps(QA))
    out["arrow"] = root / "qa.arrow"
    table = pa.Table.from_pylist(QA)
    with pa.OSFile(str(out["arrow"]), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    out["saved"] = root / "saved"
    ds.save_to_disk(str(out["saved"]))
    out["saved_dict"] = root / "saved_dict"
    DatasetDict({"train": ds, "test": ds.select(range(2))}).save_to_disk(str(out["saved_dict"]))
    return out


@pytest.fixture()
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-datasets"
    cache.mkdir()
    hub_cache(cache, "halo-test/qa", {"train": QA, "test": QA[:2]})
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


MAP = {"prompt": "question", "completion": "answer", "id": "task_id"}


@pytest.mark.parametrize("form", ["parquet", "csv", "tsv", "jsonl", "json", "arrow", "saved", "saved_dict"])
def test_every_local_form_reads_as_the_same_mapped_rows(form: str, data: dict[str, Path]) -> None:
    source = sources.parse(data[form])
    assert sources.columns_of(source) == ["question", "answer", "task_id", "tests"]  # from the header/schema alone
    rows = sources.load_rows(source, MAP)
    assert rows == [{"tests": r["tests"], "prompt": r["question"], "completion": r["answer"], "id": r["task_id"]} for r in QA]
    assert [r["id"] for r in sources.load_rows(source, limit=2)] == ["1", "2"]  # no id column: the row number


def test_hf_ids_resolve_offline_from_the_local_cache(hf_cache: Path) -> None:
    assert sources.columns_of(sources.parse("hf:halo-test/qa")) == ["question", "answer", "task_id", "tests"]
    assert len(sources.load_rows(sources.parse("hf:halo-test/qa"))) == 6  # default split: train
    test = sources.load_rows(sources.parse("hf:halo-test/qa:test"), MAP)
    assert [r["id"] for r in test] == ["t/0", "t/1"] and test[0]["prompt"] == QA[0]["question"]
    assert len(sources.load_rows(sources.parse("hf:halo-test/qa:default:train[2:5]"))) == 3
    with pytest.raises(sources.SourceError, match=r"no split 'dev'; its splits: train, test"):
        sources.load_rows(sources.parse("hf:halo-test/qa:default:dev"))
    problems = sources.column_problems(sources.parse("hf:halo-test/qa:main"), {}, ())
    assert "holds no config 'main'" in problems[0][1] and "cached: default" in problems[0][1]
    (missing,) = sources.column_problems(sources.parse("hf:halo-test/absent"), {}, ())
    assert "not in the local datasets cache" in missing[1] and "HF_HUB_OFFLINE" in missing[1]
    with pytest.raises(sources.SourceError, match="hub is offline"):
        sources.load_rows(sources.parse("hf:halo-test/absent"))


def test_chat_columns_are_normalized() -> None:
    sharegpt = {
        "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
    }
    row = sources.map_row(sharegpt, {"messages": "conversations"}, 7)
    assert row == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ],
        "id": "7",
    }
    as_text = sources.map_row({"messages": json.dumps([{"role": "user", "content": "Hi"}])}, {}, 1)  # a CSV cell
    assert as_text["messages"] == [{"role": "user", "content": "Hi"}]
    pair = {
        "chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}],
    }
    assert sources.map_row(pair, {}, 1) == {"chosen": "4", "rejected": "5", "prompt": "2+2?", "id": "1"}
    text_pair = sources.map_row({"prompt": "list?", "chosen": "[1, 2]", "rejected": "[{1}]"}, {}, 1)  # text that looks like JSON stays text
    assert text_pair["chosen"] == "[1, 2]" and text_pair["rejected"] == "[{1}]"
    with pytest.raises(ValueError, match="list of turns"):
        sources.map_row({"messages": "hello"}, {}, 1)


def test_dedup_score_and_train_read_data_files_through_columns(data: dict[str, Path], tmp_path: Path) -> None:
    rows = QA + [dict(QA[0], task_id="t/dup")]  # an exact duplicate under another id
    dup = tmp_path / "dup.parquet"
    from datasets import Dataset

    Dataset.from_list(rows).to_parquet(str(dup))
    outputs, ctx = run_kind("dedup", {"columns": MAP}, {"dataset": Artifact("sft_dataset", dup)}, tmp_path / "dedup")
    kept = read_jsonl(outputs["dataset"])
    assert ctx.metrics["rows_in"] == 7 and ctx.metrics["exact_removed"] == 1 and len(kept) == 6
    assert kept[0] == {"tests": QA[0]["tests"], "prompt": QA[0]["question"], "completion": QA[0]["answer"], "id": "t/0"}
    outputs, ctx = run_kind("score", {"columns": MAP}, {"dataset": Artifact("sft_dataset", data["saved"])}, tmp_path / "score")
    assert ctx.metrics["rows_in"] == 6 and all("score" in r and r["id"].startswith("t/") for r in read_jsonl(outputs["dataset"]))
    params = {"model": "tiny", "algorithm": {"name": "sft", "batch_size": 2}, "max_steps": 2, "columns": MAP}
    run_kind("train", params, {"dataset": Artifact("sft_dataset", data["csv"])}, tmp_path / "train")
    summary = json.loads((tmp_path / "train/training_summary.json").read_text())
    assert summary["steps"] == 2 and summary["weights_changed"] and summary["bad_rows"] == 0


def test_synthesize_and_probe_take_hf_ids(hf_cache: Path, tmp_path: Path) -> None:
    params = {"source": "hf:halo-test/qa:test", "columns": {"prompt": "question", "id": "task_id"}, "output": "prompts"}
    outputs, _ = run_kind("synthesize", params, {}, tmp_path / "synth")
    assert read_jsonl(outputs["dataset"]) == [
        {"answer": r["answer"], "tests": r["tests"], "prompt": r["question"], "id": r["task_id"]} for r in QA[:2]
    ]
    from halo_pipeline.tasks import probe

    tasks, _ = probe._tasks(
        probe.ProbeParams(tasks_file="hf:halo-test/qa", columns={"prompt": "question"}, limit=3, verifier="exact_match")
    )
    assert [t["prompt"] for t in tasks] == [r["question"] for r in QA[:3]] and tasks[0]["tests"] == QA[0]["tests"]
    fingerprint = probe.fingerprint(probe.ProbeParams(tasks_file="hf:halo-test/qa", verifier="exact_match"))["files"]["tasks_file"]
    assert fingerprint == "hf:halo-test/qa@0a1b2c3d"  # the prepared copy it reads enters the cache key


RECIPE = """
defaults:
  - model: tiny
  - algorithm: sft
  - _self_
name: sources
steps:
  prompts:
    uses: synthesize
    with: {source: "hf:halo-test/qa:test", columns: {prompt: quest}, output: prompts}
  dedup:
    inputs: {dataset: file:qa.parquet}
    with: {columns: {prompt: question}}
  train:
    inputs: {dataset: file:qa.csv}
    with: {model: "${model}", algorithm: "${algorithm}", columns: {prompt: question, completion: answr}}
  probe:
    inputs: {candidate: train.model}
    with: {model: "${model}", tasks_file: "hf:halo-test/absent", verifier: exact_match}
"""


def test_validate_names_the_missing_column_without_importing_datasets(data: dict[str, Path], hf_cache: Path, tmp_path: Path) -> None:
    for name in ("parquet", "csv"):
        shutil.copy(data[name], tmp_path / data[name].name)
    recipe = tmp_path / "sources.yaml"
    recipe.write_text(textwrap.dedent(RECIPE).lstrip("\n"))
    code = textwrap.dedent(
        f"""
        import json, sys
        from halo_pipeline.engine.errors import RecipeError
        from halo_pipeline.engine.plan import plan_recipe
        try:
            plan_recipe({str(recipe)!r}, [])
        except RecipeError as exc:
            print(json.dumps([[i.key, i.line, i.message] for i in exc.issues]))
        print(json.dumps(sorted(m for m in ("datasets", "pyarrow", "mlflow", "torch") if m in sys.modules)))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    issues_line, imported_line = out.stdout.strip().splitlines()[-2:]
    issues = {key: (line, message) for key, line, message in json.loads(issues_line)}
    assert json.loads(imported_line) == ["pyarrow"]  # a parquet schema is read with pyarrow; datasets is never imported
    assert (
        "no column 'quest' (mapped to prompt); its columns: question, answer, task_id, tests"
        in issues["steps.prompts.with.columns.prompt"][1]
    )
    assert issues["steps.prompts.with.columns.prompt"][0] == 9  # the recipe line that maps it
    assert "has no column 'completion'" in issues["steps.dedup.inputs.dataset"][1]
    assert "map one with `columns: {completion: <column>}`" in issues["steps.dedup.inputs.dataset"][1]
    assert "no column 'answr' (mapped to completion)" in issues["steps.train.with.columns.completion"][1]
    assert "not in the local datasets cache" in issues["steps.probe.with.tasks_file"][1]
    with pytest.raises(RecipeError):  # the same through the in-process API
        from halo_pipeline.engine.plan import plan_recipe

        plan_recipe(str(recipe), [])
