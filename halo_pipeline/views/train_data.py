"""A train step's section of report.html: its dataset checks against their thresholds, the dataset's measures, and
its first examples as the trainer saw them, token by token (trained tokens highlighted, masked ones grey), from the
step's `data_checks.json` (`training/checks.py`)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

TRAINED = ("background:#c6f0c2", "background:#a8e3a2")  # alternating, so that token boundaries show
MASKED = ("color:#777", "color:#999")


def render(step_dir: Path) -> str:
    path = step_dir / "data_checks.json"
    if not path.is_file():
        return ""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    e = html.escape
    checks = record.get("checks", [])
    failed = [c for c in checks if not c["ok"]]
    verdict = (
        "<span class='ok'>dataset checks passed</span>" if not failed else f"<span class='fail'>{len(failed)} dataset checks failed</span>"
    )
    rows = "".join(
        f"<tr><td>{e(c['name'])}</td><td>{e(c['what'])}</td><td class='num'>{e(str(c['value']))}</td><td class='num'>{e(str(c['limit']))}</td>"
        f"<td>{'<span class=ok>ok</span>' if c['ok'] else '<span class=fail>FAIL</span>'}</td></tr>"
        for c in checks
    )
    stats = record.get("stats", {})
    tokens = stats.get("tokens", {})
    measures = (
        f"{stats.get('rows', 0):,} rows, {stats.get('examples', 0):,} examples; tokens p50 {tokens.get('p50')} · p90 {tokens.get('p90')} · "
        f"p99 {tokens.get('p99')} · max {tokens.get('max')}"
    )
    if stats.get("max_length") is not None:
        measures += f"; max_length {stats['max_length']}: {stats.get('truncated', 0)} truncated, {stats.get('dropped', 0)} dropped"
    template = "through the chat template" if record.get("chat_template") else "as plain text"
    parts = [
        f"<p>{verdict} ({e(str(record.get('on_fail')))}): {e(measures)}</p>",
        f"<table><tr><th>check</th><th>what</th><th>value</th><th>limit</th><th></th></tr>{rows}</table>" if rows else "",
        f"<details open><summary>the first {len(record.get('examples', []))} examples as the trainer sees them ({e(template)}; "
        "trained tokens highlighted, masked ones grey)</summary>",
    ]
    for ex in record.get("examples", []):
        for seq in ex.get("sequences", []):
            head = f"row {ex['row']} · id {ex['id']}" + (f" · {seq['side']}" if seq.get("side") else "")
            head += f" · {len(seq['ids'])} tokens, {sum(seq['trained'])} trained"
            if seq["length"] > len(seq["ids"]):
                head += f" · truncated from {seq['length']}"
            if ex.get("dropped"):
                head += " · dropped by the trainer"
            parts.append(f"<p class='dim'>{e(head)}</p><pre class='tokens'>{tokens_html(seq['pieces'], seq['trained'])}</pre>")
    parts.append("".join(f"<p class='dim'>note: {e(n)}</p>" for n in record.get("notes", [])) + "</details>")
    return "\n".join(p for p in parts if p)


def tokens_html(pieces: list[str], trained: list[bool]) -> str:
    out: list[Any] = []
    for i, (piece, on) in enumerate(zip(pieces, trained, strict=True)):
        style = (TRAINED if on else MASKED)[i % 2]
        out.append(f"<span style='{style}'>{html.escape(piece)}</span>")
    return "".join(out)
