"""`report.html` in the run directory: a page a practitioner forwards to a colleague, built from the manifest.

At the top: the run's state, what was run (command, overrides, groups, git commit), when and for how
long, and links to the Prefect flow run, the resolved config and the manifest. Then one row per step
(state, time, key metrics rounded with units, failures in red with the error's first line), and one
section per step with its plots, its verdict tables (the probe's gate, verify's drift against its
thresholds) and links to its log and outputs. Self-contained: plain HTML and CSS, images by path.
"""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path
from typing import Any

from halo_pipeline.engine.cache import atomic_write_text

STATE_COLOR = {
    "completed": "#2e7d32", "ran": "#2e7d32", "cached": "#00838f", "failed": "#c62828", "interrupted": "#c62828",
    "skipped": "#757575", "not-selected": "#9e9e9e", "running": "#b26a00",
}  # fmt: skip
CSS = """
body{font:14px/1.45 system-ui,-apple-system,sans-serif;margin:0 auto;padding:1.2em 1.5em;max-width:1100px;color:#222}
h1{font-size:22px;margin:.2em 0}h2{font-size:17px;margin:1.6em 0 .4em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;vertical-align:middle}
.meta{color:#555;margin:.2em 0}.meta code{white-space:pre-wrap;word-break:break-all}
table{border-collapse:collapse;width:100%;margin:.4em 0}th,td{padding:4px 8px;text-align:left;vertical-align:top;border-bottom:1px solid #eee}
th{font-weight:600;background:#fafafa}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.failed td{background:#fdecea}.err{color:#c62828}.dim{color:#888}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.3em 0}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:8px}
.links a{margin-right:1em}code{background:#f5f5f5;padding:1px 4px;border-radius:3px}
.ok{color:#2e7d32;font-weight:600}.fail{color:#c62828;font-weight:600}
"""
# the few metrics worth a column in the steps table, per kind (all of them are in each step's section)
HEADLINE = {
    "synthesize": ("rows", "pass_rate", "tokens_per_second"),
    "dedup": ("rows_in", "rows_out", "removed"),
    "score": ("rows_out", "mean_score_kept"),
    "train": ("steps", "final_loss", "mean_reward"),
    "probe": ("pass@1", "baseline_pass@1"),
    "verify": ("kl_mean", "top1_agreement", "passed"),
    "serve": ("ttft_p50_s", "tokens_per_s_1"),
}


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def fmt_value(name: str, value: Any) -> str:
    """A number rounded to what it means, with its unit when the name says it."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if name.endswith(("_s", "seconds")) or name == "wall_s":
            return fmt_seconds(value)
        if name.endswith("_mb"):
            return f"{value:,.0f} MB"
        if "per_s" in name or "per_second" in name:
            return f"{value:,.1f} tok/s"
        if value == 0 or abs(value) >= 1000:
            return f"{value:,.0f}" if value else "0"
        return f"{value:.2e}" if abs(value) < 1e-3 else f"{value:.3g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt_value(k, v)}" for k, v in value.items()) or "—"
    return str(value)


def _flat(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, dict) and v and all(isinstance(x, int | float) for x in v.values()) and len(v) > 3:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _badge(state: str) -> str:
    return f"<span class='badge' style='background:{STATE_COLOR.get(state, '#555')}'>{html.escape(state)}</span>"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""


def _step_row(sid: str, step: dict[str, Any]) -> str:
    e = html.escape
    state = step.get("state", "")
    metrics = step.get("metrics") or {}
    keys = [k for k in HEADLINE.get(step["kind"], ()) if k in metrics] or [k for k, v in metrics.items() if isinstance(v, int | float)][:3]
    shown = " · ".join(f"{e(k)} <b>{e(fmt_value(k, metrics[k]))}</b>" for k in keys)
    if step.get("error"):
        first = str(step["error"]).strip().splitlines()[0] if str(step["error"]).strip() else ""
        shown = f"<span class='{'err' if state == 'failed' else 'dim'}'>{e(first[:300])}</span>"
    cls = " class='failed'" if state == "failed" else ""
    return (
        f"<tr{cls}><td><a href='#step-{e(sid)}'><b>{e(sid)}</b></a></td><td>{e(step['kind'])}</td><td>{_badge(state)}</td>"
        f"<td class='num'>{e(fmt_seconds(step.get('seconds')) if state == 'ran' else '')}</td><td>{shown}</td></tr>"
    )


def _verdicts(step_dir: Path, kind: str) -> str:
    """The step's own verdict tables: the probe's gate, verify's checks against their thresholds."""
    e = html.escape
    if kind == "probe" and (step_dir / "report/probe.json").is_file():
        probe = json.loads((step_dir / "report/probe.json").read_text())
        verdict = "<span class='ok'>gate passed</span>" if probe.get("passed") else "<span class='fail'>gate failed</span>"
        rows = "".join(
            f"<tr><td>{e(r['metric'])}</td><td class='num'>{e(fmt_value(r['metric'], r['baseline']))}</td>"
            f"<td class='num'>{e(fmt_value(r['metric'], r['candidate']))}</td><td class='num'>{e(fmt_value('delta', r['delta']))}</td>"
            f"<td>{_interval(r)}</td><td>{e(_verdict(r))}</td>"
            f"<td>{e(r['rule'])}</td><td>{'<span class=ok>ok</span>' if r['ok'] else '<span class=fail>FAIL</span>'}</td></tr>"
            for r in probe.get("gate", [])
        )
        level = f"{probe.get('confidence', 0.95):.0%}"
        head = f"<tr><th>metric</th><th>baseline</th><th>candidate</th><th>Δ</th><th>{level} interval of Δ</th><th>verdict</th><th>rule</th><th></th></tr>"
        return f"<p>{verdict} (baseline: {e(str(probe.get('baseline_from', '')))})</p><table>{head}{rows}</table>"
    if kind == "verify" and (step_dir / "report/verify.json").is_file():
        report = json.loads((step_dir / "report/verify.json").read_text())
        verdict = {
            "ok": "<span class='ok'>the export is sound and within its quantization budget</span>",
            "broken": "<span class='fail'>the export is broken (not quantization cost)</span>",
            "cost": "<span class='fail'>the export is sound, but quantization costs more than the budget allows</span>",
        }.get(report.get("verdict", ""), "<span class='ok'>passed</span>" if report.get("passed") else "<span class='fail'>failed</span>")
        integrity = "".join(
            f"<tr><td>{e(c['check'])}</td><td>{'—' if c['ok'] is None else '<span class=ok>ok</span>' if c['ok'] else '<span class=fail>BROKEN</span>'}</td>"
            f"<td>{e(c['evidence'])}</td></tr>"
            for c in report.get("integrity", {}).get("checks", [])
        )
        if integrity:
            integrity = f"<table><tr><th>is the export broken?</th><th></th><th>evidence</th></tr>{integrity}</table>"
        rows = "".join(
            f"<tr><td>{e(r['metric'])}</td><td class='num'>{e(fmt_value(r['metric'], r['value']))}</td><td>{e(r['rule'])}</td>"
            f"<td>{'<span class=ok>ok</span>' if r['ok'] else '<span class=fail>FAIL</span>'}</td></tr>"
            for r in report.get("checks", [])
        )
        what = f"{report.get('format', '')} {report.get('quant', '')}"
        head = f"<tr><th>what does {e(str(report.get('quant', '')))} cost this model?</th><th>value</th><th>budget</th><th></th></tr>"
        return f"<p>{verdict}: {e(what)}</p>{integrity}<table>{head}{rows}</table>"
    return ""


