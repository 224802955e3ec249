"""Terminal view of a run: step states and elapsed times, polled from the per-step state files."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

SYMBOL = {"pending": "·", "waiting": "…", "running": "▶", "ran": "✔", "cached": "↺", "failed": "✘", "skipped": "−", "not selected": " "}
FIGURES = ("loss", "reward", "accuracy")  # figures a step may report with its progress (on_progress(done, total, **figures))
STYLE = {
    "waiting": "magenta",
    "running": "yellow",
    "ran": "green",
    "cached": "cyan",
    "failed": "red",
    "skipped": "dim",
    "not selected": "dim",
}


def read_states(run_dir: Path, steps: list[str]) -> dict[str, dict[str, Any]]:
    states = {}
    for sid in steps:
        try:
            states[sid] = json.loads((run_dir / "logs" / f"{sid}.state.json").read_text())
        except (OSError, json.JSONDecodeError):
            states[sid] = {"state": "pending"}
    return states


def _table(plan: Any, states: dict[str, dict[str, Any]], selected: set[str], started: float) -> Any:
    from rich.table import Table

    table = Table(title=f"{plan.recipe.name}  ({time.time() - started:.1f} s)", title_justify="left", box=None, pad_edge=False)
    for col in ("", "step", "kind", "state", "progress", "time"):
        table.add_column(col)
    now = time.time()
    for sid, ps in plan.steps.items():
        st = states.get(sid, {}) if sid in selected else {"state": "not selected"}
        state = st.get("state", "pending")
        if state == "running":
            secs = f"{now - float(st.get('started', now)):.1f} s"
        elif "seconds" in st:
            secs = f"{st['seconds']:.2f} s"
        else:
            secs = ""
        style = STYLE.get(state, "")
        progress = _bar(int(st["done"]), int(st["total"])) + _figures(st) if state == "running" and st.get("total") else ""
        if state == "waiting":  # another run is computing the same step: this one reuses its result
            progress = f"for {st.get('holder', 'another run')}"
        table.add_row(SYMBOL.get(state, "?"), sid, ps.kind.name, f"[{style}]{state}[/]" if style else state, progress, secs)
    return table


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / total) if total else 0
    return f"{'━' * filled}{'╌' * (width - filled)} {done}/{total}"


def _figures(st: dict[str, Any]) -> str:
    """What a step reports beside its bar (a training step: loss, reward, accuracy), then its ETA."""
    parts = [f"{k} {st[k]:.4g}" for k in FIGURES if isinstance(st.get(k), int | float)]
    if isinstance(st.get("eta_s"), int | float):
        from halo_pipeline.training.metrics import format_seconds

        parts.append(f"ETA {format_seconds(float(st['eta_s']))}")
    return "  " + " · ".join(parts) if parts else ""


def show(run_dir: Path, plan: Any, futures: dict[str, Any], selected: set[str]) -> None:
    """Block until every future is done, showing progress (a live table on a terminal, lines otherwise)."""
    from rich.console import Console

    started = time.time()
    console = Console(stderr=True)
    ids = list(plan.steps)
    if console.is_terminal:
        from rich.live import Live

        with Live(_table(plan, read_states(run_dir, ids), selected, started), console=console, refresh_per_second=8) as live:
            while not all(_done(f) for f in futures.values()):
                live.update(_table(plan, read_states(run_dir, ids), selected, started))
                time.sleep(0.12)
            live.update(_table(plan, read_states(run_dir, ids), selected, started))
        return
    last: dict[str, str] = {}
    reported: dict[str, tuple[float, float]] = {}  # step -> (share done, when) of its last progress line
    while True:
        finished = all(_done(f) for f in futures.values())
        for sid, st in read_states(run_dir, ids).items():
            state = st.get("state", "pending")
            if sid in selected and state not in ("pending",) and last.get(sid) != state:
                last[sid] = state
                extra = f" ({st['seconds']:.2f} s)" if "seconds" in st else f" for {st['holder']}" if "holder" in st else ""
                print(f"[{time.time() - started:6.1f} s] {sid}: {state}{extra}", file=sys.stderr, flush=True)
            elif state == "running" and sid in selected and st.get("total") and _progress_due(reported, sid, st):
                done, total = int(st["done"]), int(st["total"])
                print(f"[{time.time() - started:6.1f} s] {sid}: {done}/{total}{_figures(st)}", file=sys.stderr, flush=True)
        if finished:
            return
        time.sleep(0.1)


def _progress_due(reported: dict[str, tuple[float, float]], sid: str, st: dict[str, Any]) -> bool:
    """A progress line for logs that are not a terminal: every 10% of the step, or every 30 s, not every poll."""
    share, now = int(st["done"]) / max(int(st["total"]), 1), time.time()
    before, when = reported.get(sid, (0.0, now))
    if sid not in reported:
        reported[sid] = (0.0, now)
        return False
    if share - before >= 0.1 or (now - when >= 30 and share > before) or (share >= 1 and before < 1):
        reported[sid] = (share, now)
        return True
    return False


def _done(future: Any) -> bool:
    wrapped = getattr(future, "wrapped_future", None)
    if wrapped is not None and hasattr(wrapped, "done"):
        return bool(wrapped.done())
    try:
        return bool(future.state.is_final())
    except Exception:
        return False
