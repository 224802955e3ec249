"""Runs read back from their manifests: list, show, diff, and the digest comparison of `replay --check`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from halo_pipeline.engine.errors import Issue, RecipeError
from halo_pipeline.engine.manifest import MANIFEST, read


def all_runs(root: Path) -> list[Path]:
    found = [p.parent for p in root.glob(f"*/*/{MANIFEST}")] + [p.parent for p in root.glob(f"*/*/*/{MANIFEST}")]
    return sorted(
        {p for p in found if not any(part.startswith(".") for part in p.relative_to(root).parts)}, key=lambda p: p.stat().st_mtime
    )


def find_run(ref: str, root: Path, recipe: str | None = None) -> Path:
    """A run by its directory, by a unique suffix of its path under `root` (e.g. `demo/2026-11-22_03-00-01`),
    or by a git revision (`HEAD~1`, a tag, a commit): the latest run made at that commit (of `recipe`, by name)."""
    p = Path(ref)
    if (p / MANIFEST).exists():
        return p
    matches = [r for r in all_runs(root) if str(r).endswith(ref.rstrip("/"))]
    if len(matches) == 1:
        return matches[0]
    if not matches and (commit := _git_commit(ref)):
        at = [r for r in all_runs(root) if _made_at(r, commit, recipe)]
        if at:
            return at[-1]  # runs are sorted oldest first
        what = f"of recipe '{recipe}' " if recipe else ""
        raise RecipeError([Issue(f"no run {what}was made at {ref} ({commit[:10]})", hint="runs record the commit they ran at: runs ls")])
    hint = f"{len(matches)} runs match; be more specific" if matches else "see `halo-pipeline runs ls`"
    raise RecipeError([Issue(f"no single run matches '{ref}'", hint=hint)])


def _git_commit(rev: str) -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _made_at(run: Path, commit: str, recipe: str | None) -> bool:
    try:
        m = read(run)
    except RecipeError:
        return False
    return (m.get("git") or {}).get("commit") == commit and (recipe is None or m.get("name") == recipe)


def ls(root: Path, console: Any) -> int:
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("run", "state", "steps", "objective", "gates", "groups", "git"):
        table.add_column(col)
    for run in all_runs(root):
        try:
            m = read(run)
        except RecipeError:
            continue
        states: dict[str, int] = {}
        for s in m["steps"].values():
            states[s["state"]] = states.get(s["state"], 0) + 1
        git = m.get("git", {})
        table.add_row(
            str(run.relative_to(root)) if run.is_relative_to(root) else str(run),
            m.get("state", "?"),
            " ".join(f"{k}:{v}" for k, v in sorted(states.items())),
            "" if m.get("objective") is None else f"{m['objective']:.4g}",
            "\n".join(gates(m)),
            " ".join(f"{k}={v}" for k, v in sorted(m.get("groups", {}).items())),
            f"{(git.get('commit') or '')[:8]}{'+dirty' if git.get('dirty') else ''}",
        )
    console.print(table)
    return 0


def show(run: Path, console: Any) -> int:
    from rich.table import Table

    m = read(run)
    console.print(f"[bold]{m['name']}[/]  {run}  [{m.get('state')}]")
    console.print("command: " + " ".join(m.get("command", [])))
    console.print("groups: " + " ".join(f"{k}={v}" for k, v in sorted(m.get("groups", {}).items())))
    table = Table(box=None, pad_edge=False)
    for col in ("step", "kind", "state", "seconds", "key", "metrics"):
        table.add_column(col, overflow="fold")
    for sid, s in m["steps"].items():
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(flatten(s.get("metrics", {})).items()))
        table.add_row(
            sid, s["kind"], s["state"], _fmt(s.get("seconds", "")), (s.get("cache_key") or "")[:12], metrics or (s.get("error") or "")
        )
    console.print(table)
    return 0


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def diff(a: Path, b: Path, console: Any) -> int:
    from rich.table import Table

    ma, mb = read(a), read(b)
    _recipe_diff(ma, mb, a, b, console)
    ca, cb = flatten(ma["config"]), flatten(mb["config"])
    table = Table(title="config", box=None, pad_edge=False, title_justify="left")
    for col in ("key", str(a.name), str(b.name)):
        table.add_column(col, overflow="fold")
    for key in sorted(set(ca) | set(cb)):
        if ca.get(key, "—") != cb.get(key, "—"):
            table.add_row(key, _fmt(ca.get(key, "—")), _fmt(cb.get(key, "—")))
    console.print(table)
    metrics = Table(title="metrics", box=None, pad_edge=False, title_justify="left")
    for col in ("step.metric", str(a.name), str(b.name), "Δ"):
        metrics.add_column(col)
    fa = {f"{sid}.{k}": v for sid, s in ma["steps"].items() for k, v in flatten(s.get("metrics", {})).items()}
    fb = {f"{sid}.{k}": v for sid, s in mb["steps"].items() for k, v in flatten(s.get("metrics", {})).items()}
    for key in sorted(set(fa) | set(fb)):
        va, vb = fa.get(key), fb.get(key)
        delta = f"{vb - va:+.4g}" if isinstance(va, int | float) and isinstance(vb, int | float) else ""
        metrics.add_row(key, _fmt(va if va is not None else "—"), _fmt(vb if vb is not None else "—"), delta)
    console.print(metrics)
    paired = paired_rows(ma, mb)
    if paired:
        table = Table(title=f"paired per task ({b.name} vs {a.name})", box=None, pad_edge=False, title_justify="left")
        for col in ("step.metric", "tasks", "Δ", "95% interval", "verdict"):
            table.add_column(col)
        for row in paired:
            changed = f" ({row['gained']} gained, {row['lost']} lost)" if row.get("gained") is not None else ""
            interval = f"[{row['low']:+.4g}, {row['high']:+.4g}]"
            table.add_row(row["metric"], str(row["n"]), f"{row['delta']:+.4g}", interval, row["verdict"] + changed)
        console.print(table)
    return 0


def _probe_reports(m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """step id -> its probe.json, for the probe steps whose report is still on disk."""
    found = {}
    for sid, step in m.get("steps", {}).items():
        path = (step.get("outputs") or {}).get("report", {}).get("path")
        if step.get("kind") == "probe" and path and (Path(path) / "probe.json").is_file():
            try:
                found[sid] = json.loads((Path(path) / "probe.json").read_text())
            except ValueError:
                continue
    return found


def gates(m: dict[str, Any]) -> list[str]:
    """One line per gated probe metric: its verdict and interval (what `runs ls` shows)."""
    lines = []
    for sid, report in _probe_reports(m).items():
        for row in report.get("gate", []):
            if not row.get("rule"):
                continue
            ci = f" [{row['ci'][0]:+.2f}, {row['ci'][1]:+.2f}]" if row.get("ci") else ""
            if row.get("method") == "exact" and not row.get("gained") and not row.get("lost"):
                ci = f" (no task of {row.get('n')} changed)"
            lines.append(f"{sid} {row['metric']}: {'ok' if row['ok'] else 'FAIL'}, {row.get('verdict') or 'no verdict'}{ci}")
    return lines


def _eval_samples(m: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """step id -> `<task>/<metric>` (the step's metric names) -> document id -> that document's score, from each eval
    step's samples.jsonl (numeric per-document scores only: a perplexity is aggregated, not paired)."""
    found: dict[str, dict[str, dict[str, float]]] = {}
    for sid, step in m.get("steps", {}).items():
        path = (step.get("outputs") or {}).get("report", {}).get("path")
        if step.get("kind") != "eval" or not path or not (Path(path) / "samples.jsonl").is_file():
            continue
        names = set(step.get("metrics") or {})
        scores: dict[str, dict[str, float]] = {}
        with open(Path(path) / "samples.jsonl", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                for key, value in row.items():
                    if key in ("task", "doc_id", "doc", "target", "resps", "filter") or not isinstance(value, int | float):
                        continue
                    name = f"{row['task']}/{key}[{row.get('filter')}]"
                    name = name if name in names else f"{row['task']}/{key}"
                    if name in names:
                        scores.setdefault(name, {})[str(row["doc_id"])] = float(value)
        found[sid] = scores
    return found


def paired_rows(ma: dict[str, Any], mb: dict[str, Any]) -> list[dict[str, Any]]:
    """Run B against run A where both scored the same tasks: each probe metric paired per task (the candidates'
    per-task values) and each eval metric per document (samples.jsonl), with its interval and verdict; an eval
    metric without per-document scores (an older run) from lm-eval's standard errors, unpaired:
    difference +- 1.96 sqrt(se_a^2 + se_b^2)."""
    from halo_pipeline.evaluation import stats

    rows: list[dict[str, Any]] = []
    pa, pb = _probe_reports(ma), _probe_reports(mb)
    for sid in sorted(set(pa) & set(pb)):
        ta = pa[sid].get("per_task", {}).get("candidate", {})
        tb = pb[sid].get("per_task", {}).get("candidate", {})
        for metric in sorted(set(ta) & set(tb)):
            common = [t for t in tb[metric] if t in ta[metric]]
            if not common:
                continue
            found = stats.compare([ta[metric][t] for t in common], [tb[metric][t] for t in common])
            rows.append({"metric": f"{sid}.{metric}", "n": found.n, "delta": found.delta, "low": found.low, "high": found.high,
                         "verdict": found.verdict, "gained": found.gained, "lost": found.lost})  # fmt: skip
    ea, eb = _eval_samples(ma), _eval_samples(mb)
    for sid in sorted(set(ea) & set(eb)):
        for metric in sorted(set(ea[sid]) & set(eb[sid])):
            common = [d for d in eb[sid][metric] if d in ea[sid][metric]]
            if not common:
                continue
            found = stats.compare([ea[sid][metric][d] for d in common], [eb[sid][metric][d] for d in common])
            rows.append({"metric": f"{sid}.{metric}", "n": found.n, "delta": found.delta, "low": found.low, "high": found.high,
                         "verdict": found.verdict, "gained": found.gained, "lost": found.lost})  # fmt: skip
    paired = {r["metric"] for r in rows}
    fa = {f"{sid}.{k}": v for sid, s in ma["steps"].items() for k, v in flatten(s.get("metrics", {})).items()}
    fb = {f"{sid}.{k}": v for sid, s in mb["steps"].items() for k, v in flatten(s.get("metrics", {})).items()}
    for key in sorted(k for k in fa if k not in paired):
        se_a, se_b = fa.get(f"{key}_stderr"), fb.get(f"{key}_stderr")
        va, vb = fa.get(key), fb.get(key)
        if not all(isinstance(v, int | float) for v in (se_a, se_b, va, vb)):
            continue
        delta, half = vb - va, 1.96 * (se_a**2 + se_b**2) ** 0.5  # type: ignore[operator]
        rows.append({"metric": key, "n": "lm-eval", "delta": delta, "low": delta - half, "high": delta + half,
                     "verdict": stats.verdict(delta - half, delta + half)})  # fmt: skip
    return rows


def _recipe_diff(ma: dict[str, Any], mb: dict[str, Any], a: Path, b: Path, console: Any) -> None:
    """What changed in the recipe file itself between the two runs (e.g. two commits' versions of it)."""
    import difflib

    ta, tb = (m.get("recipe", {}).get("text") for m in (ma, mb))
    if ta is None or tb is None or ta == tb:
        return
    label = {id(ma): a.name, id(mb): b.name}
    for m in (ma, mb):
        commit = (m.get("git") or {}).get("commit")
        if commit:
            label[id(m)] += f" @ {commit[:10]}{'+dirty' if m['git'].get('dirty') else ''}"
    console.print("[bold]recipe[/]")
    for line in difflib.unified_diff(ta.splitlines(), tb.splitlines(), label[id(ma)], label[id(mb)], lineterm=""):
        style = "green" if line.startswith("+") else "red" if line.startswith("-") else "dim" if line.startswith("@@") else ""
        console.print(f"[{style}]{line}[/]" if style else line, markup=bool(style), highlight=False)


def compare_digests(original: dict[str, Any], new: dict[str, Any], console: Any) -> int:
    """`replay --check`: every deterministic step's outputs must have the digests the original run recorded."""
    from rich.table import Table

    table = Table(title="replay check", box=None, pad_edge=False, title_justify="left")
    for col in ("step", "output", "original", "replayed", "result"):
        table.add_column(col)
    differ = 0
    for sid, step in original["steps"].items():
        replayed = new["steps"].get(sid, {})
        if not step.get("deterministic", True):
            table.add_row(sid, "", "", "", "[dim]not deterministic: not compared[/]")
            continue
        for name, out in step.get("outputs", {}).items():
            got = replayed.get("outputs", {}).get(name, {}).get("sha256")
            same = got == out["sha256"]
            differ += not same
            table.add_row(sid, name, out["sha256"][:12], (got or "missing")[:12], "[green]same[/]" if same else "[red]DIFFERS[/]")
    console.print(table)
    console.print(f"{differ} output(s) differ" if differ else "all deterministic outputs reproduced")
    return 1 if differ else 0


def print_result(result: dict[str, Any], console: Any) -> None:
    states = result["steps"]
    summary = ", ".join(f"{v} {k}" for k, v in sorted(_count(states.values()).items()))
    color = "green" if result["state"] == "completed" else "red"
    console.print(f"[{color}]{result['state']}[/]: {summary}")
    if result.get("objective") is not None:
        console.print(f"objective: {result['objective']}")
    console.print(f"run dir: {result['run_dir']}")
    if result.get("prefect_ui"):
        console.print(f"prefect: {result['prefect_ui']}")
    try:
        m = json.loads((Path(result["run_dir"]) / MANIFEST).read_text())
    except (OSError, ValueError):
        return
    for sid, s in m.get("steps", {}).items():
        if s.get("state") == "failed":
            console.print(f"[red]✘ {sid}[/]: {s.get('error')}  (log: {result['run_dir']}/logs/{sid}.log)")
        found = s.get("decontamination") or {}
        if s.get("state") in ("ran", "cached"):  # training data that holds held-out items, kept (warn) or dropped
            for src in found.get("sources", []):
                if src.get("overlapping"):
                    what = f"{src['dropped']} dropped" if "dropped" in src else "trained on them (decontaminate: warn)"
                    sets = ", ".join(f"{k} ({v})" for k, v in sorted(src.get("by_held_out", {}).items()))
                    line = f"{src['overlapping']} of {src['rows']} rows of {src['source']} overlap {sets}; {what}"
                    console.print(f"[yellow]⚠ {sid}[/]: {line}", soft_wrap=True)
        for held in found.get("held_out", []):
            if not held.get("checked"):
                console.print(
                    f"[yellow]⚠ {sid}[/]: held-out set {held['label']} not checked for contamination: {held.get('why')}", soft_wrap=True
                )
        for name, out in (s.get("outputs") or {}).items():  # a step that made nothing says why, even when the run completed
            if s.get("state") in ("ran", "cached") and (why := (out.get("meta") or {}).get("empty_because")):
                console.print(f"[yellow]⚠ {sid}.{name} has no rows[/]: {why}")
            if s.get("state") in ("ran", "cached") and (command := (out.get("meta") or {}).get("command")):
                console.print(f"{sid}: {command}", markup=False, soft_wrap=True)  # e.g. the serve step: how to serve the artifact


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out
