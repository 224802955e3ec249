"""Engine benchmark: a 9-step recipe of cheap steps (50 ms each), run through the real CLI, with DVC's
`dvc repro` on the equivalent 9-stage pipeline as the side-by-side baseline.

Measures, in one run on this machine:
- wall time of the first run, and of fully cached reruns (a new CLI process each time): ours (a real
  Prefect flow run recorded, every task run Cached), ours through Prefect's engine
  (HALO_PIPELINE_CACHED_FAST_PATH=0, the path a run takes when something is to be done), and DVC's
  no-op `dvc repro`; median and p95 of --reruns each;
- the engine's own overhead per step: the flow's wall time minus the steps' own time, over 9;
- start-up to the first step's start, with a warm reusable server and with Prefect's default
  temporary per-process server (HALO_PIPELINE_LOCAL_SERVER=0).

DVC is an optional benchmark dependency that may not resolve with ours: install it apart
(`python -m venv /tmp/dvc && /tmp/dvc/bin/pip install dvc`) and pass `--dvc /tmp/dvc/bin/dvc`
(default: `dvc` on PATH; without it the baseline rows are skipped). Both tools run with Python's
bytecode cache on, as on a user's machine.

Usage: python benchmarks/engine.py [--repeat 3] [--reruns 10] [--dvc PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


DVC_STAGE = """import sys, time
i = int(sys.argv[1])
time.sleep(0.05)
prev = open(f"out{i - 1}.txt").read() if i else ""
open(f"out{i}.txt", "w").write(prev + f"s{i}\\n")
"""


def dvc_project(root: Path, dvc: str, env: dict[str, str]) -> Path:
    """The same 9 chained 50 ms steps as a dvc.yaml pipeline, in its own git repository."""
    root.mkdir(parents=True)
    (root / "stage.py").write_text(DVC_STAGE)
    stages = "".join(
        f"  s{i}:\n    cmd: {sys.executable} stage.py {i}\n    deps: [stage.py{f', out{i - 1}.txt' if i else ''}]\n    outs: [out{i}.txt]\n"
        for i in range(STEPS)
    )
    (root / "dvc.yaml").write_text("stages:\n" + stages)
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.analytics", "false"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return time.perf_counter() - t0


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reruns", type=int, default=10, help="fully cached reruns measured per tool")
    parser.add_argument("--dvc", default=shutil.which("dvc"), help="a dvc executable (installed apart)")
    parser.add_argument("--json", default="outputs/bench-engine.json")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="halo-bench-"))
    home = tmp / "home"
    base_env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PYTHONDONTWRITEBYTECODE")}
    base_env.update(PYTHONPATH=str(HERE), HALO_PIPELINE_HOME=str(home), PREFECT_HOME=str(tmp / "prefect"), OMP_NUM_THREADS="1")
    keys = ("first", "overhead_ms", "startup_warm", "startup_ephemeral")
    results: dict[str, list[float]] = {k: [] for k in keys}
    reruns: dict[str, list[float]] = {"ours": [], "ours_engine": [], "dvc": []}
    halo = [str(Path(sys.executable).parent / "halo-pipeline"), "run", "bench.yaml", "-q"]
    try:
        for r in range(args.repeat):
            project = tmp / f"p{r}"
            project.mkdir()
            (project / "bench.yaml").write_text(RECIPE.replace("{tag}", f"r{r}"))
            env = {**base_env, "HALO_PIPELINE_CACHE": str(project / "cache")}
            if r == 0:
                run(project, "warmup", env)  # starts the reusable server, writes bytecode (not measured)
                (project / "bench.yaml").write_text(RECIPE.replace("{tag}", "r0b"))
            first, m1 = run(project, "first", env)
            _, m2 = run(project, "cached", env)
            assert {s["state"] for s in m1["steps"].values()} == {"ran"}
            assert {s["state"] for s in m2["steps"].values()} == {"cached"}
            own = sum(s["seconds"] for s in m1["steps"].values())
            results["first"].append(first)
            results["overhead_ms"].append(1000 * (m1["seconds"] - own) / STEPS)
            results["startup_warm"].append(min(s["started"] for s in m1["steps"].values()) - m1["_t0"])
            if args.dvc:
                dvc_root = dvc_project(tmp / f"dvc{r}", args.dvc, base_env)
                timed([args.dvc, "repro", "-q"], dvc_root, base_env)  # the first run
            for _ in range(args.reruns):  # interleaved, so that load on the machine hits each tool alike
                reruns["ours"].append(timed(halo, project, env))
                reruns["ours_engine"].append(timed(halo, project, {**env, "HALO_PIPELINE_CACHED_FAST_PATH": "0"}))
                if args.dvc:
                    reruns["dvc"].append(timed([args.dvc, "repro", "-q"], dvc_root, base_env))
            (project / "bench.yaml").write_text(RECIPE.replace("{tag}", f"e{r}"))
            _, m3 = run(project, "ephemeral", {**env, "HALO_PIPELINE_LOCAL_SERVER": "0"})
            results["startup_ephemeral"].append(min(s["started"] for s in m3["steps"].values()) - m3["_t0"])
    finally:
        subprocess.run(
            [str(Path(sys.executable).parent / "halo-pipeline"), "server", "--stop"], env=base_env, capture_output=True, check=False
        )
    med = {k: statistics.median(v) for k, v in results.items()}
    rerun = {k: {"median": statistics.median(v), "p95": p95(v)} for k, v in reruns.items() if v}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"raw": results, "reruns": reruns, "median": med, "rerun": rerun}, indent=2))
    n = len(reruns["ours"])
    print(f"| fully cached rerun, a new process each time ({n} each, interleaved) | median | p95 | p95 / median |\n|---|---|---|---|")
    names = {
        "ours": "halo-pipeline (flow run recorded, tasks Cached)",
        "ours_engine": "halo-pipeline through Prefect's engine",
        "dvc": "`dvc repro` no-op",
    }
    for k, v in rerun.items():
        print(f"| {names[k]} | {v['median']:.2f} s | {v['p95']:.2f} s | {v['p95'] / v['median']:.2f} |")
    if "dvc" in rerun:
        print(f"\n**ours / DVC (median): {rerun['ours']['median'] / rerun['dvc']['median']:.2f}x** (target <= 1.0x)\n")
    print(f"| measure (median of {args.repeat}) | value |\n|---|---|")
    print(f"| first run, 9 steps x 50 ms, warm server | {med['first']:.2f} s |")
    print(f"| engine overhead per step (flow wall - step time) / 9 | {med['overhead_ms']:.0f} ms |")
    print(f"| start-up to first step, warm reusable server | {med['startup_warm']:.2f} s |")
    print(f"| start-up to first step, Prefect temporary server | {med['startup_ephemeral']:.2f} s |")
    print(f"| warm / temporary start-up | {med['startup_warm'] / med['startup_ephemeral']:.2f} |")


if __name__ == "__main__":
    main()
