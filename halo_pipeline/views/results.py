"""A run's results as a table: what the probe measured on the base and the tuned model (each difference with its
paired interval and verdict) and the time each step took — from the run's manifest and its probe reports, never
typed in by hand. `halo-pipeline runs results RUN` prints it as Markdown (a README's table is that output), and
report.html shows the same rows at its top.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# the probe metrics a results table leads with, in this order; the others follow alphabetically
LEAD = ("pass@1", "valid_json", "field_accuracy", "mean_reward")
NAMES = {
    "valid_json": "valid JSON",
    "field_accuracy": "field accuracy",
    "mean_reward": "mean reward",
}


def probe_reports(run_dir: Path, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """step id -> its probe.json, for every probe step of the run that wrote one."""
    found = {}
    for sid, step in (manifest.get("steps") or {}).items():
        path = run_dir / "steps" / sid / "report" / "probe.json"
        if step.get("kind") == "probe" and path.is_file():
            found[sid] = json.loads(path.read_text())
    return found


def metric_rows(probe: dict[str, Any]) -> list[dict[str, Any]]:
    """The gate's rows (every metric both sides measured), the lead metrics first."""
    rows = {r["metric"]: r for r in probe.get("gate", []) if isinstance(r.get("baseline"), int | float)}
    order = [m for m in LEAD if m in rows] + sorted(m for m in rows if m not in LEAD)
    return [rows[m] for m in order]


def markdown(run_dir: Path, manifest: dict[str, Any]) -> str:
    """The results table and the time table, in Markdown."""
    lines: list[str] = []
    for sid, probe in probe_reports(run_dir, manifest).items():
        level = f"{probe.get('confidence', 0.95):.0%}"
        tasks = (probe.get("candidate") or {}).get("tasks")
        lines += [
            f"**{sid}**: {tasks} held-out tasks, base model vs tuned ({'gate passed' if probe.get('passed') else 'gate failed'})",
            "",
            f"| metric | base | tuned | difference | {level} interval | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for r in metric_rows(probe):
            ci = f"[{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]" if r.get("ci") else "—"
            lines.append(
                f"| {NAMES.get(r['metric'], r['metric'])} | {r['baseline']:.3f} | {r['candidate']:.3f} | {r['delta']:+.3f} | {ci} | "
                f"{_verdict(r)} |"
            )
        lines.append("")
    steps = manifest.get("steps") or {}
    timed = sorted(((sid, s) for sid, s in steps.items() if s.get("state") in ("ran", "cached")), key=lambda x: x[1].get("started") or 0)
    lines += ["| step | " + " | ".join(sid for sid, _ in timed) + " | total |", "|---" * (len(timed) + 2) + "|"]
    lines.append("| time | " + " | ".join(_seconds(s) for _, s in timed) + f" | {_clock(manifest.get('seconds'))} |")
    return "\n".join(lines) + "\n"


def _verdict(row: dict[str, Any]) -> str:
    if not row.get("verdict"):
        return "—"
    if row.get("method") == "exact":
        return f"{row['verdict']} ({row['gained']} gained, {row['lost']} lost)"
    return str(row["verdict"])


def _seconds(step: dict[str, Any]) -> str:
    return "cached" if step.get("state") == "cached" else _clock(step.get("seconds"))


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}:{rest:02d}" if minutes else f"{rest} s"
