"""A step that makes nothing says why, and a later step's error names that cause upstream (issue: DPO's train
failed with "has no usable rows" while synthesize reported success with 0 pairs and no reason)."""

from __future__ import annotations

import pytest

from conftest import cli, write

STEPS = """
from halo_pipeline.data.rows import read_rows, write_rows
from halo_pipeline.engine.step import Artifact, Params, RunContext, step


class NoParams(Params):
    pass


@step(outputs={"dataset": "sft_dataset"})
def nothing(params: NoParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict:
    out = ctx.path("data.jsonl")
    write_rows(out, [])
    ctx.meta["dataset"] = {"rows": 0, "empty_because": "every sample scored the same"}
    return {"dataset": out}


@step(inputs={"dataset": "sft_dataset"}, outputs={"dataset": "sft_dataset"})
def passthrough(params: NoParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict:
    rows = list(read_rows(inputs["dataset"].path, "sft_dataset"))
    out = ctx.path("data.jsonl")
    write_rows(out, rows)
    ctx.meta["dataset"] = {"rows": len(rows)}
    return {"dataset": out}


@step(inputs={"dataset": "sft_dataset"}, outputs={"dataset": "sft_dataset"})
def needs_rows(params: NoParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict:
    if not list(read_rows(inputs["dataset"].path, "sft_dataset")):
        raise ValueError("the training dataset has no usable rows")
    return {"dataset": inputs["dataset"].path}
"""


@pytest.mark.usefixtures("prefect_api")
def test_the_error_names_the_empty_step_upstream_and_its_reason(project) -> None:
    write(project / "recipes/empty_steps.py", STEPS)  # beside the recipe: importable without PYTHONPATH
    recipe = write(
        project / "recipes/empty.yaml",
        """
        name: empty
        steps:
          make: {uses: "empty_steps:nothing"}
          dedup: {uses: "empty_steps:passthrough", inputs: {dataset: make.dataset}}
          train: {uses: "empty_steps:needs_rows", inputs: {dataset: dedup.dataset}}
        """,
    )
    res = cli("run", str(recipe), cwd=project)
    out = " ".join((res.stdout + res.stderr).split())  # long lines are wrapped at 200 columns
    assert res.returncode == 1, out
    assert "⚠ make.dataset has no rows: every sample scored the same" in out
    assert "⚠ dedup.dataset has no rows: input 'dataset' (make.dataset) has no rows: every sample scored the same" in out
    assert (
        "the training dataset has no usable rows (upstream: input 'dataset' (dedup.dataset) has no rows: "
        "input 'dataset' (make.dataset) has no rows: every sample scored the same)" in out
    )
