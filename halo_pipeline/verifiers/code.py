"""Verifiers that run model-written code: python_tests, pytest, execution, gcc, clang, rust.

All of them run each sample in `halo_pipeline.sandbox` (a fresh process per sample, bubblewrap
when available) and only when the verifier's settings say `allow_code_execution: true`. Test
results come from a harness that writes a nonce-tagged record after the tests ran; exit codes
are never trusted.
"""

from __future__ import annotations

import ast
import functools
import json
import marshal
import re
import shutil
import site
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from halo_pipeline import sandbox
from halo_pipeline.verifiers import VerifierSettings, VerifyResult, register_verifier

HARNESS_PYTHON = Path(__file__).with_name("_harness_python.py")
HARNESS_PYTEST = Path(__file__).with_name("_harness_pytest.py")
FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+#-]*)[^\n]*\n(.*?)```", re.DOTALL)


class CodeSettings(VerifierSettings, sandbox.Limits):
    runs_code: ClassVar[bool] = True
    allow_code_execution: bool = Field(
        False, description="Run model-written code (sandboxed). Off unless the recipe says so: validation fails without it."
    )

    def limits(self) -> sandbox.Limits:
        return sandbox.Limits(**{k: getattr(self, k) for k in sandbox.Limits.model_fields})


@functools.cache
def _harness() -> str:
    return HARNESS_PYTHON.read_text()


@functools.cache
def _site_paths() -> list[str]:
    """This environment's site-packages, so sandboxed code can import what is installed (the harness runs with -S)."""
    return [p for p in site.getsitepackages() if Path(p).is_dir()]


def extract_code(text: str, languages: tuple[str, ...] = ()) -> str:
    """The first fenced block (preferring one tagged with a language in `languages`), else the text."""
    blocks = FENCE.findall(text)
    for lang, body in blocks:
        if lang.lower() in languages:
            return body
    return blocks[0][1] if blocks else text


def _refuse(settings: CodeSettings) -> VerifyResult | None:
    if settings.allow_code_execution:
        return None
    return VerifyResult(0.0, False, {}, f"{settings.name} runs model-written code and allow_code_execution is false")


def _record(run: sandbox.RunResult) -> tuple[dict[str, Any] | None, str | None]:
    """The harness's single record (JSON, or a Python literal from the no-import Python harness), or why there is none."""
    if len(run.records) == 1:
        try:
            record = json.loads(run.records[0])
        except json.JSONDecodeError:
            try:
                record = ast.literal_eval(run.records[0])
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return None, "the harness record is unreadable"
        return (record, None) if isinstance(record, dict) else (None, "the harness record is unreadable")
    if len(run.records) > 1:
        return None, "more than one result record (tampering)"
    why = run.killed_reason or f"the program exited (code {run.returncode}) before the tests reported"
    tail = run.stderr.strip().splitlines()[-3:]
    return None, why + (": " + " | ".join(tail) if tail else "")


def _tests_result(record: dict[str, Any] | None, error: str | None, run: sandbox.RunResult, credit: float = 0.0) -> VerifyResult:
    details: dict[str, Any] = {"isolation": sandbox.isolation().name, "wall_s": round(run.wall_s, 3)}
    if record is None:
        return VerifyResult(credit, False, details, error)
    total, passed = int(record.get("total", 0)), int(record.get("passed", 0))
    details.update(passed=passed, total=total)
    if record.get("failures"):
        details["failures"] = record["failures"]
    if record.get("error"):
        return VerifyResult(credit, False, details, str(record["error"]))
    if total == 0:
        return VerifyResult(credit, False, details, "no tests ran")
    fraction = passed / total
    return VerifyResult(credit + (1.0 - credit) * fraction, passed == total, details)


# ---------------------------------------------------------------- python_tests


class PythonTestsSettings(CodeSettings):
    program: Literal["auto", "prompt+completion", "completion"] = Field(
        "auto",
        description="What runs before the tests. auto: the completion alone when it defines the entry point "
        "(after the prompt, for its imports and helpers), else prompt + completion (a HumanEval continuation).",
    )
    plain_results: bool = Field(True, description="Fail results that are not builtin values (an object whose __eq__ always says True).")
    partial_credit: bool = Field(
        True, description="Reward = fraction of tests passed; false: 1 only when all pass (HumanEval's pass/fail)."
    )


