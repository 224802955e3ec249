"""What `halo-pipeline plan` shows: the DAG, each step's resolved params, and whether it is cached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from halo_pipeline.engine.plan import Plan


def cache_status(plan: Plan, no_cache: bool = False) -> dict[str, str]:
    """Per step: 'cached' when its exact cache entry exists and verifies, else 'will run'."""
    from halo_pipeline.engine.execute import cached_result, step_calls

    calls = step_calls(plan, Path("/nonexistent"))
    status: dict[str, str] = {}
    known: dict[str, Any] = {}
    for sid, ps in plan.steps.items():
        data_deps = {r.step for r in ps.inputs.values() if not isinstance(r, Path)}
        if no_cache or not ps.spec.cache:
            status[sid] = "will run (cache off)"
            continue
        if any(d not in known for d in data_deps):
            status[sid] = "will run (upstream will run)"
            continue
        key, hit = cached_result(calls[sid], {d: known[d] for d in data_deps})
        if hit is None:
            status[sid] = f"will run (key {key[:12]})"
        else:
            known[sid] = hit
            status[sid] = f"cached (key {key[:12]})"
    return status


def mermaid(plan: Plan) -> str:
    lines = ["flowchart LR"]
    for sid, ps in plan.steps.items():
        lines.append(f'    {sid}["{sid}<br/><small>{ps.kind.name}</small>"]')
    for sid, ps in plan.steps.items():
        for name, ref in ps.inputs.items():
            if isinstance(ref, Path):
                lines.append(f'    file_{sid}_{name}[("{ref.name}")] --> {sid}')
            else:
                lines.append(f"    {ref.step} -- {ref.output} --> {sid}")
        for need in ps.spec.needs:
            lines.append(f"    {need} -.-> {sid}")
    return "\n".join(lines)


def render_plan(plan: Plan, status: dict[str, str], console: Any) -> None:
    from rich.table import Table

    from halo_pipeline.views.runs import flatten

    c = plan.composed
    console.print(f"[bold]{plan.recipe.name}[/]  {c.recipe_path}")
    if c.choices:
        console.print("groups: " + ", ".join(f"{k}={v}" for k, v in sorted(c.choices.items())))
    if c.overrides:
        console.print("overrides: " + " ".join(c.overrides))
    console.print(f"run dir: {c.run_dir}\n")
    table = Table(box=None, show_lines=False, pad_edge=False)
    for col in ("step", "kind", "inputs", "status", "params"):
        table.add_column(col, overflow="fold")
    for sid, ps in plan.steps.items():
        ins = "\n".join(f"{n} ← {r if not isinstance(r, Path) else 'file:' + str(r)}" for n, r in ps.inputs.items())
        if ps.spec.needs:
            ins += ("\n" if ins else "") + "needs " + ", ".join(ps.spec.needs)
        params = "\n".join(f"{k}={v}" for k, v in flatten(ps.params.model_dump(mode="json", exclude_defaults=True)).items())
        state = status.get(sid, "")
        style = "cyan" if state.startswith("cached") else "yellow"
        table.add_row(sid, ps.kind.name, ins or "—", f"[{style}]{state}[/]", params)
    console.print(table)
    console.print("[dim]params: values that differ from each kind's defaults (all of them: --format json)[/]")
