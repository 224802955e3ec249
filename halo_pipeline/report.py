"""`report.html` in the run directory: the steps, their states, times, metrics and plots, from the manifest."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from halo_pipeline.cache import atomic_write_text

STATE_COLOR = {
    "completed": "#2e7d32",
    "ran": "#2e7d32",
    "cached": "#00838f",
    "failed": "#c62828",
    "skipped": "#757575",
    "not-selected": "#9e9e9e",
    "running": "#f9a825",
}


def _metrics_table(metrics: dict[str, Any]) -> str:
    from halo_pipeline.runs import flatten

    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in sorted(flatten(metrics).items()))
    return f"<table class='m'>{rows}</table>" if rows else ""


def write_report(run_dir: Path, manifest: dict[str, Any]) -> Path:
    e = html.escape
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>{e(manifest['name'])} — halo-pipeline run</title>",
        "<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:1100px}td,th{padding:4px 10px;text-align:left;vertical-align:top}"
        "table{border-collapse:collapse}tr{border-bottom:1px solid #eee}.m td{padding:1px 8px;font-size:12px}img{max-width:480px;margin:4px}"
        "code{background:#f5f5f5;padding:1px 4px}</style>",
        f"<h1>{e(manifest['name'])} <small style='color:{STATE_COLOR.get(manifest.get('state', ''), '#000')}'>{e(str(manifest.get('state')))}</small></h1>",
        f"<p><code>{e(' '.join(manifest.get('command', [])))}</code></p>",
        "<p>" + " · ".join(f"{e(k)}={e(str(v))}" for k, v in sorted(manifest.get("groups", {}).items())) + "</p>",
        "<table><tr><th>step</th><th>kind</th><th>state</th><th>seconds</th><th>metrics</th><th>plots</th></tr>",
    ]
    for sid, step in manifest["steps"].items():
        state = step.get("state", "")
        step_dir = run_dir / "steps" / sid
        plots = (
            "".join(f"<img src='steps/{e(sid)}/{e(p.name)}' alt='{e(p.stem)}'>" for p in sorted(step_dir.glob("*.png")))
            if step_dir.exists()
            else ""
        )
        error = f"<pre>{e(step['error'])}</pre>" if step.get("error") else ""
        parts.append(
            f"<tr><td><b>{e(sid)}</b></td><td>{e(step['kind'])}</td><td style='color:{STATE_COLOR.get(state, '#000')}'>{e(state)}</td>"
            f"<td>{step.get('seconds', '')}</td><td>{_metrics_table(step.get('metrics', {}))}{error}</td><td>{plots}</td></tr>"
        )
    parts.append("</table>")
    path = run_dir / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path