def _interval(row: dict[str, Any]) -> str:
    """The interval of a difference as text and an error bar on a -1..1 axis with 0 marked (the verdict at a glance)."""
    if not row.get("ci"):
        return "<span class='dim'>—</span>"
    low, high = row["ci"]
    span = max(1.0, abs(low), abs(high))

    def x(v: float) -> float:
        return round(60 + 55 * v / span, 1)

    color = {"improved": "#2e7d32", "regressed": "#c62828"}.get(row.get("verdict") or "", "#757575")
    bar = (
        f"<svg width='120' height='14' role='img' aria-label='interval {low:+.3f} to {high:+.3f}'>"
        f"<line x1='60' y1='1' x2='60' y2='13' stroke='#bbb'/><line x1='{x(low)}' y1='7' x2='{x(high)}' y2='7' stroke='{color}' stroke-width='2'/>"
        f"<line x1='{x(low)}' y1='3' x2='{x(low)}' y2='11' stroke='{color}'/><line x1='{x(high)}' y1='3' x2='{x(high)}' y2='11' stroke='{color}'/>"
        f"<circle cx='{x(row['delta'] or 0)}' cy='7' r='2.5' fill='{color}'/></svg>"
    )
    return f"{bar} <span class='num'>[{low:+.3f}, {high:+.3f}]</span>"


