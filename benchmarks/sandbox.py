"""Sandbox cost per compiled language: a small program compiled and run N times through the sandbox.

Each sample is what the `gcc` and `rust` verifiers do for one completion: a compile (under the
verifiers' compile limits) and one run of the binary, each a sandboxed run of its own. Reports
samples/s and CPU seconds per sample (this process and all it started, as benchmarks/verifiers.py).
A language whose compiler is missing is skipped.

Usage: python benchmarks/sandbox.py [--runs 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from verifiers import cpu_seconds  # noqa: E402  (the same CPU-time measure as the verifier benchmark)

C = '#include <stdio.h>\nint main(void){long s=0; for(int i=0;i<10;i++) s+=i; printf("%ld\\n", s); return 0;}\n'
RUST = 'fn main(){ let v: Vec<u64> = (0..10).collect(); println!("{}", v.iter().sum::<u64>()); }\n'


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import halo_pipeline.sandbox as sbx
    from halo_pipeline.verifiers import native

    limits = sbx.Limits(timeout_s=60, cpu_s=60, memory_mb=4096, processes=64, file_size_mb=256, tmp_mb=1024)

    def c() -> bytes:
        return sbx.run(
            [shutil.which("gcc") or "gcc", "-O1", "main.c", "-o", "prog"], files={"main.c": C}, limits=limits, collect=["prog"]
        ).files["prog"]

    def rust() -> bytes:
        argv = [native.rust_compiler(), "--edition", "2021", "-C", "opt-level=1", "-o", "prog", "main.rs"]
        return sbx.run(argv, files={"main.rs": RUST}, limits=limits, ro_binds=(native.rust_sysroot(),), collect=["prog"]).files["prog"]

    found = {
        "c (gcc -O1)": (c, shutil.which("gcc")),
        "rust (rustc -C opt-level=1)": (rust, shutil.which("rustc") or native.rust_compiler()),
    }
    results: dict[str, object] = {"isolation": sbx.describe(), "runs": args.runs}
    for name, (build, present) in found.items():
        if not present:
            print(f"{name:30s} skipped: no compiler")
            continue
        build()  # warm: the zygote, the compiler's files in the page cache
        started, cpu = time.perf_counter(), cpu_seconds()
        for _ in range(args.runs):
            run = sbx.run(["./prog"], files={"prog": build()}, executable=["prog"])
            assert run.stdout.strip() == "45", run
        seconds = time.perf_counter() - started
        results[name] = {"samples_per_s": round(args.runs / seconds, 2), "cpu_s_per_sample": round((cpu_seconds() - cpu) / args.runs, 3)}
        print(f"{name:30s} {args.runs / seconds:6.2f} samples/s  {(cpu_seconds() - cpu) / args.runs:.3f} CPU s/sample")
    sbx.shutdown()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