def python_program(settings: PythonTestsSettings, sample: Mapping[str, Any]) -> str:
    prompt, completion = str(sample.get("prompt") or ""), str(sample.get("completion") or "")
    code = extract_code(completion, ("python", "py", "python3"))
    entry = sample.get("entry_point")
    if settings.program == "auto":
        defines_entry = bool(entry) and re.search(rf"^\s*def\s+{re.escape(str(entry))}\s*\(", code, re.MULTILINE)
        # a full definition comes after the prompt (its imports/helpers) and wins; otherwise it continues the prompt
        return prompt + "\n\n" + code if defines_entry else prompt + completion
    return code if settings.program == "completion" else prompt + completion


def instrument_tests(test_source: str, check_function: str | None, entry_point: str | None) -> tuple[str, list[str]]:
    """The test code with every test statement wrapped to report its own outcome, and each test's source.

    A test is a statement that asserts something about the solution (`assert True, "..."` lines in
    HumanEval are not): the top-level ones, or those of `check_function`'s body. Other statements
    inside check() are setup; a failing one is skipped so the rest still run. Done here, not in the
    sandbox, so the harness needs no `ast` import.
    """
    tree = ast.parse(test_source)
    if check_function:
        fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == check_function), None)
        if fn is None:
            raise ValueError(f"the test code defines no `{check_function}` function")
        names = {a.arg for a in fn.args.args[:1]} | ({entry_point} if entry_point else set())
        tests = [s for s in fn.body if _is_test(s, names)]
        fn.body = [_wrap(s, tests) for s in fn.body]
    else:
        names = {entry_point} if entry_point else set()
        tests = [s for s in tree.body if _is_test(s, names)]
        tree.body = [_wrap(s, tests) if _has_assert(s) else s for s in tree.body]
    sources = [ast.get_source_segment(test_source, t) or ast.unparse(t) for t in tests]
    return ast.unparse(ast.fix_missing_locations(tree)), [s if len(s) <= 200 else s[:197] + "..." for s in sources]


def _has_assert(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def _is_test(stmt: ast.stmt, names: set[str]) -> bool:
    asserts = [n for n in ast.walk(stmt) if isinstance(n, ast.Assert)]
    if not asserts or all(isinstance(a.test, ast.Constant) for a in asserts):
        return False
    return not names or any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(stmt))


def _call(name: str, *args: int | ast.expr) -> ast.Expr:
    values: list[ast.expr] = [a if isinstance(a, ast.expr) else ast.Constant(a) for a in args]
    return ast.Expr(ast.Call(ast.Name(name, ast.Load()), values, []))


def _wrap(stmt: ast.stmt, tests: list[ast.stmt]) -> ast.stmt:
    """try: begin(k); <test> / except BaseException: fail(k, exc) / else: ok(k)."""
    k = next((i for i, t in enumerate(tests) if t is stmt), None)
    if k is None:
        return ast.Try(body=[stmt], handlers=[_handler(None)], orelse=[], finalbody=[])
    return ast.Try(body=[_call("__halo_begin", k), stmt], handlers=[_handler(k)], orelse=[_call("__halo_ok", k)], finalbody=[])


def _handler(k: int | None) -> ast.ExceptHandler:
    body: list[ast.stmt] = [ast.Pass()] if k is None else [_call("__halo_fail", k, ast.Name("__halo_exc", ast.Load()))]
    return ast.ExceptHandler(type=ast.Name("BaseException", ast.Load()), name="__halo_exc", body=body)


def python_test_spec(sample: Mapping[str, Any]) -> dict[str, Any]:
    """HumanEval (`test` + `entry_point`: check(candidate)), MBPP (`test_list`, `test_setup_code`,
    `test_imports`) or generic (`tests`: assert statements, or `test` code with top-level asserts)."""
    entry = sample.get("entry_point")
    if sample.get("test_list") or isinstance(sample.get("tests"), list):
        lines = [*sample.get("test_imports", []), str(sample.get("test_setup_code") or "")]
        lines += list(sample.get("test_list") or sample.get("tests") or [])
        return {"test_source": "\n".join(lines), "check_function": None, "entry_point": entry}
    test = str(sample.get("test") or sample.get("tests") or "")
    has_check = re.search(r"^def\s+check\s*\(", test, re.MULTILINE) is not None
    return {"test_source": test, "check_function": "check" if has_check and entry else None, "entry_point": entry}


