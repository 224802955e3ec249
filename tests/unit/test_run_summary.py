"""The last lines of a run: an output's `command` (the serve step's: how to serve what the run made), a step that
made no rows and why."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from halo_pipeline.views.runs import print_result


def test_the_run_ends_with_the_serve_command_and_empty_outputs(tmp_path: Path) -> None:
    steps = {
        "synthesize": {"state": "ran", "outputs": {"dataset": {"meta": {"rows": 0, "empty_because": "no reward gap"}}}},
        "serve": {"state": "cached", "outputs": {"report": {"meta": {"command": "halo-pipeline serve --model /x/[1]/model"}}}},
    }
    (tmp_path / "replay.json").write_text(json.dumps({"steps": steps}))
    console = Console(record=True, width=200)
    print_result({"state": "completed", "steps": {"synthesize": "ran", "serve": "cached"}, "run_dir": str(tmp_path)}, console)
    text = console.export_text()
    assert "serve: halo-pipeline serve --model /x/[1]/model" in text
    assert "⚠ synthesize.dataset has no rows: no reward gap" in text
    assert "prefect:" not in text  # no UI address: no link
