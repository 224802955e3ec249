"""What the commands share: the console they print to, Prefect's environment, a plan's warnings."""

from __future__ import annotations

import sys
from typing import Any


def console() -> Any:
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)  # pipes and logs get whole lines


def prefect_env() -> None:
    from halo_pipeline.orchestration.environment import apply_defaults

    apply_defaults()


def print_warnings(plan: Any) -> None:
    for warning in plan.warnings:  # valid, but it will not do what it seems to (e.g. a gate too small to decide)
        print("  warning: " + warning.format().replace("\n", "\n  "), file=sys.stderr)
