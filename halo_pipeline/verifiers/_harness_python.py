"""Runs inside the sandbox (never imported by the pipeline): a solution, then its tests one by one.

Usage: python -I _harness_python.py RESULT_FD   (cwd holds .nonce and spec.json)

The harness reads and deletes the nonce and the spec before any model-written code runs, keeps
its own references to what it needs, and writes one nonce-tagged JSON record to RESULT_FD after
the tests. Exiting early (sys.exit, os._exit, a crash, a timeout) therefore means no record, which
the parent scores 0: the exit code is never trusted. Each test is one top-level statement of the
test code (an assert, or a loop of asserts); a failing test does not stop the others, so the
reward is the fraction that passed.
"""

import ast
import builtins
import json
import os
import sys


def main() -> None:
    out_fd = int(sys.argv[1])
    with open(".nonce", encoding="utf-8") as f:
        nonce = f.read()
    os.unlink(".nonce")
    with open("spec.json", encoding="utf-8") as f:
        spec = json.load(f)
    os.unlink("spec.json")
    write, dumps, getframe, exit_now = os.write, json.dumps, sys._getframe, os._exit
    plain_types = (int, float, complex, str, bytes, bool, type(None))
    builtins_snapshot = dict(vars(builtins))
    restore_builtins = vars(builtins).update

    def emit(record: dict) -> None:
        write(out_fd, (nonce + dumps(record) + "\n").encode())
        exit_now(0)  # nothing the solution registered (atexit, threads) runs after the record

    def short(exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return text[:300]

    try:
        module, tests = _build(spec)
        test_code = compile(module, "tests.py", "exec")
    except BaseException as exc:
        emit({"passed": 0, "total": 0, "error": f"the test code is broken: {short(exc)}"})
    total = len(tests)
    namespace: dict = {"__name__": "__solution__", "__builtins__": builtins}
    try:
        exec(compile(spec["program"], "solution.py", "exec"), namespace)
    except BaseException as exc:  # SystemExit included: leaving early is a failure, not a pass
        emit({"passed": 0, "total": total, "error": f"the solution raised {short(exc)} before the tests ran"})

    results: dict[int, str | None] = {}
    tampered: list[str] = []
    check_codes = set(_code_objects(test_code))

    def begin(k: int) -> None:
        restore_builtins(builtins_snapshot)  # a solution that patched builtins does not carry it into the next test

    def ok(k: int) -> None:
        if getframe(1).f_code not in check_codes:
            tampered.append("a test result was reported from outside the tests")
        results.setdefault(k, None)

    def fail(k: int, exc: BaseException) -> None:
        results[k] = short(exc)

    entry = spec.get("entry_point")
    target = namespace.get(entry) if entry else None
    if entry and not callable(target):
        emit({"passed": 0, "total": total, "error": f"the solution does not define `{entry}`"})
    if entry and spec.get("plain_results", True):
        original = target

        def guarded(*args, **kwargs):  # type: ignore[no-untyped-def]
            value = original(*args, **kwargs)
            if not _plain(value, plain_types):
                raise AssertionError(f"`{entry}` returned a {type(value).__name__}, not a builtin value")
            return value

        target = guarded
        namespace[entry] = guarded  # tests that call the function by name get the guard too

    namespace.update(__halo_begin=begin, __halo_ok=ok, __halo_fail=fail)
    try:
        exec(test_code, namespace)
        checker = spec.get("check_function")
        if checker:
            namespace[checker](target)
    except BaseException as exc:
        emit({"passed": 0, "total": total, "error": f"the tests could not run: {short(exc)}"})

    failures = [
        {"test": k, "source": _source(tests[k], spec), "error": results.get(k, "did not run")}
        for k in range(total)
        if k not in results or results[k] is not None
    ]
    if tampered:
        emit({"passed": 0, "total": total, "error": "tampering: " + tampered[0], "failures": failures[:10]})
    emit({"passed": total - len(failures), "total": total, "failures": failures[:10]})


def _build(spec: dict) -> tuple[ast.Module, list]:
    """The test code with every test statement wrapped, and the list of tests.

    A test is a statement that asserts something about the solution: the top-level ones, or those of
    `check_function`'s body (HumanEval). Other statements in check() are setup: a failing one is
    skipped so the rest run.
    """
    tree = ast.parse(spec.get("test_source", ""))
    checker = spec.get("check_function")
    if checker:
        fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == checker), None)
        if fn is None:
            raise LookupError(f"it defines no `{checker}` function")
        names = {a.arg for a in fn.args.args[:1]} | {spec.get("entry_point")}
        tests = [s for s in fn.body if _is_test(s, names)]
        fn.body = [_wrap(s, tests) for s in fn.body]
    else:
        names = {spec.get("entry_point")} - {None}
        tests = [s for s in tree.body if _is_test(s, names)]
        tree.body = [_wrap(s, tests) if _has_assert(s) else s for s in tree.body]
    return ast.fix_missing_locations(tree), tests


def _has_assert(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def _is_test(stmt: ast.stmt, names: set) -> bool:
    """An assert that exercises the solution: `assert True, "..."` lines in HumanEval are not tests."""
    asserts = [n for n in ast.walk(stmt) if isinstance(n, ast.Assert)]
    if not asserts or all(isinstance(a.test, ast.Constant) for a in asserts):
        return False
    return not names or any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(stmt))


def _call(name: str, *args: int | ast.expr) -> ast.Expr:
    values: list[ast.expr] = [a if isinstance(a, ast.expr) else ast.Constant(a) for a in args]
    return ast.Expr(ast.Call(ast.Name(name, ast.Load()), values, []))


def _wrap(stmt: ast.stmt, tests: list) -> ast.stmt:
    """try: begin(k); <test> / except BaseException: fail(k, exc) / else: ok(k)."""
    k = next((i for i, t in enumerate(tests) if t is stmt), None)
    if k is None:
        return ast.Try(body=[stmt], handlers=[_handler(None)], orelse=[], finalbody=[])
    return ast.Try(body=[_call("__halo_begin", k), stmt], handlers=[_handler(k)], orelse=[_call("__halo_ok", k)], finalbody=[])


def _handler(k: int | None) -> ast.ExceptHandler:
    body: list[ast.stmt] = [ast.Pass()] if k is None else [_call("__halo_fail", k, ast.Name("__halo_exc", ast.Load()))]
    return ast.ExceptHandler(type=ast.Name("BaseException", ast.Load()), name="__halo_exc", body=body)


def _code_objects(code):  # type: ignore[no-untyped-def]
    yield code
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            yield from _code_objects(const)


def _plain(value, plain_types, depth: int = 0) -> bool:  # type: ignore[no-untyped-def]
    """Builtin values only: a subclass with a rigged __eq__ would pass any equality assert."""
    if depth > 50:
        return False
    kind = type(value)
    if kind in plain_types:
        return True
    if kind in (list, tuple, set, frozenset):
        return all(_plain(v, plain_types, depth + 1) for v in value)
    if kind is dict:
        return all(_plain(k, plain_types, depth + 1) and _plain(v, plain_types, depth + 1) for k, v in value.items())
    return False


def _source(stmt: ast.stmt, spec: dict) -> str:
    text = ast.get_source_segment(spec.get("test_source", ""), stmt) or ast.unparse(stmt)
    return text if len(text) <= 200 else text[:197] + "..."


if __name__ == "__main__":
    main()
