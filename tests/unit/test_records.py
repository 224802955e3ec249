"""The built-in `records` extraction dataset: disjoint splits, stable rows, references that follow the schema."""

from __future__ import annotations

import json

import jsonschema

from halo_pipeline.data import decontaminate as dc
from halo_pipeline.data import load, refs
from halo_pipeline.data.records import SCHEMA, fingerprint, records


def test_splits_are_disjoint_by_construction_and_stable() -> None:
    train, test = records("train"), records("test")
    assert (len(train), len(test)) == (600, 200)
    names = {json.loads(r["reference"])["customer"] for r in train}
    for row in test:
        record = json.loads(row["reference"])
        first, last = record["customer"].split()
        assert not any(first in n.split() or last in n.split() for n in names)
        assert all(record["ship_to"]["city"] != json.loads(r["reference"])["ship_to"]["city"] for r in train[:50])
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert records("test") == test and fingerprint("test") == fingerprint("test") != fingerprint("train")


def test_every_reference_follows_the_schema_and_the_text_holds_its_values() -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for row in records(None):
        record = json.loads(row["reference"])
        validator.validate(record)
        text = row["prompt"].split("\n\n", 1)[1]
        assert record["customer"] in text and record["ship_to"]["city"] in text and record["item"] in text  # copied as written
        assert ("note" in record) == row["note_given"] == ("Note:" in text)


def test_the_variety_an_extractor_needs() -> None:
    rows = records("train")
    texts = [r["prompt"].split("\n\n", 1)[1] for r in rows]
    assert sum("-" in t.split(",")[0] or t[:4].isdigit() for t in texts) > 0  # ISO dates
    assert sum(any(m in t for m in ("January", "May", "December")) for t in texts) > 50  # spelled months
    assert len({json.loads(r["reference"])["payment"] for r in rows}) == 3
    assert 0.2 < sum(r["note_given"] for r in rows) / len(rows) < 0.4


def test_the_test_split_is_clean_against_training_rows_that_copy_the_train_references() -> None:
    held = [dc.item_from_row("records:test", row, i) for i, row in enumerate(load.rows(refs.parse("records:test")))]
    index = dc.Index(held, 13)
    rows = [dc.row_texts({"prompt": r["prompt"], "completion": r["reference"]}) for r in records("train")]
    assert index.check(rows) == []
    leaked = records("test")[7]
    found = index.check([dc.row_texts({"prompt": "Extract: " + leaked["prompt"][-80:], "completion": leaked["reference"]})])
    assert [o.item for o in found] == [7]  # a held-out record that reaches training is caught


def test_the_recipe_schema_file_is_the_datasets_schema() -> None:
    from conftest import REPO

    assert json.loads((REPO / "recipes/schemas/order.json").read_text()) == SCHEMA
