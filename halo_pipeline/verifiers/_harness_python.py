"""Runs inside the sandbox (never imported by the pipeline): a solution, then its tests one by one.

Usage: python -I -S _harness_python.py RESULT_FD   (cwd holds .nonce and spec.bin)

The harness reads and deletes the nonce and the spec before any model-written code runs, keeps
its own references to what it needs, and writes one nonce-tagged record to RESULT_FD after the
tests. Exiting early (sys.exit, os._exit, a crash, a timeout) therefore means no record, which the
parent scores 0: the exit code is never trusted. The parent already rewrote the test code so each
test statement reports through __halo_ok/__halo_fail (see code.instrument_tests); a failing test
does not stop the others. It imports nothing beyond what the interpreter has loaded at start-up:
start-up time is most of a sample's cost.
"""

import marshal
import os
import sys


def main() -> None:
    out_fd = int(sys.argv[1])
    with open(".nonce", encoding="utf-8") as text:
        nonce = text.read()
    os.unlink(".nonce")
    with open("spec.bin", "rb") as binary:
        spec = marshal.loads(binary.read())
    os.unlink("spec.bin")
    sys.path.extend(spec["site_paths"])  # site-packages without running .pth files (-S)
    write, getframe, exit_now, builtins = os.write, sys._getframe, os._exit, __builtins__
    builtins_dict = builtins if isinstance(builtins, dict) else vars(builtins)
    builtins_snapshot = dict(builtins_dict)
    restore_builtins = builtins_dict.update
    plain_types = (int, float, complex, str, bytes, bool, type(None))
    total = spec["tests"]

    def emit(record: dict) -> None:
        write(out_fd, (nonce + repr(record) + "\n").encode())
        exit_now(0)  # nothing the solution registered (atexit, threads) runs after the record

    def short(exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return text[:300]

    try:
        test_code = compile(spec["test_code"], "tests.py", "exec")
    except BaseException as exc:
        emit({"passed": 0, "total": total, "error": f"the test code is broken: {short(exc)}"})
    namespace: dict = {"__name__": "__solution__", "__builtins__": builtins}
    try:
        exec(compile(spec["program"], "solution.py", "exec"), namespace)
    except BaseException as exc:  # SystemExit included: leaving early is a failure, not a pass
        emit({"passed": 0, "total": total, "error": f"the solution raised {short(exc)} before the tests ran"})

    results: dict = {}
    tampered: list = []
    check_codes = set(_code_objects(test_code))

    def begin(k: int) -> None:
        restore_builtins(builtins_snapshot)  # a solution that patched builtins does not carry it into the next test

    def ok(k: int) -> None:
        if getframe(1).f_code not in check_codes:
            tampered.append("a test result was reported from outside the tests")
        results.setdefault(k, None)

    def fail(k: int, exc: BaseException) -> None:
        results[k] = short(exc)

    entry = spec["entry_point"]
    target = namespace.get(entry) if entry else None
    if entry and not callable(target):
        emit({"passed": 0, "total": total, "error": f"the solution does not define `{entry}`"})
    if entry and spec["plain_results"]:
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
        if spec["check_function"]:
            namespace[spec["check_function"]](target)
    except BaseException as exc:
        emit({"passed": 0, "total": total, "error": f"the tests could not run: {short(exc)}"})

    failures = [{"test": k, "error": results.get(k, "did not run")} for k in range(total) if k not in results or results[k] is not None]
    if tampered:
        emit({"passed": 0, "total": total, "error": "tampering: " + tampered[0], "failures": failures[:10]})
    emit({"passed": total - len(failures), "total": total, "failures": failures[:10]})


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


if __name__ == "__main__":
    main()