@register_verifier("python_tests", PythonTestsSettings)
def python_tests(settings: PythonTestsSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """Fraction of the task's tests that pass (HumanEval `test`+`entry_point`, MBPP `test_list`, or `tests`);
    sandboxed, one process per sample, result reported by the harness after the tests (never the exit code)."""
    if refused := _refuse(settings):
        return refused
    found = python_test_spec(sample)
    if not found["test_source"].strip():
        return VerifyResult(0.0, False, {}, "sample has no tests (fields: test + entry_point, test_list, or tests)")
    try:
        test_code, sources = instrument_tests(found["test_source"], found["check_function"], found["entry_point"])
    except (SyntaxError, ValueError) as exc:
        return VerifyResult(0.0, False, {}, f"the sample's test code is broken: {exc}")
    spec = {
        "program": python_program(settings, sample),
        "test_code": test_code,
        "tests": len(sources),
        "check_function": found["check_function"],
        "entry_point": found["entry_point"],
        "plain_results": settings.plain_results,
        "site_paths": _site_paths(),
    }
    nonce = sandbox.new_nonce()
    files: dict[str, str | bytes] = {"harness.py": _harness(), "spec.bin": marshal.dumps(spec), ".nonce": nonce}
    run = sandbox.run([sys.executable, "-I", "-S", "harness.py", "{result_fd}"], files=files, limits=settings.limits(), nonce=nonce)
    record, error = _record(run)
    for failure in (record or {}).get("failures", []):
        if isinstance(failure.get("test"), int) and 0 <= failure["test"] < len(sources):
            failure["source"] = sources[failure["test"]]
    result = _tests_result(record, error, run)
    if not settings.partial_credit and not result.passed:
        return VerifyResult(0.0, False, result.details, result.error)
    return result


# ---------------------------------------------------------------- pytest


class PytestSettings(CodeSettings):
    module: str = Field("solution", description="Module name the completion is saved as (tests `import` it).")
    test_file: str | None = Field(None, description="A test file used for every sample (default: the sample's `test` field).")


@register_verifier("pytest", PytestSettings, check=lambda s: _need_module("pytest") + _need_file(s.test_file))
def pytest_verifier(settings: PytestSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """Fraction of pytest tests that pass against the completion saved as `solution.py` (sandboxed)."""
    if refused := _refuse(settings):
        return refused
    test = Path(settings.test_file).read_text() if settings.test_file else str(sample.get("test") or "")
    if not test.strip():
        return VerifyResult(0.0, False, {}, "no tests: give the sample a `test` field or set test_file")
    nonce = sandbox.new_nonce()
    files = {
        "harness.py": HARNESS_PYTEST.read_text(),
        f"{settings.module}.py": extract_code(str(sample.get("completion") or ""), ("python", "py")),
        f"test_{settings.module}.py": test,
        ".nonce": nonce,
    }
    run = sandbox.run([sys.executable, "-I", "harness.py", "{result_fd}"], files=files, limits=settings.limits(), nonce=nonce)
    record, error = _record(run)
    return _tests_result(record, error, run)


# ---------------------------------------------------------------- execution and compiled languages


class CompareSettings(CodeSettings):
    compare: Literal["exact", "contains", "regex", "numeric"] = Field(
        "exact", description="How stdout is compared with the expected output (exact ignores trailing whitespace per line)."
    )
    tolerance: float = Field(1e-6, ge=0, description="numeric: absolute/relative tolerance per number.")


def io_cases(sample: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(stdin, expected stdout) pairs from `tests: [{input, output}]` or `input` + `output`/`expected_output`."""
    tests = sample.get("tests")
    if isinstance(tests, list) and tests and isinstance(tests[0], Mapping):
        return [(str(t.get("input", "")), str(t.get("output", t.get("expected_output", "")))) for t in tests]
    expected = sample.get("expected_output", sample.get("output"))
    return [] if expected is None else [(str(sample.get("input", "")), str(expected))]


def output_matches(settings: CompareSettings, got: str, want: str) -> bool:
    if settings.compare == "exact":
        return [line.rstrip() for line in got.strip().splitlines()] == [line.rstrip() for line in want.strip().splitlines()]
    if settings.compare == "contains":
        return want.strip() in got
    if settings.compare == "regex":
        return re.search(want, got) is not None
    got_numbers, want_numbers = _numbers(got), _numbers(want)
    return len(got_numbers) == len(want_numbers) > 0 and all(
        abs(g - w) <= settings.tolerance * max(1.0, abs(w)) for g, w in zip(got_numbers, want_numbers, strict=True)
    )


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", text)]


class Toolchain:
    """How one language builds (inside the sandbox) and runs."""

    def __init__(self, language: str, compiler: str | None):
        self.language, self.compiler = language, compiler

    def build(self, settings: Any, code: str, test_body: str | None, nonce: str, work: Path) -> tuple[list[str], sandbox.RunResult | None]:
        """Compile when the language needs it; returns the run argv (with `{result_fd}` when tests are in-process)."""
        if self.language == "python":
            (work / "main.py").write_text(code)
            return [sys.executable, "-I", "main.py"], None
        files = _sources(self.language, code, test_body, nonce)
        argv = _compile_argv(self.language, self._compiler_path(), settings.flags, list(files))
        limits = sandbox.Limits(timeout_s=settings.compile_timeout_s, cpu_s=int(settings.compile_timeout_s), memory_mb=4096, processes=64)
        binds = _rust_sysroot_binds() if self.language == "rust" else ()
        compiled = sandbox.run(argv, files=files, limits=limits, workdir=work, ro_binds=binds)
        if compiled.returncode != 0 or not (work / "prog").is_file():
            return [], compiled
        return [str(work / "prog"), "{result_fd}"] if test_body is not None else [str(work / "prog")], compiled

    def _compiler_path(self) -> str:
        if self.language == "rust":
            return str(Path(_rust_sysroot()) / "bin" / "rustc")
        found = shutil.which(self.compiler or "")
        if not found:
            raise FileNotFoundError(f"compiler '{self.compiler}' is not installed")
        return found


C_PRELUDE = """extern int halo_passed__, halo_total__;
#define CHECK(cond) do { halo_total__++; if (cond) halo_passed__++; } while (0)
"""
C_MAIN = """#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
int halo_passed__ = 0, halo_total__ = 0;
void halo_tests__(void);
int main(int argc, char **argv) {
    char nonce[128] = {0};
    int fd = open(".nonce", O_RDONLY);
    if (fd < 0 || argc < 2) return 3;
    ssize_t n = read(fd, nonce, sizeof nonce - 1);
    close(fd);
    unlink(".nonce");
    if (n <= 0) return 3;
    halo_tests__();
    dprintf(atoi(argv[1]), "%s{\\"passed\\": %d, \\"total\\": %d}\\n", nonce, halo_passed__, halo_total__);
    _exit(0);
}
"""
RUST_PRELUDE = """#[allow(dead_code)]
static HALO_PASSED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
#[allow(dead_code)]
static HALO_TOTAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
#[allow(unused_macros)]
macro_rules! check {
    ($cond:expr) => {{
        HALO_TOTAL.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(true) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| $cond)) {
            HALO_PASSED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }};
}
"""
RUST_MAIN = """
fn main() {
    use std::io::Write;
    use std::os::unix::io::FromRawFd;
    let nonce = std::fs::read_to_string(".nonce").expect("nonce");
    std::fs::remove_file(".nonce").expect("nonce");
    let fd: i32 = std::env::args().nth(1).expect("fd").parse().expect("fd");
    std::panic::set_hook(Box::new(|_| {}));
    halo_tests();
    let mut out = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = writeln!(out, "{}{{\\"passed\\": {}, \\"total\\": {}}}", nonce,
        HALO_PASSED.load(std::sync::atomic::Ordering::SeqCst), HALO_TOTAL.load(std::sync::atomic::Ordering::SeqCst));
    std::process::exit(0);
}
"""


def _sources(language: str, code: str, test_body: str | None, nonce: str) -> dict[str, str]:
    if language == "rust":
        if test_body is None:
            return {"main.rs": code}
        code = re.sub(r"\bfn\s+main\s*\(", "fn halo_candidate_main(", code)
        body = RUST_PRELUDE + "#[allow(dead_code)]\n" + code + "\nfn halo_tests() {\n" + test_body + "\n}\n" + RUST_MAIN
        return {"main.rs": body, ".nonce": nonce}
    ext = "c" if language == "c" else "cc"
    if test_body is None:
        return {f"main.{ext}": code}
    solution = C_PRELUDE + code + "\nvoid halo_tests__(void) {\n" + test_body + "\n}\n"
    if language == "cpp":
        solution = solution.replace("void halo_tests__(void)", 'extern "C" void halo_tests__(void)')
        solution = 'extern "C" int halo_passed__, halo_total__;\n' + solution.replace(C_PRELUDE.splitlines()[0] + "\n", "", 1)
        main = C_MAIN.replace("void halo_tests__(void);", 'extern "C" void halo_tests__(void);').replace(
            "int halo_passed__ = 0, halo_total__ = 0;", 'extern "C" { int halo_passed__ = 0, halo_total__ = 0; }'
        )
    else:
        main = C_MAIN
    return {f"solution.{ext}": solution, f"harness.{ext}": main, ".nonce": nonce}


def _compile_argv(language: str, compiler: str, flags: list[str], files: list[str]) -> list[str]:
    sources = [f for f in files if not f.startswith(".")]
    if language == "rust":
        return [compiler, "--edition", "2021", *flags, "-o", "prog", sources[0]]
    if "solution.c" in sources or "solution.cc" in sources:
        solution, harness = sorted(sources, key=lambda f: not f.startswith("solution"))
        # the completion may bring its own main(): rename it in the solution's translation unit only
        return [
            "/bin/sh",
            "-c",
            f'"$0" "$@" -Dmain=halo_candidate_main__ -c {solution} -o solution.o && "$0" "$@" {harness} solution.o -o prog -lm',
            compiler,
            *flags,
        ]
    return [compiler, *flags, *sources, "-o", "prog", "-lm"]


@functools.cache
def _rust_sysroot() -> str:
    rustc = shutil.which("rustc")
    if rustc is None:
        raise FileNotFoundError("rustc is not installed")
    return subprocess.run([rustc, "--print", "sysroot"], capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def _rust_sysroot_binds() -> tuple[str, ...]:
    return (_rust_sysroot(),)


def _run_cases(settings: Any, argv: list[str], cases: list[tuple[str, str]], work: Path) -> tuple[int, list[dict[str, Any]]]:
    passed, failures = 0, list[dict[str, Any]]()
    for i, (stdin, expected) in enumerate(cases):
        (work / "stdin.txt").write_text(stdin)
        run = sandbox.run(argv, limits=settings.limits(), stdin_file="stdin.txt", workdir=work)
        why = run.killed_reason
        if why is None and output_matches(settings, run.stdout, expected):
            passed += 1
        elif len(failures) < 10:
            failures.append({"case": i, "error": why or "wrong output", "got": run.stdout[:200], "expected": expected[:200]})
    return passed, failures


def _verify_program(settings: Any, toolchain: Toolchain, sample: Mapping[str, Any], credit: float) -> VerifyResult:
    code = extract_code(str(sample.get("completion") or ""), _FENCE_TAGS[toolchain.language])
    test_body = sample.get("test") if toolchain.language != "python" else None
    cases = io_cases(sample)
    work = sandbox.make_workdir()
    try:
        nonce = sandbox.new_nonce()
        try:
            argv, compiled = toolchain.build(settings, code, str(test_body) if test_body else None, nonce, work)
        except FileNotFoundError as exc:
            return VerifyResult(0.0, False, {}, str(exc))
        details: dict[str, Any] = {"isolation": sandbox.isolation().name}
        if not argv:
            errors = (compiled.stderr if compiled else "").strip().splitlines()
            details["compiler_errors"] = errors[:20]
            why = compiled.killed_reason if compiled else None
            return VerifyResult(0.0, False, details, f"compilation failed{': ' + why if why else ''}")
        if test_body:
            run = sandbox.run(argv, limits=settings.limits(), nonce=nonce, workdir=work)
            record, error = _record(run)
            return _tests_result(record, error, run, credit)
        if not cases:
            if toolchain.language == "python":
                return VerifyResult(0.0, False, details, "no test cases (tests: [{input, output}] or expected_output)")
            return VerifyResult(1.0, True, {**details, "compiled": True})
        passed, failures = _run_cases(settings, argv, cases, work)
        details.update(passed=passed, total=len(cases), failures=failures)
        return VerifyResult(credit + (1.0 - credit) * passed / len(cases), passed == len(cases), details)
    finally:
        shutil.rmtree(work, ignore_errors=True)


_FENCE_TAGS = {"python": ("python", "py"), "c": ("c",), "cpp": ("cpp", "c++", "cc"), "rust": ("rust", "rs")}
_DEFAULT_FLAGS = {"c": ["-O1", "-std=c11"], "cpp": ["-O1", "-std=c++17"], "rust": ["-C", "opt-level=1"]}


class ExecutionSettings(CompareSettings):
    language: Literal["python", "c", "cpp", "rust"] = Field("python", description="Language of the completion.")
    flags: list[str] | None = Field(None, description="Compiler flags (default per language).")
    compile_timeout_s: float = Field(60.0, gt=0, description="Wall-clock limit for compiling.")


@register_verifier("execution", ExecutionSettings, check=lambda s: _need_toolchain(s.language, None))
def execution(settings: ExecutionSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """Run the completion as a program on each test input; reward = fraction of cases whose stdout matches
    (`tests: [{input, output}]`, or `input` + `expected_output`; compare exact/contains/regex/numeric)."""
    if refused := _refuse(settings):
        return refused
    compiler = {"c": "gcc", "cpp": "g++"}.get(settings.language)
    flags = settings.flags if settings.flags is not None else _DEFAULT_FLAGS.get(settings.language, [])
    return _verify_program(settings.model_copy(update={"flags": flags}), Toolchain(settings.language, compiler), sample, 0.0)


class CompiledSettings(CompareSettings):
    language: Literal["c", "cpp"] = Field("c", description="c or cpp.")
    flags: list[str] | None = Field(None, description="Compiler flags (default: -O1 and the language standard).")
    compile_credit: float = Field(0.2, ge=0, le=1, description="Reward for compiling; the rest is the fraction of tests passed.")
    compile_timeout_s: float = Field(60.0, gt=0, description="Wall-clock limit for compiling.")


def _compiled(driver: dict[str, str]):  # type: ignore[no-untyped-def]
    def verify(settings: CompiledSettings, sample: Mapping[str, Any]) -> VerifyResult:
        if refused := _refuse(settings):
            return refused
        flags = settings.flags if settings.flags is not None else _DEFAULT_FLAGS[settings.language]
        toolchain = Toolchain(settings.language, driver[settings.language])
        return _verify_program(settings.model_copy(update={"flags": flags}), toolchain, sample, settings.compile_credit)

    return verify


_COMPILED_DOC = (
    "Compile the completion{lang}, then run its tests: `test` holds statements using CHECK(cond) (C/C++) or "
    "check!(cond) (Rust), or `tests: [{{input, output}}]` compare stdout. Reward = compile_credit + "
    "(1 - compile_credit) x fraction passed; 1.0 for a clean compile when the sample has no tests."
)

gcc = register_verifier("gcc", CompiledSettings, check=lambda s: _need_toolchain(s.language, "gcc"))(_compiled({"c": "gcc", "cpp": "g++"}))
gcc.__doc__ = _COMPILED_DOC.format(lang=" with gcc/g++")
clang = register_verifier("clang", CompiledSettings, check=lambda s: _need_toolchain(s.language, "clang"))(
    _compiled({"c": "clang", "cpp": "clang++"})
)
clang.__doc__ = _COMPILED_DOC.format(lang=" with clang/clang++")


class RustSettings(CompareSettings):
    flags: list[str] = Field(["-C", "opt-level=1"], description="rustc flags.")
    compile_credit: float = Field(0.2, ge=0, le=1, description="Reward for compiling; the rest is the fraction of tests passed.")
    compile_timeout_s: float = Field(120.0, gt=0, description="Wall-clock limit for compiling.")


@register_verifier("rust", RustSettings, check=lambda s: _need_toolchain("rust", None))
def rust(settings: RustSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """Compile the completion with rustc, then run its tests: `test` holds statements using check!(cond)
    (a panic fails that check only), or `tests: [{input, output}]` compare stdout.
    Reward = compile_credit + (1 - compile_credit) x fraction passed."""
    if refused := _refuse(settings):
        return refused
    return _verify_program(settings, Toolchain("rust", None), sample, settings.compile_credit)


def _need_toolchain(language: str, family: str | None) -> list[str]:
    if language == "python":
        return []
    if language == "rust":
        try:
            _rust_sysroot()
        except (FileNotFoundError, subprocess.SubprocessError) as exc:
            return [f"{exc}: install Rust (rustup, or the distribution's rustc package)"]
        return []
    compiler = {("c", "gcc"): "gcc", ("cpp", "gcc"): "g++", ("c", "clang"): "clang", ("cpp", "clang"): "clang++"}
    name = compiler.get((language, family or "gcc"), "gcc")
    if shutil.which(name) is None:
        package = "clang" if "clang" in name else ("g++" if name == "g++" else "gcc")
        return [f"compiler '{name}' is not installed (Debian/Ubuntu: apt-get install {package})"]
    return []


def _need_module(name: str) -> list[str]:
    import importlib.util

    return [] if importlib.util.find_spec(name) else [f"the '{name}' package is not installed (pip install {name})"]


def _need_file(path: str | None) -> list[str]:
    return [] if path is None or Path(path).is_file() else [f"test_file '{path}' does not exist"]
