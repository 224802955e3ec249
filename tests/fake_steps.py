"""Fake step kinds for engine tests: cheap, deterministic, no ML libraries."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from halo_pipeline.engine.step import Artifact, Params, RunContext, step


class MakeParams(Params):
    n: int = Field(3, ge=1, description="Rows to write.")
    text: str = "row"
    sleep: float = Field(0.0, ge=0)
    counter: str | None = Field(None, description="A file to append a line to on every real run.")
    gate: str | None = Field(None, description="Wait (up to 2 min) until this file exists before finishing.")
    shout: str | None = Field(None, description="Print this to stdout, as a chatty library would (print and the raw fd).")


@step(outputs={"dataset": "sft_dataset"}, version="1")
def make(params: MakeParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    if params.counter:
        with open(params.counter, "a") as f:
            f.write(f"{os.getpid()}\n")
    if params.shout:
        print(params.shout, flush=True)
        os.write(1, f"{params.shout}\n".encode())
    time.sleep(params.sleep)
    deadline = time.time() + 120
    while params.gate and not Path(params.gate).exists() and time.time() < deadline:
        time.sleep(0.05)
    out = ctx.path("data.jsonl")
    out.write_text("".join(json.dumps({"id": f"r{i}", "prompt": params.text, "completion": str(i)}) + "\n" for i in range(params.n)))
    ctx.metrics["rows"] = params.n
    return {"dataset": out}


class CopyParams(Params):
    suffix: str = "!"
    fail: bool = False
    fail_below: int | None = Field(None, description="Fail when the input has fewer rows than this.")
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
    if params.fail_below is not None and len(rows) < params.fail_below:
        raise ValueError(f"only {len(rows)} rows")
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
    error: str = "ConnectionError"  # or ValueError, or an errno name (ENOSPC, EACCES, ECONNRESET...) raised as OSError


@step(outputs={"dataset": "sft_dataset"})
def flaky(params: FlakyParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    """Fails `failures` times with `error` (counted in a file), then succeeds."""
    counter = Path(params.counter)
    attempts = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(attempts + 1))
    if attempts < params.failures:
        if params.error.startswith("E"):
            code = getattr(errno, params.error)
            raise OSError(code, f"attempt {attempts + 1} failed: {os.strerror(code)}")
        raise {"ConnectionError": ConnectionError, "ValueError": ValueError}[params.error](f"attempt {attempts + 1} failed")
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


class ShardsParams(Params):
    files: int = Field(6, ge=1, description="Files written into the output directory, one at a time.")
    sleep: float = Field(0.2, ge=0, description="Seconds between files (a kill lands mid-write).")
    counter: str | None = Field(None, description="A file to append a line to on every real run.")


@step(outputs={"shards": "file"})
def shards(params: ShardsParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    """A directory of several files written slowly: a result that can be half-written when killed."""
    if params.counter:
        with open(params.counter, "a") as f:
            f.write(f"{os.getpid()}\n")
    out = ctx.path("shards")
    out.mkdir(exist_ok=True)
    for i in range(params.files):
        (out / f"part-{i}.txt").write_text(f"shard {i}\n" * 1000)
        time.sleep(params.sleep)
    return {"shards": out}


class ResumableParams(Params):
    items: int = Field(10, ge=1)
    sleep: float = Field(0.2, ge=0)


@step(outputs={"dataset": "sft_dataset"}, resumable=True)
def appender(params: ResumableParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    """Appends one row per item and continues where a killed run stopped (like synthesize)."""
    from halo_pipeline.data.rows import append_jsonl, read_complete_jsonl

    path = ctx.path("data.jsonl")
    done = read_complete_jsonl(path)
    ctx.metrics["resumed_rows"] = len(done)
    for i in range(len(done), params.items):
        append_jsonl(path, {"id": f"r{i}", "prompt": "p", "completion": str(i)})
        time.sleep(params.sleep)
    return {"dataset": path}


class ScratchParams(Params):
    fail_file: str = Field(..., description="While this file exists the step fails after writing its checkpoint.")


@step(outputs={"dataset": "sft_dataset"}, resumable=True)
def checkpointed(params: ScratchParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    """Writes a checkpoint to its scratch area, fails while `fail_file` exists, resumes from the checkpoint."""
    ckpt = ctx.scratch("ckpt.json")
    resumed = ckpt.exists()
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_text(json.dumps({"step": 1}))
    if Path(params.fail_file).exists():
        raise RuntimeError("killed after the checkpoint")
    out = ctx.path("data.jsonl")
    out.write_text(json.dumps({"id": "x", "prompt": "p", "completion": "resumed" if resumed else "fresh"}) + "\n")
    return {"dataset": out}
