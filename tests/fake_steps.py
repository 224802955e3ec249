"""Fake step kinds for engine tests: cheap, deterministic, no ML libraries."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from halo_pipeline.step import Artifact, Params, RunContext, step


class MakeParams(Params):
    n: int = Field(3, ge=1, description="Rows to write.")
    text: str = "row"
    sleep: float = Field(0.0, ge=0)


@step(outputs={"dataset": "sft_dataset"}, version="1")
def make(params: MakeParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    time.sleep(params.sleep)
    out = ctx.path("data.jsonl")
    out.write_text("".join(json.dumps({"id": f"r{i}", "prompt": params.text, "completion": str(i)}) + "\n" for i in range(params.n)))
    ctx.metrics["rows"] = params.n
    return {"dataset": out}


class CopyParams(Params):
    suffix: str = "!"
    fail: bool = False
    sleep: float = 0.0
    counter: str | None = Field(None, description="A file to append a line to on every real run.")


@step(inputs={"dataset": ("sft_dataset", "preference_dataset")}, outputs={"dataset": "same:dataset"})
def copy(params: CopyParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    if params.counter:
        with open(params.counter, "a") as f:
            f.write(f"{ctx.step_id}\n")
    time.sleep(params.sleep)
    if params.fail:
        raise ValueError("asked to fail")
    rows = [json.loads(line) for line in inputs["dataset"].path.read_text().splitlines()]
    out = ctx.path("data.jsonl")
    out.write_text("".join(json.dumps({**r, "completion": r["completion"] + params.suffix}) + "\n" for r in rows))
    ctx.metrics["rows"] = len(rows)
    ctx.metrics["score"] = len(rows) / 10
    return {"dataset": out}


class PrefParams(Params):
    pass


@step(outputs={"pairs": "preference_dataset"})
def prefs(params: PrefParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    out = ctx.path("pairs.jsonl")
    out.write_text(json.dumps({"id": "p0", "prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    return {"pairs": out}


class SftOnlyParams(Params):
    pass


@step(inputs={"dataset": "sft_dataset"}, outputs={"report": "report"})
def sft_only(params: SftOnlyParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    out = ctx.path("report.json")
    out.write_text(json.dumps({"rows": len(inputs["dataset"].path.read_text().splitlines())}))
    return {"report": out}


class KillParams(Params):
    marker: str


@step(inputs={"dataset": "sft_dataset"}, outputs={"dataset": "same:dataset"})
def die_once(params: KillParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    """Kills its own process the first time (as a crash or an OOM kill would), succeeds afterwards."""
    marker = Path(params.marker)
    (ctx.path("partial.txt")).write_text("half")
    if not marker.exists():
        marker.write_text("killed")
        os._exit(137)
    out = ctx.path("data.jsonl")
    out.write_text(inputs["dataset"].path.read_text())
    return {"dataset": out}


class FlakyParams(Params):
    counter: str
    failures: int = 1
    error: str = "OSError"


@step(outputs={"dataset": "sft_dataset"})
def flaky(params: FlakyParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    """Fails `failures` times with `error` (counted in a file), then succeeds."""
    counter = Path(params.counter)
    attempts = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(attempts + 1))
    if attempts < params.failures:
        raise {"OSError": OSError, "ValueError": ValueError}[params.error](f"attempt {attempts + 1} failed")
    out = ctx.path("data.jsonl")
    out.write_text(json.dumps({"id": "x", "prompt": "p", "completion": "c"}) + "\n")
    return {"dataset": out}


class RendezvousParams(Params):
    dir: str
    me: str
    other: str
    timeout: float = 60.0


@step(inputs={"dataset": "sft_dataset"}, outputs={"dataset": "same:dataset"})
def rendezvous(params: RendezvousParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    """Succeeds only if `other` starts while this step is running: proves two steps ran concurrently."""
    d = Path(params.dir)
    (d / params.me).touch()
    deadline = time.time() + params.timeout
    while not (d / params.other).exists():
        if time.time() > deadline:
            raise TimeoutError(f"{params.other} never started while {params.me} was running")
        time.sleep(0.05)
    out = ctx.path("data.jsonl")
    out.write_text(inputs["dataset"].path.read_text())
    return {"dataset": out}
