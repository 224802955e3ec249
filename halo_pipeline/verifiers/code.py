"""Verifiers that run model-written code: python_tests, pytest, execution, gcc, clang, rust.

All of them run the completion through `halo_pipeline.verifiers.sandbox` (bubblewrap unless the verifier's
`sandbox: rlimits` opts down) and only when its settings say `allow_code_execution: true`. The code
that decides pass/fail never shares a process with the solution's code where that can be avoided:

- python_tests / pytest: the tests run in a *driver* process, the solution in a *candidate*
  process; only plain data crosses between them (`_harness_python.py`), and the driver alone
  writes the record.
- execution and I/O tests of compiled languages: the parent compares stdout; every test case runs
  in a fresh work dir with its input on a sealed memfd.
- gcc/clang/rust `test` statements: compiled into the program (`native.py` explains what keeps
  them out of the solution's reach, and what cannot be kept out in-process).
Exit codes are never trusted.
"""

from __future__ import annotations

import ast
import base64
import builtins
import functools
import json
import marshal
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

import halo_pipeline.sandbox as sbx
from halo_pipeline.verifiers import VerifierSettings, VerifyResult, native, register_verifier

HARNESS_PYTHON = Path(__file__).with_name("_harness_python.py")
HARNESS_PYTEST = Path(__file__).with_name("_harness_pytest.py")
HARNESSES = (HARNESS_PYTHON, HARNESS_PYTEST)
FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+#-]*)[^\n]*\n(.*?)```", re.DOTALL)


class CodeSettings(VerifierSettings, sbx.Limits):
    runs_code: ClassVar[bool] = True
    allow_code_execution: bool = Field(
        False, description="Run model-written code (sandboxed). Off unless the recipe says so: validation fails without it."
    )
    sandbox: Literal["bubblewrap", "rlimits"] = Field(
        "bubblewrap",
        description="OS isolation for the code: bubblewrap (required unless you opt down) or rlimits (explicitly weaker: "
        "no file-system or network isolation; warned on the terminal and recorded in the manifest).",
    )

    def limits(self) -> sbx.Limits:
        return sbx.Limits(**{k: getattr(self, k) for k in sbx.Limits.model_fields})


def extract_code(text: str, languages: tuple[str, ...] = ()) -> str:
    """The first fenced block (preferring one tagged with a language in `languages`), else the text."""
    blocks = FENCE.findall(text)
    for lang, body in blocks:
        if lang.lower() in languages:
            return body
    return blocks[0][1] if blocks else text


def _refuse(settings: CodeSettings) -> VerifyResult | None:
    if not settings.allow_code_execution:
        return VerifyResult(0.0, False, {}, f"{settings.name} runs model-written code and allow_code_execution is false")
    iso = sbx.isolation(settings.sandbox)
    return None if iso.available else VerifyResult(0.0, False, {}, iso.refusal())


def _need_sandbox(settings: CodeSettings) -> list[str]:
    iso = sbx.isolation(settings.sandbox)
    return [] if iso.available else [iso.refusal()]


def _details(settings: CodeSettings, run: sbx.RunResult | None = None) -> dict[str, Any]:
    details: dict[str, Any] = {"isolation": sbx.effective_mode(settings.sandbox)}
    if run is not None:
        details["wall_s"] = round(run.wall_s, 3)
    return details


def _why_no_record(run: sbx.RunResult) -> str:
    why = run.killed_reason or f"the program exited (code {run.returncode}) before the tests reported"
    tail = run.stderr.strip().splitlines()[-3:]
    return why + (": " + " | ".join(tail) if tail else "")


def _native_record(run: sbx.RunResult) -> tuple[dict[str, Any] | None, str | None]:
    """The compiled harness's single nonce-tagged record, or why there is none."""
    if len(run.records) > 1:
        return None, "more than one result record (tampering)"
    if len(run.records) == 1:
        try:
            record = json.loads(run.records[0])
        except json.JSONDecodeError:
            return None, "the harness record is unreadable"
        return (record, None) if isinstance(record, dict) else (None, "the harness record is unreadable")
    return None, _why_no_record(run)


