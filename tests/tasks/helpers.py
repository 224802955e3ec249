"""Run a step kind's function directly on files, as the engine would (no Prefect)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from halo_pipeline.engine import registry
from halo_pipeline.engine.step import Artifact, RunContext

# GRPO learns only from groups whose rewards differ. chrF against a fixed reference is graded, and samples the
# tiny model draws at temperature 2.0 differ from each other, so every group carries signal on any machine
# (a pattern the model happens to say in some samples holds only for one machine's weights or rounding).
VARIED_REWARD = {"name": "chrf", "reference_field": "reference"}
REFERENCE = "Hello! How can I help you today?"


def run_kind(name: str, params: dict[str, Any], inputs: dict[str, Artifact], out_dir: Path) -> tuple[dict[str, Any], RunContext]:
    kind = registry.get(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(step_id=name, kind=name, out_dir=out_dir, run_dir=out_dir, seed=0, log=logging.getLogger(f"test.{name}"))
    outputs = kind.fn(kind.params.model_validate(params), inputs, ctx)
    return outputs, ctx


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