def _verdict(row: dict[str, Any]) -> str:
    if not row.get("verdict"):
        return "—"
    if row.get("method") == "exact":
        return f"{row['verdict']} ({row['gained']} gained, {row['lost']} lost of {row['n']} tasks)"
    return f"{row['verdict']} ({row['n']} tasks)"


def _decontamination(found: dict[str, Any] | None) -> str:
    """A train step's inputs against the recipe's held-out sets: per source, the rows that overlap and what became of them."""
    if not found:
        return ""
    e = html.escape
    checked = ", ".join(f"{s['label']} ({s['items']:,} items)" for s in found.get("held_out", []) if s.get("checked")) or "none readable"
    unchecked = [f"{s['label']}: {s.get('why', '')}" for s in found.get("held_out", []) if not s.get("checked")]
    overlapping = sum(s["overlapping"] for s in found.get("sources", []))
    verdict = "<span class='ok'>no overlap</span>" if not overlapping else f"<span class='fail'>{overlapping:,} rows overlap</span>"
    head = f"<p>decontamination ({e(str(found.get('mode')))}, {found.get('n')}-grams): {verdict} against {e(checked)}"
    head += "".join(f"<br><span class='dim'>not checked: {e(u)}</span>" for u in unchecked) + "</p>"
    rows = []
    for src in found.get("sources", []):
        sets = ", ".join(f"{k} ({v:,})" for k, v in sorted(src.get("by_held_out", {}).items())) or "—"
        examples = "<br>".join(
            f"row {x['row']} (id {e(x['id'])}) ~ {e(x['held_out'])} {e(x['item'])}, {e(x['how'])}: <code>{e(x['words'])}</code>"
            for x in src.get("examples", [])
        )
        dropped = f"{src['dropped']:,}" if "dropped" in src else "—"
        rows.append(
            f"<tr><td>{e(src['source'])}</td><td class='num'>{src['rows']:,}</td><td class='num'>{src['overlapping']:,}</td>"
            f"<td class='num'>{dropped}</td><td>{e(sets)}</td><td>{examples}</td></tr>"
        )
    table = "<tr><th>source</th><th>rows</th><th>overlapping</th><th>dropped</th><th>held-out sets</th><th>examples</th></tr>"
    return head + f"<table>{table}{''.join(rows)}</table>"


def _step_section(run_dir: Path, sid: str, step: dict[str, Any]) -> str:
    e = html.escape
    step_dir = run_dir / "steps" / sid
    parts = [f"<h2 id='step-{e(sid)}'>{e(sid)} <small class='dim'>{e(step['kind'])}</small> {_badge(step.get('state', ''))}</h2>"]
    if step.get("error"):
        parts.append(f"<pre class='err'>{e(str(step['error'])[:2000])}</pre>")
    links = [f"<a href='logs/{e(sid)}.log'>log</a>"] if (run_dir / "logs" / f"{sid}.log").is_file() else []
    for name, out in (step.get("outputs") or {}).items():
        links.append(
            f"<a href='steps/{e(sid)}/{e(out['path'].rsplit('/', 1)[-1])}'>{e(name)}</a> <span class='dim'>({e(out['type'])}, {e(out['sha256'][:12])})</span>"
        )
    if step.get("waited_for"):
        links.append(f"<span class='dim'>computed by {e(step['waited_for'])} while this run waited</span>")
    if links:
        parts.append("<p class='links'>" + " ".join(links) + "</p>")
    parts.append(_verdicts(step_dir, step["kind"]))
    if step["kind"] == "train":
        from halo_pipeline.views import train_data

        parts.append(train_data.render(step_dir))  # its dataset checks and first examples, token by token
    parts.append(_decontamination(step.get("decontamination")))
    metrics = _flat(step.get("metrics") or {})
    if metrics:
        rows = "".join(f"<tr><td>{e(k)}</td><td class='num'>{e(fmt_value(k, v))}</td></tr>" for k, v in sorted(metrics.items()))
        parts.append(f"<details><summary>{len(metrics)} metrics</summary><table>{rows}</table></details>")
    plots = sorted(step_dir.glob("*.png")) + sorted(step_dir.glob("*/*.png")) if step_dir.is_dir() else []
    if plots:
        parts.append(
            "<div class='plots'>"
            + "".join(f"<img src='steps/{e(sid)}/{e(str(p.relative_to(step_dir)))}' alt='{e(sid)}: {e(p.stem)}'>" for p in plots)
            + "</div>"
        )
    return "\n".join(p for p in parts if p)


