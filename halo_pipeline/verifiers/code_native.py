"""The compiled-language code verifiers: gcc, clang (C and C++), rust, and execution (any language, on inputs).

A sample runs in one sandboxed run, its compiles included, under the sample's limits (memory,
processes, files, output; the compile gets `compile_timeout_s`): the binary and every output stay
in the sandbox, and what comes back to the pipeline is a capped record.

- `test` statements (`CHECK(cond)`, `check!(cond)`): a pair of processes. The solution's program
  (its text in its own unit/crate, and a dispatcher) runs in the candidate; the tests' program
  (the tests in their own unit/crate against declarations of the entry points, and stubs that
  call the candidate with plain data) runs in the driver, which counts the check sites and writes
  the record. No macro, `static`, pragma, operator, attribute, trait or constant of the solution is
  in the tests' program, and no byte of the tests is in the solution's process
  (`native_sources.py`, `_harness_native.py`). A sample whose entry points cannot cross between
  the processes (a struct, a template) is refused with the reason.
- I/O cases (`tests: [{input, output}]`): the program runs on each input in the sandbox; the
  pipeline compares the captured stdout with the expected output, which never enters it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

import halo_pipeline.sandbox as sbx
from halo_pipeline.verifiers import VerifyResult, native, native_sources, register_verifier
from halo_pipeline.verifiers.code import (
    HARNESSES,
    CompareSettings,
    _details,
    _need_sandbox,
    _reachable,
    _refuse,
    _why_no_record,
    extract_code,
    io_cases,
    output_matches,
)
from halo_pipeline.verifiers.code_python import run_python_cases

_FENCE_TAGS = {"python": ("python", "py"), "c": ("c",), "cpp": ("cpp", "c++", "cc"), "rust": ("rust", "rs")}
_DEFAULT_FLAGS = {"c": ["-O1", "-std=c11"], "cpp": ["-O1", "-std=c++17"], "rust": ["-C", "opt-level=1"]}
RESULT_BUDGET = 768 << 10  # what all of a sample's I/O cases may send back together (the sandbox keeps 1 MiB of a result)
COMPILER_MEMORY_MB = 2048  # compiled languages' default memory_mb: the compilers run inside the sample's budget


def _compile_limits(settings: Any, runs_s: float = 0.0) -> sbx.Limits:
    """The limits of a compiled sample's run: the sample's own memory budget and output cap hold its
    compiles too (`Limits.for_compile`: the compile's time, room for a compiler's processes and files),
    with time for the compile and then `runs_s` of programs; each program the run starts gets the
    sample's `cpu_s` and `file_size_mb` back (`_harness_native`)."""
    limits: sbx.Limits = settings.limits()
    return limits.for_compile(float(settings.compile_timeout_s) + (runs_s or limits.timeout_s) + 2.0)


def _verify_program(settings: Any, language: str, compiler: str, sample: Mapping[str, Any], credit: float) -> VerifyResult:
    code = extract_code(str(sample.get("completion") or ""), _FENCE_TAGS[language])
    details = _details(settings)
    cases = io_cases(sample)
    if settings.compare == "regex":
        for _, pattern in cases:
            try:
                re.compile(pattern.strip())
            except (re.error, RecursionError, OverflowError) as exc:
                return VerifyResult(0.0, False, details, f"the sample's expected output is not a valid regex: {exc}")
    if language == "python":
        if not cases:
            return VerifyResult(0.0, False, details, "no test cases (tests: [{input, output}] or expected_output)")
        passed, failures = run_python_cases(settings, code, cases, lambda got, want: output_matches(settings, got, want))
        details.update(passed=passed, total=len(cases), failures=failures)
        return VerifyResult(passed / len(cases), passed == len(cases), details)
    try:
        compiler = native.rust_compiler() if language == "rust" else compiler
        if sample.get("test"):
            return _verify_tests(settings, language, compiler, code, sample, credit, details)
        return _verify_cases(settings, language, compiler, code, cases, credit, details)
    except native.Refused as exc:
        return VerifyResult(0.0, False, details, f"the sample cannot be run: {exc}")
    except (FileNotFoundError, subprocess.SubprocessError, sbx.SandboxUnavailable) as exc:
        return VerifyResult(0.0, False, details, str(exc))


def _run(settings: Any, language: str, runs_s: float = 0.0, **how: Any) -> sbx.RunResult:
    binds = (native.rust_sysroot(),) if language == "rust" else ()
    return sbx.run(limits=_compile_limits(settings, runs_s), mode=settings.sandbox, modules=HARNESSES, ro_binds=binds, **how)


