"""Engine benchmark: a 9-step recipe of cheap steps (50 ms each), run through the real CLI.

Measures, in one run on this machine:
- wall time of the first run and of a fully cached rerun, both with a warm local Prefect server;
- the engine's own overhead per step: the flow's wall time minus the steps' own time, over 9;
- start-up to the first step's start, with a warm reusable server and with Prefect's default
  temporary per-process server (HALO_PIPELINE_LOCAL_SERVER=0).

Usage: python benchmarks/engine.py [--repeat 3]   (prints a markdown table and writes JSON)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = 9
RECIPE = "# bench.yaml — run: halo-pipeline run bench.yaml\nname: bench\nsteps:\n" + "".join(
    f"  s{i}:\n    uses: cheap_steps:work\n    with: {{seconds: 0.05, tag: '{{tag}}'}}\n"
    + (f"    inputs: {{dataset: s{i - 1}.dataset}}\n" if i else "")
    for i in range(STEPS)
)


def run(project: Path, tag: str, env: dict[str, str]) -> tuple[float, dict]:
    t0 = time.time()
    out = subprocess.run(
        [str(Path(sys.executable).parent / "halo-pipeline"), "run", "bench.yaml", "-q"],
        cwd=project, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.time() - t0
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    manifest = json.loads((Path(out.stdout.strip().splitlines()[-1]) / "replay.json").read_text())
    manifest["_t0"] = t0
    return wall, manifest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default="outputs/bench-engine.json")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="halo-bench-"))
    home = tmp / "home"
    base_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    base_env.update(PYTHONPATH=str(HERE), HALO_PIPELINE_HOME=str(home), PREFECT_HOME=str(tmp / "prefect"), OMP_NUM_THREADS="1")
    results: dict[str, list[float]] = {k: [] for k in ("first", "cached", "overhead_ms", "startup_warm", "startup_ephemeral")}
    try:
        for r in range(args.repeat):
            project = tmp / f"p{r}"
            project.mkdir()
            (project / "bench.yaml").write_text(RECIPE.replace("{tag}", f"r{r}"))
            env = {**base_env, "HALO_PIPELINE_CACHE": str(project / "cache")}
            if r == 0:
                run(project, "warmup", env)  # starts the reusable server (not measured)
                (project / "bench.yaml").write_text(RECIPE.replace("{tag}", "r0b"))
            first, m1 = run(project, "first", env)
            cached, m2 = run(project, "cached", env)
            assert {s["state"] for s in m1["steps"].values()} == {"ran"}
            assert {s["state"] for s in m2["steps"].values()} == {"cached"}
            own = sum(s["seconds"] for s in m1["steps"].values())
            results["first"].append(first)
            results["cached"].append(cached)
            results["overhead_ms"].append(1000 * (m1["seconds"] - own) / STEPS)
            results["startup_warm"].append(min(s["started"] for s in m1["steps"].values()) - m1["_t0"])
            (project / "bench.yaml").write_text(RECIPE.replace("{tag}", f"e{r}"))
            _, m3 = run(project, "ephemeral", {**env, "HALO_PIPELINE_LOCAL_SERVER": "0"})
            results["startup_ephemeral"].append(min(s["started"] for s in m3["steps"].values()) - m3["_t0"])
    finally:
        subprocess.run(
            [str(Path(sys.executable).parent / "halo-pipeline"), "server", "--stop"], env=base_env, capture_output=True, check=False
        )
    med = {k: statistics.median(v) for k, v in results.items()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"raw": results, "median": med}, indent=2))
    print(f"| measure (median of {args.repeat}) | value |\n|---|---|")
    print(f"| first run, 9 steps x 50 ms, warm server | {med['first']:.2f} s |")
    print(f"| fully cached rerun, warm server | {med['cached']:.2f} s |")
    print(f"| cached rerun / first run | {med['cached'] / med['first']:.2f} |")
    print(f"| engine overhead per step (flow wall - step time) / 9 | {med['overhead_ms']:.0f} ms |")
    print(f"| start-up to first step, warm reusable server | {med['startup_warm']:.2f} s |")
    print(f"| start-up to first step, Prefect temporary server | {med['startup_ephemeral']:.2f} s |")
    print(f"| warm / temporary start-up | {med['startup_warm'] / med['startup_ephemeral']:.2f} |")


if __name__ == "__main__":
    main()