def _tests_result(record: dict[str, Any] | None, error: str | None, details: dict[str, Any], credit: float = 0.0) -> VerifyResult:
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
    plain_results: bool = Field(
        True,
        description="Only plain data (numbers, strings, bytes, containers) reaches the tests; an object the solution returns is "
        "an opaque handle that compares by identity only (always on: the tests run in another process).",
    )
    partial_credit: bool = Field(
        True, description="Reward = fraction of tests passed; false: 1 only when all pass (HumanEval's pass/fail)."
    )

    @field_validator("plain_results")
    @classmethod
    def _always_plain(cls, value: bool) -> bool:
        if not value:
            raise ValueError(
                "plain_results: false is not supported: the tests run in their own process and only plain data crosses "
                "into it (a solution's object is a handle that compares by identity); return plain values"
            )
        return value


def python_program(settings: PythonTestsSettings, sample: Mapping[str, Any]) -> str:
    prompt, completion = str(sample.get("prompt") or ""), str(sample.get("completion") or "")
    code = extract_code(completion, ("python", "py", "python3"))
    entries = entry_points_of(sample)
    if settings.program == "auto":
        if prompt.strip() and not _prompt_is_code(prompt):
            return code  # a prompt in words (MBPP's "Write a function to ..."): the completion is the program
        defines_entry = any(re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE) for entry in entries)
        # a full definition comes after the prompt (its imports/helpers) and wins; otherwise it continues the prompt
        return prompt + "\n\n" + code if defines_entry else prompt + completion
    return code if settings.program == "completion" else prompt + completion


@dataclass(frozen=True)
class PreparedTests:
    """What the driver runs for one task, made here (trusted) once per task: GRPO verifies many samples of each."""

    code: str  # base64 of the marshalled, instrumented test code (compiled here: the driver needs no `ast`)
    sources: tuple[str, ...]  # each unit statement's source, for failure details
    declared: tuple[str, ...]  # the entry points: always the solution's
    inferred: tuple[str, ...]  # names undeclared tests call: the solution's unless the prompt binds them
    stdlib: tuple[str, ...]  # standard-library modules the tests name without importing them: the real ones
    helpers: str  # base64 of the marshalled prompt, when it is code (its bindings are the tests', not the solution's)


@functools.lru_cache(maxsize=512)
def prepare_tests(test_source: str, check_function: str | None, entry_points: tuple[str, ...], prompt: str) -> PreparedTests:
    """The test code instrumented so that the driver counts what it checks as it runs (`Units` in
    `_harness_python.py`): each top-level statement (or each statement of `check_function`'s body)
    reports its outcome, and each `assert` on a non-constant reports that it ran. Nothing is
    classified by the names a statement mentions."""
    tree = ast.parse(test_source)
    prompt_tree = _parse_prompt(prompt)
    declared, inferred, stdlib = solution_names(tree, prompt_tree, entry_points)
    if check_function:
        fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == check_function), None)
        if fn is None:
            raise ValueError(f"the test code defines no `{check_function}` function")
        units = fn.body
        fn.body = [_unit(s, k) for k, s in enumerate(units)]
        tree.body = [s for s in tree.body if not _calls(s, check_function)]  # we call it, once
    else:
        units = [s for s in tree.body if not (isinstance(s, ast.ImportFrom) and s.module == "__future__")]
        tree.body = [s if isinstance(s, ast.ImportFrom) and s.module == "__future__" else _unit(s, units.index(s)) for s in tree.body]
    lines = [line.encode() for line in test_source.splitlines(keepends=True)]
    sources = tuple(_clip(_segment(lines, t)) for t in units)
    helpers = _marshalled(prompt_tree, "prompt.py") if prompt_tree is not None else ""
    tree = _CountChecks().visit(tree)
    return PreparedTests(_marshalled(ast.fix_missing_locations(tree), "tests.py"), sources, declared, inferred, stdlib, helpers)


class _CountChecks(ast.NodeTransformer):
    """Before each `assert` on something that is not a constant (`assert True, "..."` checks nothing): count it."""

    def visit_Assert(self, node: ast.Assert) -> Any:
        if isinstance(node.test, ast.Constant):
            return node
        return [_located(_call("__halo_check"), node), node]


def _calls(stmt: ast.stmt, name: str) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Call)
        and isinstance(stmt.value.func, ast.Name)
        and stmt.value.func.id == name
    )


