"""A cheap step kind for engine benchmarks: sleeps, then writes a small file derived from its input."""

from __future__ import annotations

import time
from typing import Any

from halo_pipeline.engine.step import Artifact, Params, RunContext, step


class WorkParams(Params):
    seconds: float = 0.05
    tag: str = ""


@step(inputs={"dataset": "sft_dataset"}, optional_inputs={"dataset"}, outputs={"dataset": "sft_dataset"})
def work(params: WorkParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    time.sleep(params.seconds)
    prev = inputs["dataset"].path.read_text() if "dataset" in inputs else ""
    out = ctx.path("data.jsonl")
    out.write_text(prev + f'{{"id": "{ctx.step_id}", "prompt": "{params.tag}", "completion": "x"}}\n')
    return {"dataset": out}
