"""The rows a dataset reference names, whatever its form: a built-in dataset's split, a hub dataset, a data file
(parquet, CSV, arrow, a saved dataset) or our own JSONL — for the step kinds that read tasks or prompts, and for
checks that compare what one dataset holds with another (held-out sets against training data)."""

from __future__ import annotations

from typing import Any

from halo_pipeline.data import refs


def rows(ref: refs.DatasetRef, columns: dict[str, str] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The reference's rows mapped onto our fields by `columns:` (each with an `id`); the first `limit` when given."""
    if ref.kind == "builtin":
        if ref.builtin == "records":
            from halo_pipeline.data.records import records

            found = records(ref.split)
        else:
            from halo_pipeline.data.humaneval import humaneval_prompts

            found = humaneval_prompts(ref.split)
        return found[:limit] if limit else found
    if ref.kind == "hf":
        from halo_pipeline.data import sources

        return sources.load_rows(ref, columns, limit)
    from halo_pipeline.data.rows import read_numbered_rows  # our JSONL, or a data file read with `datasets`

    assert ref.path is not None
    found = [row for _, row in read_numbered_rows(ref.path, "prompts", columns=columns or {})]
    return found[:limit] if limit else found