def _unit(stmt: ast.stmt, k: int) -> ast.stmt:
    """begin(k); try: <stmt> / except BaseException as e: raised(k, e) / finally: end(k)."""
    handler = ast.ExceptHandler(
        type=ast.Name("BaseException", ast.Load()),
        name="__halo_exc",
        body=[_call("__halo_raised", k, ast.Name("__halo_exc", ast.Load()))],
    )
    wrapper = ast.Try(body=[_call("__halo_begin", k), stmt], handlers=[handler], orelse=[], finalbody=[_call("__halo_end", k)])
    return _located(wrapper, stmt)


def _marshalled(tree: ast.Module, filename: str) -> str:
    return base64.b64encode(marshal.dumps(compile(tree, filename, "exec"))).decode()


def _parse(source: str) -> ast.Module | None:
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):
        return None


def _parse_prompt(prompt: str) -> ast.Module | None:
    """The prompt as code: as it is, or ended with `pass` when it stops at a signature (`def add(a, b):`)."""
    for suffix in ("", "\n    pass\n", "\n        pass\n"):
        if (tree := _parse(prompt + suffix)) is not None:
            return tree
    return None


@functools.lru_cache(maxsize=512)
def _prompt_is_code(prompt: str) -> bool:
    return _parse_prompt(prompt) is not None


def _segment(lines: list[bytes], node: ast.stmt) -> str:
    """The statement's source text (ast.get_source_segment without re-splitting the source each time)."""
    end_line, end_col = node.end_lineno, node.end_col_offset
    if end_line is None or end_col is None:
        return ast.unparse(node)
    first, last = node.lineno - 1, end_line - 1
    if first == last:
        return lines[first][node.col_offset : end_col].decode(errors="replace")
    text = lines[first][node.col_offset :] + b"".join(lines[first + 1 : last]) + lines[last][:end_col]
    return text.decode(errors="replace")


def _clip(text: str) -> str:
    return text if len(text) <= 200 else text[:197] + "..."


def _call(name: str, *args: int | ast.expr) -> ast.Expr:
    values: list[ast.expr] = [a if isinstance(a, ast.expr) else ast.Constant(a) for a in args]
    return ast.Expr(ast.Call(ast.Name(name, ast.Load()), values, []))


def _located(node: ast.stmt, like: ast.stmt) -> ast.stmt:
    """Give the new nodes (not the wrapped statement, which has its own) the statement's position."""
    pending: list[ast.AST] = [node]
    while pending:
        child = pending.pop()
        if "lineno" in child._attributes:
            child.lineno, child.col_offset = like.lineno, like.col_offset  # type: ignore[attr-defined]
            child.end_lineno, child.end_col_offset = like.end_lineno, like.end_col_offset  # type: ignore[attr-defined]
        pending.extend(c for c in ast.iter_child_nodes(child) if c is not like)
    return node


def entry_points_of(sample: Mapping[str, Any]) -> tuple[str, ...]:
    """The names the task declares the solution must define: `entry_point` (a name or a list of names)."""
    entry = sample.get("entry_point")
    names = [entry] if isinstance(entry, str) else list(entry) if isinstance(entry, list | tuple) else []
    return tuple(str(n) for n in names if str(n).isidentifier())


def python_test_spec(sample: Mapping[str, Any]) -> dict[str, Any]:
    """HumanEval (`test` + `entry_point`: check(candidate)), MBPP (`test_list`, `test_setup_code`,
    `test_imports`) or generic (`tests`: assert statements, or `test` code with top-level asserts)."""
    entries = entry_points_of(sample)
    entry = entries[0] if entries else None
    if sample.get("test_list") or isinstance(sample.get("tests"), list):
        imports = sample.get("test_imports") or []
        lines = [*(str(i) for i in (imports if isinstance(imports, list) else [imports])), str(sample.get("test_setup_code") or "")]
        lines += [str(t) for t in (sample.get("test_list") or sample.get("tests") or [])]
        return {"test_source": "\n".join(lines), "check_function": None, "entry_point": entry, "entry_points": entries}
    test = str(sample.get("test") or sample.get("tests") or "")
    has_check = re.search(r"^def\s+check\s*\(", test, re.MULTILINE) is not None
    return {"test_source": test, "check_function": "check" if has_check and entry else None, "entry_point": entry, "entry_points": entries}


