"""The Python code verifiers: python_tests and pytest.

The tests run in a *driver* process and the solution in a *candidate* process, exec'd fresh and
forked before anything of the tests existed in the process it came from; only plain data crosses
between them (`_harness_python.py`, `_harness_pytest.py`), and the driver alone writes the record.
What the driver runs is prepared here, once per task: the test code instrumented to count the
checks it runs (`prepare_tests`), and which names the tests take from the solution (the declared
entry points only; `solution_names`). docs/verifiers.md has the threat model.
"""

from __future__ import annotations

import ast
import base64
import builtins
import functools
import json
import marshal
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

import halo_pipeline.sandbox as sbx
from halo_pipeline.verifiers import VerifyResult, register_verifier
from halo_pipeline.verifiers.code import (
    HARNESSES,
    CodeSettings,
    _details,
    _need_file,
    _need_module,
    _need_sandbox,
    _refuse,
    _tests_result,
    _why_no_record,
    extract_code,
)


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


# ---------------------------------------------------------------- I/O cases (execution)


def run_python_cases(settings: Any, program: str, cases: list[tuple[str, str]], judge: Any) -> tuple[int, list[dict[str, Any]]]:
    """Each case in a fresh sandboxed run, its input on a sealed memfd; stdout judged here by `judge(got, want)`."""
    passed, failures = 0, list[dict[str, Any]]()
    for i, (stdin, expected) in enumerate(cases):
        run = sbx.run(
            role="harness_python:script",
            args={"program": program},
            modules=HARNESSES,
            stdin=stdin,
            limits=settings.limits(),
            mode=settings.sandbox,
        )
        why = run.killed_reason
        if why is None and judge(run.stdout, expected):
            passed += 1
        elif len(failures) < 10:
            failures.append({"case": i, "error": why or "wrong output", "got": run.stdout[:200], "expected": expected[:200]})
    return passed, failures