def _common(settings: Any) -> dict[str, Any]:
    return {
        "compile_timeout_s": float(settings.compile_timeout_s),
        "timeout_s": float(settings.timeout_s),
        "cpu_s": int(settings.cpu_s),
        "file_size_mb": int(settings.file_size_mb),
    }


def _records(run: sbx.RunResult) -> list[dict[str, Any]]:
    found = []
    for line in run.result.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            found.append(record)
    return found


def _not_built(record: dict[str, Any], details: dict[str, Any]) -> VerifyResult:
    details["compiler_errors"] = [str(x) for x in record.get("compiler_errors", [])][:20]
    killed = next((line for line in details["compiler_errors"] if line.startswith(("killed by", "the build ran past"))), None)
    return VerifyResult(0.0, False, details, f"compilation failed{': ' + killed if killed else ''}")


@dataclass(frozen=True)
class Built:
    """A program of ours built in the sandbox: its bytes (base64), or the compiler's errors, or neither
    (it could not come back: too large, or the build was stopped; the pair then builds it itself)."""

    binary: str | None = None
    errors: list[str] | None = None


class Builds:
    """Programs of ours built once and reused: a task's tests' program (GRPO verifies many samples of
    each task, at once) and the wire's object per compiler and flags. Keyed by the hash of everything
    a build is made from; one build of a key at a time (the samples that need it meanwhile wait for
    it); least recently used out first, within a byte budget. Never the solution's text: these are
    the task's and ours."""

    def __init__(self, budget: int = 64 << 20):
        self.budget, self.lock = budget, threading.Lock()
        self.items: OrderedDict[str, Built] = OrderedDict()
        self.pending: dict[str, Future[Built]] = {}

    def get(self, key: str, build: Callable[[], tuple[Built, bool]]) -> Built:
        """The built program for `key`; `build()` gives (built, keep) and runs once per key at a time."""
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
            pending = self.pending.get(key)
            if pending is None:
                self.pending[key] = mine = Future[Built]()
        if pending is not None:
            return pending.result()
        try:
            built, keep = build()
        except BaseException as exc:
            with self.lock:
                del self.pending[key]
            mine.set_exception(exc)
            raise
        with self.lock:
            del self.pending[key]
            if keep:
                self.items[key] = built
                while sum(len(b.binary or "") for b in self.items.values()) > self.budget:
                    self.items.popitem(last=False)
        mine.set_result(built)
        return built

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


TESTS_PROGRAMS = Builds()  # a task's tests' program
WIRE_OBJECTS = Builds(8 << 20)  # the wire's object, per compiler and flags


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _build_args(side: dict[str, Any]) -> dict[str, Any]:
    return {"files": side["files"], "build": side["build"], "binary": side["binary"], "binary_files": side.get("binary_files")}


def _built(
    settings: Any, language: str, files: dict[str, str], build: list[list[str]], binary: str, binary_files: dict[str, str] | None = None
) -> Callable[[], tuple[Built, bool]]:
    """A build run of one of our programs: (what came back, whether to keep it)."""

    def run() -> tuple[Built, bool]:
        args = {"files": files, "binary_files": binary_files, "build": build, "binary": binary, "return_binary": True, **_common(settings)}
        records = _records(_run(settings, language, role="harness_native:build", args=args, result=True))
        if not records:
            return Built(), False
        record = records[0]
        if record.get("compiled"):
            return Built(binary=record.get("binary")), True
        errors = [str(x) for x in record.get("compiler_errors", [])][:20]
        stopped = any(line.startswith(("killed by", "the build ran past")) for line in errors)
        return (Built(), False) if stopped else (Built(errors=errors), True)

    return run


def _wire_object(settings: Any, language: str, compiler: str) -> str | None:
    """The wire's code built once for this compiler and flags (C, C++: an object; Rust: an rlib), or None."""
    files, build, binary = native_sources.wire_build(language, compiler, list(settings.flags))
    return WIRE_OBJECTS.get(_key(files, build), _built(settings, language, files, build, binary)).binary