def free_names(tests: ast.Module) -> set[str]:
    """Names the tests read but bind nowhere, builtins excluded."""
    loaded: set[str] = set()
    bound: set[str] = set()
    for node in ast.walk(tests):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            bound.add(node.name)
    return loaded - bound - set(dir(builtins))


def called_names(tests: ast.Module) -> set[str]:
    """Names the tests call (`f(...)`, `Pair(...)`): what undeclared tests can mean by a function under test."""
    return {n.func.id for n in ast.walk(tests) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def solution_names(
    tests: ast.Module, prompt: ast.Module | None, entry_points: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(declared, inferred, stdlib): what the tests may take from the solution, and the standard-library
    modules they name without importing. With declared entry points, nothing else comes from the
    solution. Without (MBPP calls functions by name), the names the tests *call* but bind nowhere that
    are neither builtins nor standard-library modules: the solution's unless the prompt binds them
    (checked as the driver runs the prompt; a prompt's stub, a body of only a docstring or `pass`, is
    the solution's to write). A free name the tests only read (`np.allclose`) is never the solution's."""
    free = free_names(tests)
    stdlib = tuple(sorted(n for n in free if n in sys.stdlib_module_names and n not in entry_points))
    if entry_points:
        return tuple(entry_points), (), stdlib
    inferred = (free & called_names(tests)) - set(stdlib)
    stubs = inferred & _prompt_stubs(prompt)
    return tuple(sorted(stubs)), tuple(sorted(inferred - stubs)), stdlib


def _prompt_stubs(tree: ast.Module | None) -> set[str]:
    """Top-level functions of the prompt whose body is only a docstring, `pass` or `...`: the solution's to write."""
    return {
        stmt.name
        for stmt in (tree.body if tree is not None else [])
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef) and _is_stub(stmt)
    }


def _is_stub(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A body of only a docstring, `pass` or `...`."""
    return all(isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)) for s in fn.body)


def run_python_pair(
    settings: CodeSettings, candidate_args: dict[str, Any], driver_role: str, driver_args: dict[str, Any], preimport: tuple[str, ...] = ()
) -> sbx.RunResult:
    """The tests' driver and the solution's candidate: two sandboxed processes joined by two pipes."""
    limits = settings.limits()
    outer = limits.model_copy(update={"timeout_s": limits.timeout_s + 2.0})  # the driver's own deadline decides
    return sbx.run(
        pair=(driver_role, "harness_python:candidate"),
        args={"driver": {**driver_args, "deadline_s": limits.timeout_s}, "candidate": candidate_args},
        limits=outer,
        mode=settings.sandbox,
        modules=HARNESSES,
        preimport=preimport,
    )


def _driver_record(run: sbx.RunResult) -> tuple[dict[str, Any] | None, str | None]:
    lines = run.result.decode("utf-8", errors="replace").strip().splitlines()
    if lines:
        try:
            record = json.loads(lines[-1])
            if isinstance(record, dict):
                return record, None
        except json.JSONDecodeError:
            pass
    if run.timed_out:
        return None, "the tests ran past their deadline"
    return None, "the tests did not report: " + _why_no_record(run)


@register_verifier("python_tests", PythonTestsSettings, check=lambda s: _need_sandbox(s))
def python_tests(settings: PythonTestsSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """Fraction of the task's tests that pass (HumanEval `test`+`entry_point`, MBPP `test_list`, or `tests`);
    the tests run in their own sandboxed process and call the solution's (another one) with plain data only."""
    if refused := _refuse(settings):
        return refused
    found = python_test_spec(sample)
    if not found["test_source"].strip():
        return VerifyResult(0.0, False, {}, "sample has no tests (fields: test + entry_point, test_list, or tests)")
    try:
        prepared = prepare_tests(found["test_source"], found["check_function"], found["entry_points"], str(sample.get("prompt") or ""))
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError) as exc:
        return VerifyResult(0.0, False, {}, f"the sample's test code cannot be run: {type(exc).__name__}: {exc}")
    sources = prepared.sources
    driver_args = {
        "test_code": prepared.code,
        "check_function": found["check_function"],
        "entry_point": found["entry_point"],
        "helpers": prepared.helpers,
        "declared": list(prepared.declared),
        "inferred": list(prepared.inferred),
        "stdlib": list(prepared.stdlib),
    }
    run = run_python_pair(settings, {"program": python_program(settings, sample)}, "harness_python:driver", driver_args)
    record, error = _driver_record(run)
    for failure in (record or {}).get("failures", []):
        if isinstance(failure.get("test"), int) and 0 <= failure["test"] < len(sources):
            failure["source"] = sources[failure["test"]]
    result = _tests_result(record, error, _details(settings, run))
    if not settings.partial_credit and not result.passed:
        return VerifyResult(0.0, False, result.details, result.error)
    return result


# ---------------------------------------------------------------- pytest


class PytestSettings(CodeSettings):
    module: str = Field("solution", description="Module name the completion is importable as (tests `import` it).")
    test_file: str | None = Field(None, description="A test file used for every sample (default: the sample's `test` field).")


@register_verifier("pytest", PytestSettings, check=lambda s: _need_sandbox(s) + _need_module("pytest") + _need_file(s.test_file))
def pytest_verifier(settings: PytestSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """Fraction of pytest tests that pass against the completion, importable as `solution`; pytest runs in its own
    sandboxed process and `solution` there is a proxy of the completion's module in another one."""
    if refused := _refuse(settings):
        return refused
    test = Path(settings.test_file).read_text() if settings.test_file else str(sample.get("test") or "")
    if not test.strip():
        return VerifyResult(0.0, False, {}, "no tests: give the sample a `test` field or set test_file")
    program = extract_code(str(sample.get("completion") or ""), ("python", "py"))
    try:
        exports, stdlib = pytest_exports(test, entry_points_of(sample))
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return VerifyResult(0.0, False, {}, f"the sample's test code cannot be run: {type(exc).__name__}: {exc}")
    driver_args = {"test_source": test, "module": settings.module, "exports": exports, "stdlib": stdlib}
    run = run_python_pair(settings, {"program": program, "module_name": settings.module}, "harness_pytest:driver", driver_args, ("pytest",))
    record, error = _driver_record(run)
    return _tests_result(record, error, _details(settings, run))


@functools.lru_cache(maxsize=512)
def pytest_exports(test_source: str, entry_points: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """What `from solution import *` gives the tests: the declared entry points, or (none declared) the
    names the test module calls but binds nowhere; never a builtin or a name the tests import
    themselves (`pytest`, `abs`, `math`). Standard-library modules the tests name without importing
    them are the real ones."""
    tree = ast.parse(test_source)
    free = free_names(tree)
    stdlib = sorted(n for n in free if n in sys.stdlib_module_names and n not in entry_points)
    exports = list(entry_points) if entry_points else sorted((free & called_names(tree)) - set(stdlib))
    return exports, stdlib


# ---------------------------------------------------------------- execution and compiled languages


class CompareSettings(CodeSettings):
    compare: Literal["exact", "contains", "regex", "numeric"] = Field(
        "exact",
        description="How stdout is compared with the expected output: exact (the same lines, trailing whitespace ignored), "
        "contains (the output ends with the expected lines; anything may come before), regex (the pattern matches the whole "
        "output) or numeric (the same numbers within tolerance).",
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
    """Whether stdout `got` answers `want`. Each mode judges one answer, so printing many candidates
    cannot pass: exact = the same lines; contains = the output *ends with* the expected lines (anything
    may come before them, on earlier lines or before the first expected line on its own line after a
    token boundary: "Enter n: 42"), so only the last thing printed is judged; regex = the pattern
    matches the *whole* output (stripped); numeric = the same count of numbers, each within tolerance."""
    if settings.compare == "exact":
        return _lines(got) == _lines(want)
    if settings.compare == "contains":
        return _ends_with(_lines(got), _lines(want))
    if settings.compare == "regex":
        return re.fullmatch(want.strip(), got.strip()) is not None
    got_numbers, want_numbers = _numbers(got), _numbers(want)
    return len(got_numbers) == len(want_numbers) > 0 and all(
        abs(g - w) <= settings.tolerance * max(1.0, abs(w)) for g, w in zip(got_numbers, want_numbers, strict=True)
    )


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


def _ends_with(got: list[str], want: list[str]) -> bool:
    if not want or len(got) < len(want) or got[len(got) - len(want) + 1 :] != want[1:]:
        return not want and not got
    line, first = got[len(got) - len(want)], want[0]
    if line == first:
        return True
    before = line[: len(line) - len(first)]
    # at a token boundary: "x: 42" ends with 42, "142", "-42", "1.42" and "x42" do not
    return line.endswith(first) and (before[-1].isspace() or not (before[-1].isalnum() or before[-1] in "_.-+"))


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", text)]


_FENCE_TAGS = {"python": ("python", "py"), "c": ("c",), "cpp": ("cpp", "c++", "cc"), "rust": ("rust", "rs")}
_DEFAULT_FLAGS = {"c": ["-O1", "-std=c11"], "cpp": ["-O1", "-std=c++17"], "rust": ["-C", "opt-level=1"]}


def _compile_limits(settings: Any) -> sbx.Limits:
    seconds = float(settings.compile_timeout_s)
    return sbx.Limits(timeout_s=seconds, cpu_s=int(seconds), memory_mb=4096, processes=64, file_size_mb=256, tmp_mb=1024)


class Built:
    """A compiled program, or why there is none."""

    def __init__(self, binary: bytes | None, run: sbx.RunResult | None = None, refused: str | None = None):
        self.binary, self.run, self.refused = binary, run, refused

    def failure(self, details: dict[str, Any]) -> VerifyResult:
        if self.refused:
            return VerifyResult(0.0, False, details, f"the build was refused: {self.refused}")
        run = self.run
        details["compiler_errors"] = (run.stderr if run else "").strip().splitlines()[:20]
        why = run.killed_reason if run else None
        return VerifyResult(0.0, False, details, f"compilation failed{': ' + why if why else ''}")


def _build(settings: Any, language: str, compiler: str, code: str, test_body: str | None, entry_point: str | None, tag: str) -> Built:
    """Compile inside the sandbox; the binary comes back as bytes (each later run gets a fresh copy)."""
    limits, mode, flags = _compile_limits(settings), settings.sandbox, list(settings.flags)
    if language == "rust":
        if test_body is not None and (refused := native.rust_check_refusal(code)):
            return Built(None, refused=refused)
        source = native.rust_test_source(code, test_body, tag) if test_body is not None else code
        argv = [native.rust_compiler(), "--edition", "2021", *flags, "-o", "prog", "main.rs"]
        run = sbx.run(argv, files={"main.rs": source}, limits=limits, mode=mode, ro_binds=(native.rust_sysroot(),), collect=["prog"])
        return Built(run.files.get("prog") if run.returncode == 0 else None, run)
    if test_body is None:
        ext = "c" if language == "c" else "cc"
        run = sbx.run(
            [compiler, *flags, f"main.{ext}", "-o", "prog", "-lm"], files={f"main.{ext}": code}, limits=limits, mode=mode, collect=["prog"]
        )
        return Built(run.files.get("prog") if run.returncode == 0 else None, run)
    pre = sbx.run(
        native.c_preprocess_argv(language, compiler, flags),
        files=native.c_sources(language, code),
        limits=limits,
        mode=mode,
        collect=[native.PREPROCESSED],
    )
    if pre.returncode != 0 or native.PREPROCESSED not in pre.files:
        return Built(None, pre)
    files = native.c_test_sources(language, pre.files[native.PREPROCESSED].decode("utf-8", errors="replace"), test_body, tag)
    run = sbx.run(native.c_build_argv(language, compiler, flags), files=files, limits=limits, mode=mode, collect=["prog", "prog.info"])
    if run.returncode != 0 or "prog" not in run.files:
        return Built(None, run)
    if refused := native.c_inspect(run.files.get("prog.info", b"").decode("utf-8", errors="replace"), compiler, entry_point):
        return Built(None, run, refused)
    return Built(run.files["prog"], run)


def _run_cases(settings: Any, cases: list[tuple[str, str]], **how: Any) -> tuple[int, list[dict[str, Any]]]:
    """Each case in a fresh sandboxed run, its input on a sealed memfd; stdout judged here, by the parent."""
    passed, failures = 0, list[dict[str, Any]]()
    for i, (stdin, expected) in enumerate(cases):
        run = sbx.run(stdin=stdin, limits=settings.limits(), mode=settings.sandbox, **how)
        why = run.killed_reason
        if why is None and output_matches(settings, run.stdout, expected):
            passed += 1
        elif len(failures) < 10:
            failures.append({"case": i, "error": why or "wrong output", "got": run.stdout[:200], "expected": expected[:200]})
    return passed, failures


def _verify_program(settings: Any, language: str, compiler: str, sample: Mapping[str, Any], credit: float) -> VerifyResult:
    code = extract_code(str(sample.get("completion") or ""), _FENCE_TAGS[language])
    test_body = str(sample["test"]) if language != "python" and sample.get("test") else None
    cases = io_cases(sample)
    details = _details(settings)
    if settings.compare == "regex":
        for _, pattern in cases:
            try:
                re.compile(pattern.strip())
            except (re.error, RecursionError, OverflowError) as exc:
                return VerifyResult(0.0, False, details, f"the sample's expected output is not a valid regex: {exc}")
    if language == "python":
        if not cases:
            return VerifyResult(0.0, False, details, "no test cases (tests: [{input, output}] or expected_output)")
        passed, failures = _run_cases(settings, cases, role="harness_python:script", args={"program": code}, modules=HARNESSES)
        details.update(passed=passed, total=len(cases), failures=failures)
        return VerifyResult(passed / len(cases), passed == len(cases), details)
    tag = native.random_tag()
    try:
        built = _build(settings, language, compiler, code, test_body, sample.get("entry_point"), tag)
    except (FileNotFoundError, subprocess.SubprocessError) as exc:
        return VerifyResult(0.0, False, details, str(exc))
    if built.binary is None:
        return built.failure(details)
    program: dict[str, Any] = {"argv": ["./prog"], "files": {"prog": built.binary}, "executable": ["prog"]}
    if test_body:
        nonce = sbx.new_nonce()
        run = sbx.run(
            **program, secrets_on_fds={4: nonce}, result=True, nonce=nonce, proc=False, limits=settings.limits(), mode=settings.sandbox
        )
        record, error = _native_record(run)
        return _tests_result(record, error, {**details, "wall_s": round(run.wall_s, 3)}, credit)
    if not cases:
        return VerifyResult(1.0, True, {**details, "compiled": True})
    passed, failures = _run_cases(settings, cases, **program)
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
    compiler = {"c": "gcc", "cpp": "g++"}.get(settings.language, "")
    flags = settings.flags if settings.flags is not None else _DEFAULT_FLAGS.get(settings.language, [])
    return _verify_program(settings.model_copy(update={"flags": flags}), settings.language, compiler, sample, 0.0)


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
        compiler = shutil.which(driver[settings.language])
        if compiler is None:
            return VerifyResult(0.0, False, {}, f"compiler '{driver[settings.language]}' is not installed")
        return _verify_program(settings.model_copy(update={"flags": flags}), settings.language, compiler, sample, settings.compile_credit)

    return verify


_COMPILED_DOC = (
    "Compile the completion{lang}, then run its tests: `test` holds statements using CHECK(cond) (C/C++) or "
    "check!(cond) (Rust), or `tests: [{{input, output}}]` compare stdout. Reward = compile_credit + "
    "(1 - compile_credit) x fraction passed; 1.0 for a clean compile when the sample has no tests."
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


@register_verifier("rust", RustSettings, check=lambda s: _need_sandbox(s) + _need_toolchain("rust", None, s.sandbox))
def rust(settings: RustSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """Compile the completion with rustc, then run its tests: `test` holds statements using check!(cond)
    (a panic fails that check only), or `tests: [{input, output}]` compare stdout.
    Reward = compile_credit + (1 - compile_credit) x fraction passed."""
    if refused := _refuse(settings):
        return refused
    return _verify_program(settings, "rust", "rustc", sample, settings.compile_credit)


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


def _reachable(tool: str, path: str, mode: str | None) -> list[str]:
    """rlimits as root: the sample's fresh uid runs the compiler, so it must be able to reach it (bubblewrap binds it)."""
    if sbx.effective_mode(mode) != "rlimits" or os.geteuid() != 0 or sbx.world_reachable(path):
        return []
    return [
        f"{tool} at {path} is not reachable by the samples' unprivileged uid (sandbox: rlimits as root): install it system-wide, or use bubblewrap"
    ]


def _need_module(name: str) -> list[str]:
    import importlib.util

    return [] if importlib.util.find_spec(name) else [f"the '{name}' package is not installed (pip install {name})"]


def _need_file(path: str | None) -> list[str]:
    return [] if path is None or Path(path).is_file() else [f"test_file '{path}' does not exist"]