def _run_order(steps: dict[str, Any]) -> dict[str, Any]:
    """Steps in the order they run (the manifest keeps them sorted by id)."""
    from halo_pipeline.engine.graph import CycleError, topo_order

    try:
        order = topo_order({sid: step.get("needs") or [] for sid, step in steps.items()})
    except CycleError:
        return steps
    return {sid: steps[sid] for sid in order}


def _results(run_dir: Path, manifest: dict[str, Any]) -> str:
    """The results first: each probe's base-vs-tuned table (the rows `halo-pipeline runs results` prints)."""
    from halo_pipeline.views.results import NAMES, metric_rows, probe_reports

    e = html.escape
    parts = []
    for sid, probe in probe_reports(run_dir, manifest).items():
        level = f"{probe.get('confidence', 0.95):.0%}"
        rows = "".join(
            f"<tr><td>{e(NAMES.get(r['metric'], r['metric']))}</td><td class='num'>{e(fmt_value(r['metric'], r['baseline']))}</td>"
            f"<td class='num'>{e(fmt_value(r['metric'], r['candidate']))}</td><td class='num'>{e(fmt_value('delta', r['delta']))}</td>"
            f"<td>{_interval(r)}</td><td>{e(_verdict(r))}</td></tr>"
            for r in metric_rows(probe)
        )
        head = f"<tr><th>metric</th><th>base</th><th>tuned</th><th>Δ</th><th>{level} interval of Δ</th><th>verdict</th></tr>"
        tasks = (probe.get("candidate") or {}).get("tasks")
        parts.append(
            f"<h2>Results: {e(sid)}</h2><p class='meta'>{e(str(tasks))} held-out tasks, base vs tuned</p><table>{head}{rows}</table>"
        )
    return "".join(parts)


def render(run_dir: Path, manifest: dict[str, Any]) -> str:
    e = html.escape
    state = str(manifest.get("state", ""))
    git = manifest.get("git") or {}
    commit = (git.get("commit") or "")[:10] + ("+dirty" if git.get("dirty") else "") if git.get("commit") else "not a git checkout"
    prefect = (manifest.get("prefect") or {}).get("ui_url")
    links = ["<a href='config.yaml'>resolved config</a>", "<a href='replay.json'>manifest</a>"]
    if prefect:
        links.insert(0, f"<a href='{e(prefect)}'>Prefect flow run</a>")
    steps = _run_order(manifest.get("steps", {}))
    counts: dict[str, int] = {}
    for step in steps.values():
        counts[step.get("state", "")] = counts.get(step.get("state", ""), 0) + 1
    head = [
        "<!doctype html><html lang='en'><meta charset='utf-8'><meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>{e(str(manifest['name']))} — halo-pipeline run</title><style>{CSS}</style>",
        f"<h1>{e(str(manifest['name']))} {_badge(state)}</h1>",
        f"<p class='meta'><code>{e(' '.join(manifest.get('command') or []))}</code></p>",
        f"<p class='meta'>overrides: <code>{e(' '.join(manifest.get('overrides') or []) or 'none')}</code> · git: <code>{e(commit)}</code></p>",
        "<p class='meta'>" + " · ".join(f"{e(k)}=<b>{e(str(v))}</b>" for k, v in sorted((manifest.get("groups") or {}).items())) + "</p>",
        f"<p class='meta'>{e(_when(manifest.get('started')))} · {e(fmt_seconds(manifest.get('seconds')))} · "
        + ", ".join(f"{n} {e(s)}" for s, n in sorted(counts.items()))
        + (f" · objective <b>{e(fmt_value('objective', manifest['objective']))}</b>" if manifest.get("objective") is not None else "")
        + "</p>",
        "<p class='links'>" + " ".join(links) + "</p>",
        _results(run_dir, manifest),
        "<table class='steps'><tr><th>step</th><th>kind</th><th>state</th><th>time</th><th>result</th></tr>",
        *(_step_row(sid, step) for sid, step in steps.items()),
        "</table>",
    ]
    sections = [_step_section(run_dir, sid, step) for sid, step in steps.items() if step.get("state") not in ("not-selected",)]
    return "\n".join(head + sections) + "\n</html>\n"


def write_report(run_dir: Path, manifest: dict[str, Any]) -> Path:
    path = run_dir / "report.html"
    atomic_write_text(path, render(run_dir, manifest))
    return path
