"""Where a run's time went, read from its replay manifest: the README's timings come from here.

    python benchmarks/run_timings.py outputs/quickstart/<run>            # markdown table
    python benchmarks/run_timings.py outputs/grpo-code/<run> --json

Each step's own seconds (as the manifest records them) and the wall time from the run's start to its
end; what is neither (start-up, waiting on a dependency, hashing and committing outputs) is the
overhead row. Steps that came from the cache are listed with 0 s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def timings(run_dir: Path) -> dict[str, Any]:
    manifest = json.loads((run_dir / "replay.json").read_text())
    steps = manifest["steps"]
    order = sorted(steps, key=lambda s: (steps[s].get("started") or float("inf"), s))
    rows = [
        {"step": sid, "kind": steps[sid]["kind"], "state": steps[sid]["state"], "seconds": round(steps[sid].get("seconds") or 0.0, 1)}
        for sid in order
    ]
    wall = float(manifest.get("seconds") or 0.0)
    busy = _union_seconds([(s.get("started"), s.get("ended")) for s in steps.values() if s["state"] == "ran"])
    return {
        "run": manifest["name"],
        "run_dir": str(run_dir),
        "groups": manifest.get("groups", {}),
        "overrides": manifest.get("overrides", []),
        "state": manifest["state"],
        "wall_s": round(wall, 1),
        "steps": rows,
        "overhead_s": round(max(wall - busy, 0.0), 1),  # time with no step running (parallel steps counted once)
    }


def _union_seconds(spans: list[tuple[float | None, float | None]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted((a, b) for a, b in spans if a is not None and b is not None):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def markdown(t: dict[str, Any]) -> str:
    minutes, seconds = divmod(t["wall_s"], 60)
    lines = [
        f"`{t['run']}` ({', '.join(f'{k}={v}' for k, v in t['groups'].items())}"
        + (f"; {' '.join(t['overrides'])}" if t["overrides"] else "")
        + f"): {t['state']} in **{int(minutes)} min {seconds:.0f} s**",
        "",
        "| step | kind | state | seconds |",
        "|---|---|---|---:|",
    ]
    lines += [f"| {r['step']} | {r['kind']} | {r['state']} | {r['seconds']:.1f} |" for r in t["steps"]]
    lines.append(f"| (no step running: start-up, hand-offs) | | | {t['overhead_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not (args.run_dir / "replay.json").is_file():
        parser.error(f"{args.run_dir} has no replay.json: give a run directory (outputs/<recipe>/<time>)")
    t = timings(args.run_dir)
    print(json.dumps(t, indent=2) if args.json else markdown(t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