def _verify_tests(
    settings: Any, language: str, compiler: str, code: str, sample: Mapping[str, Any], credit: float, details: dict[str, Any]
) -> VerifyResult:
    """`test` statements: the solution's program and the tests' program, a pair joined by plain data."""
    prompt = str(sample.get("prompt") or "")
    plan = native_sources.plan(language, compiler, list(settings.flags), code, prompt, str(sample["test"]), sample.get("entry_point"))
    wire = _wire_object(settings, language, compiler)
    tests_side = native_sources.with_wire(plan.driver, language, wire) if wire and language == "rust" else plan.driver
    tests = TESTS_PROGRAMS.get(_key(plan.driver["files"], plan.driver["build"]), _built(settings, language, **_build_args(tests_side)))
    if tests.errors is not None:
        details["compiler_errors"] = tests.errors
        return VerifyResult(0.0, False, details, "the tests do not compile against the entry points' declarations")
    driver = {**plan.driver, **_common(settings)}
    if tests.binary is not None:
        driver.update(prebuilt=tests.binary, files={}, build=[])
    candidate = {**(native_sources.with_wire(plan.candidate, language, wire) if wire else plan.candidate), **_common(settings)}
    run = _run(
        settings, language, pair=("harness_native:driver", "harness_native:candidate"), args={"driver": driver, "candidate": candidate}
    )
    details["wall_s"] = round(run.wall_s, 3)
    records = _records(run)
    if not records:
        why = "the tests ran past their deadline" if run.timed_out else "the tests did not report: " + _why_no_record(run)
        return VerifyResult(0.0, False, details, why)
    record = records[-1]
    if record.get("error"):
        return VerifyResult(0.0, False, details, str(record["error"]))
    if not record.get("compiled"):
        return _not_built(record, details)
    if record.get("tests_error") is not None:
        details["compiler_errors"] = [str(x) for x in record["tests_error"]][:20]
        return VerifyResult(0.0, False, details, "the tests do not compile against the entry points' declarations")
    total, passed = int(record.get("total", 0)), int(record.get("passed", 0))
    failures = [
        {**f, "source": plan.sources[f["check"]]} for f in record.get("failures", []) if 0 <= f.get("check", -1) < len(plan.sources)
    ]
    details.update(passed=passed, total=total, failures=failures)
    if record.get("stopped"):
        details["stopped"] = record["stopped"]
    if total != len(plan.sources):
        return VerifyResult(credit, False, details, "the tests' program reported another number of checks")
    return VerifyResult(credit + (1.0 - credit) * passed / total, passed == total, details)


