"""Entry points of distributed training's child processes (see distributed.py).

`python -m halo_pipeline.training._rank --launch ACCELERATE-ARGS...` is `accelerate launch`, made to die with
the step that started it; `python -m halo_pipeline.training._rank SPEC` is one rank: it trains with the
step's params through the same `train_torch` a single process runs, and rank 0 writes the result file.
"""

from __future__ import annotations

import logging
import pickle
import sys
from pathlib import Path
from typing import Any

from halo_pipeline.training import distributed


def launch(argv: list[str]) -> None:
    from accelerate.commands.launch import launch_command, launch_command_parser

    distributed.die_with_parent()
    launch_command(launch_command_parser().parse_args(argv))


def run(spec_path: Path) -> None:
    distributed.die_with_parent()
    spec: dict[str, Any] = pickle.loads(spec_path.read_bytes())
    from accelerate import PartialState
    from transformers.utils import logging as hf_logging

    from halo_pipeline.data.rows import read_rows
    from halo_pipeline.engine.cache import atomic_write_json
    from halo_pipeline.training.trl_runner import train_torch

    hf_logging.disable_progress_bar()  # "Loading weights" bars from every rank would fill the step's log
    PartialState(cpu=spec["backend_cpu"])  # the process group, before anything (RAFT) gathers over it
    main = distributed.is_main()
    log = logging.getLogger(f"halo_pipeline.rank{distributed.rank()}")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s" if main else f"[rank {distributed.rank()}] %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO if main else logging.WARNING)  # rank 0 speaks for the step; the others only warn
    log.propagate = False
    ctx = spec["ctx"]
    ctx.log = log
    ctx.on_progress = distributed.report_progress if main else None
    if not main and hasattr(ctx, "tracking"):
        ctx.tracking = {}  # one tracker run per step: rank 0's
    path, artifact_type = spec["dataset"]
    rows = list(read_rows(Path(path), artifact_type, "skip", []))
    summary = train_torch(spec["params"], rows, ctx, init=spec["init"])
    if main:
        atomic_write_json(
            spec["result"], {"summary": summary, "metrics": ctx.metrics, "meta": ctx.meta, "summary_lines": ctx.summary_lines}
        )
    distributed.barrier()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--launch"]:
        launch(sys.argv[2:])
    else:
        run(Path(sys.argv[1]))
