"""Inputs read as users write them: a CSV cell that looks like a number stays the text it is in a text field
(`007` is not 7), and a numeric parquet/arrow column mapped onto a text field becomes text, the same way for
every step kind that reads datasets."""

from __future__ import annotations

from pathlib import Path

from halo_pipeline.data import sources
from halo_pipeline.data.rows import read_rows
from halo_pipeline.engine.step import Artifact
from helpers import read_jsonl, run_kind

ANSWERS = ["42", "007", "3.10", "1e3", "-0"]


def _csv(path: Path, sep: str = ",") -> Path:
    lines = [sep.join(["question", "answer", "weight"])]
    lines += [sep.join([f"q{i}", answer, str(i / 2)]) for i, answer in enumerate(ANSWERS)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_and_tsv_cells_that_look_like_numbers_stay_text_in_text_fields(tmp_path: Path) -> None:
    for path in (_csv(tmp_path / "qa.csv"), _csv(tmp_path / "qa.tsv", "\t")):
        rows = list(read_rows(path, "sft_dataset", columns={"prompt": "question", "completion": "answer"}))
        assert [r["completion"] for r in rows] == ANSWERS  # exactly as written
        assert [r["weight"] for r in rows] == [i / 2 for i in range(5)]  # a column that is no text field stays a number
        outputs, ctx = run_kind(
            "dedup",
            {"columns": {"prompt": "question", "completion": "answer"}},
            {"dataset": Artifact("sft_dataset", path)},
            tmp_path / path.suffix[1:],
        )
        assert [r["completion"] for r in read_jsonl(outputs["dataset"])] == ANSWERS


def test_numeric_parquet_columns_mapped_to_text_fields_become_text(tmp_path: Path) -> None:
    from datasets import Dataset

    path = tmp_path / "qa.parquet"
    Dataset.from_list([{"question": i, "answer": 40 + i, "chosen_score": 0.5} for i in range(3)]).to_parquet(str(path))
    mapped = sources.load_rows(sources.parse(path), {"prompt": "question", "completion": "answer"})
    assert [(r["prompt"], r["completion"]) for r in mapped] == [("0", "40"), ("1", "41"), ("2", "42")]
    assert mapped[0]["chosen_score"] == 0.5
    rows = list(read_rows(path, "sft_dataset", columns={"prompt": "question", "completion": "answer"}))
    assert rows == mapped
    pairs = Dataset.from_list([{"prompt": "2+2?", "chosen": 4, "rejected": 5.5}])
    pairs.to_parquet(str(tmp_path / "pairs.parquet"))
    (pair,) = read_rows(tmp_path / "pairs.parquet", "preference_dataset")
    assert (pair["chosen"], pair["rejected"]) == ("4", "5.5")


def test_numbers_in_chat_turns_become_text() -> None:
    row = sources.map_row(
        {"conversations": [{"from": "human", "value": "6*7?"}, {"from": "gpt", "value": 42}]}, {"messages": "conversations"}, 1
    )
    assert row["messages"][1] == {"role": "assistant", "content": "42"}