def _verify_cases(
    settings: Any, language: str, compiler: str, code: str, cases: list[tuple[str, str]], credit: float, details: dict[str, Any]
) -> VerifyResult:
    """I/O cases (or, with none, a compile): run in the sandbox, judged here."""
    if language == "rust":
        files = {"main.rs": code}
        build = [[compiler, "--edition", "2021", *settings.flags, "-o", "prog", "main.rs"]]
    else:
        ext = "c" if language == "c" else "cc"
        files = {f"main.{ext}": code}
        build = [[compiler, *settings.flags, f"main.{ext}", "-o", "prog", "-lm"]]
    cap = max(1024, min(int(settings.output_kb) << 10, RESULT_BUDGET // max(1, len(cases))))
    args = {
        "files": files,
        "build": build,
        "binary": "prog",
        "inputs": [stdin for stdin, _ in cases],
        "output_cap": cap,
        **_common(settings),
    }
    if cases:
        run = _run(settings, language, role="harness_native:cases", args=args, result=True, runs_s=len(cases) * float(settings.timeout_s))
    else:
        run = _run(settings, language, role="harness_native:build", args=args, result=True)
    details["wall_s"] = round(run.wall_s, 3)
    records = _records(run)
    if not records:
        return VerifyResult(0.0, False, details, "the build did not report: " + _why_no_record(run))
    if not records[0].get("compiled"):
        return _not_built(records[0], details)
    if not cases:
        return VerifyResult(1.0, True, {**details, "compiled": True})
    outputs = {int(r["case"]): r for r in records[1:] if isinstance(r.get("case"), int)}
    passed, failures = 0, list[dict[str, Any]]()
    for i, (_, expected) in enumerate(cases):
        got = outputs.get(i)
        why = "did not run (the run ended first)" if got is None else got.get("why")
        stdout = "" if got is None else str(got.get("stdout", ""))
        if why is None and output_matches(settings, stdout, expected):
            passed += 1
        elif len(failures) < 10:
            failures.append({"case": i, "error": why or "wrong output", "got": stdout[:200], "expected": expected[:200]})
    details.update(passed=passed, total=len(cases), failures=failures)
    return VerifyResult(credit + (1.0 - credit) * passed / len(cases), passed == len(cases), details)


class ExecutionSettings(CompareSettings):
    language: Literal["python", "c", "cpp", "rust"] = Field("python", description="Language of the completion.")
    flags: list[str] | None = Field(None, description="Compiler flags (default per language).")
    compile_timeout_s: float = Field(60.0, gt=0, description="Wall-clock limit for compiling.")


@register_verifier("execution", ExecutionSettings, check=lambda s: _need_sandbox(s) + _need_toolchain(s.language, None, s.sandbox))
def execution(settings: ExecutionSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """Run the completion as a program on each test input; reward = fraction of cases whose stdout matches
    (`tests: [{input, output}]`, or `input` + `expected_output`; compare exact/contains/regex/numeric)."""
    if refused := _refuse(settings):
        return refused
    compiler = shutil.which({"c": "gcc", "cpp": "g++"}.get(settings.language, "")) or ""
    flags = settings.flags if settings.flags is not None else _DEFAULT_FLAGS.get(settings.language, [])
    return _verify_program(settings.model_copy(update={"flags": flags}), settings.language, compiler, sample, 0.0)


class CompiledSettings(CompareSettings):
    language: Literal["c", "cpp"] = Field("c", description="c or cpp.")
    flags: list[str] | None = Field(None, description="Compiler flags (default: -O1 and the language standard).")
    compile_credit: float = Field(0.2, ge=0, le=1, description="Reward for compiling; the rest is the fraction of tests passed.")
    compile_timeout_s: float = Field(60.0, gt=0, description="Wall-clock limit for compiling.")
    memory_mb: int = Field(
        COMPILER_MEMORY_MB, ge=64, description="Memory of the whole run, the compilers' included (the sandbox's budget: docs/verifiers.md)."
    )


def _compiled(driver: dict[str, str]):
    def verify(settings: CompiledSettings, sample: Mapping[str, Any]) -> VerifyResult:
        if refused := _refuse(settings):
            return refused
        flags = settings.flags if settings.flags is not None else _DEFAULT_FLAGS[settings.language]
        compiler = shutil.which(driver[settings.language])
        if compiler is None:
            return VerifyResult(0.0, False, {}, f"compiler '{driver[settings.language]}' is not installed")
        return _verify_program(settings.model_copy(update={"flags": flags}), settings.language, compiler, sample, settings.compile_credit)

    return verify


_COMPILED_DOC = (
    "Compile the completion{lang}, then run its tests: `test` holds statements using CHECK(cond), run in a process "
    "of their own that calls the solution's entry points with plain data, or `tests: [{{input, output}}]` compare stdout. "
    "Reward = compile_credit + (1 - compile_credit) x fraction passed; 1.0 for a clean compile when the sample has no tests."
)

gcc = register_verifier("gcc", CompiledSettings, check=lambda s: _need_sandbox(s) + _need_toolchain(s.language, "gcc", s.sandbox))(
    _compiled({"c": "gcc", "cpp": "g++"})
)
gcc.__doc__ = _COMPILED_DOC.format(lang=" with gcc/g++")
clang = register_verifier("clang", CompiledSettings, check=lambda s: _need_sandbox(s) + _need_toolchain(s.language, "clang", s.sandbox))(
    _compiled({"c": "clang", "cpp": "clang++"})
)
clang.__doc__ = _COMPILED_DOC.format(lang=" with clang/clang++")


class RustSettings(CompareSettings):
    flags: list[str] = Field(["-C", "opt-level=1"], description="rustc flags.")
    compile_credit: float = Field(0.2, ge=0, le=1, description="Reward for compiling; the rest is the fraction of tests passed.")
    compile_timeout_s: float = Field(120.0, gt=0, description="Wall-clock limit for compiling.")
    memory_mb: int = Field(
        COMPILER_MEMORY_MB, ge=64, description="Memory of the whole run, the compilers' included (the sandbox's budget: docs/verifiers.md)."
    )


@register_verifier("rust", RustSettings, check=lambda s: _need_sandbox(s) + _need_toolchain("rust", None, s.sandbox))
def rust(settings: RustSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """Compile the completion with rustc, then run its tests: `test` holds statements using check!(cond) (a panic
    fails that check only), run in a process of their own that calls the solution's entry points with plain data,
    or `tests: [{input, output}]` compare stdout. Reward = compile_credit + (1 - compile_credit) x fraction passed."""
    if refused := _refuse(settings):
        return refused
    return _verify_program(settings, "rust", "", sample, settings.compile_credit)


def _need_toolchain(language: str, family: str | None, mode: str | None = None) -> list[str]:
    if language == "python":
        return []
    if language == "rust":
        try:
            path = native.rust_sysroot()
        except (FileNotFoundError, subprocess.SubprocessError) as exc:
            return [f"{exc}: install Rust (rustup, or the distribution's rustc package)"]
        return _reachable("rustc", path, mode)
    compiler = {("c", "gcc"): "gcc", ("cpp", "gcc"): "g++", ("c", "clang"): "clang", ("cpp", "clang"): "clang++"}
    name = compiler.get((language, family or "gcc"), "gcc")
    found = shutil.which(name)
    if found is None:
        package = "clang" if "clang" in name else ("g++" if name == "g++" else "gcc")
        return [f"compiler '{name}' is not installed (Debian/Ubuntu: apt-get install {package})"]
    return _reachable(name, found, mode)
