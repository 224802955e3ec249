"""Runs inside the sandbox (preloaded into the zygote, never imported by the pipeline): pytest in the
tests' own process.

The `driver` role of the pytest verifier: the solution runs in a separate candidate process
(`harness_python.candidate`); here `import solution` finds a proxy module whose attributes are
fetched from it as plain data or as handles to call (see `_harness_python.py`). pytest, its plugins
and the test file all live in this process, which the solution's code never runs in, and the
record (tests passed / collected) is written to fd 3 from here.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import sys
import time
import types
from typing import Any


def driver(args: dict[str, Any]) -> None:
    harness = sys.modules["harness_python"]
    deadline = time.monotonic() + float(args["deadline_s"])
    os.set_blocking(5, False)
    link = harness.Link(4, 5, deadline)

    def emit(record: dict[str, Any]) -> None:
        os.write(3, (json.dumps(record) + "\n").encode())

    if why := link.start():
        emit({"passed": 0, "total": 0, "error": why})
        return
    name = args["module"]
    stdlib = {str(n) for n in args.get("stdlib", []) if n in sys.stdlib_module_names}

    class SolutionModule(types.ModuleType):
        """`solution` in the tests: each attribute comes from the candidate process. `from solution
        import *` gives only the exports the pipeline worked out (the declared entry points, or the
        names the tests read but bind nowhere): never a builtin, `pytest`, or anything the tests import
        themselves. Standard-library modules are the real ones."""

        def __getattr__(self, attr: str) -> Any:
            if attr == "__all__":  # the exports the solution has (a star import skips the rest, as Python's would)
                exports = [str(n) for n in args.get("exports", []) if str(n) not in stdlib]
                found = link.names(exports) if exports else {}
                present = [n for n in exports if type(found.get(n)) is list and found[n][:1] in (["v"], ["o"])]
                return present + sorted(stdlib)
            if attr.startswith("__"):
                raise AttributeError(attr)
            if attr in stdlib:
                value = importlib.import_module(attr)
                setattr(self, attr, value)
                return value
            desc = link.names([attr]).get(attr)
            if type(desc) is list and desc[:1] == ["m"] and len(desc) == 2 and desc[1] == attr and attr in sys.stdlib_module_names:
                value = importlib.import_module(attr)  # `solution.math`: the real module
            elif type(desc) is list and desc[:1] in (["v"], ["o"]):
                value = link.value(desc)
            else:
                raise AttributeError(f"module '{name}' has no attribute '{attr}'")
            setattr(self, attr, value)
            return value

    sys.modules[name] = SolutionModule(name)
    with open(f"test_{name}.py", "w", encoding="utf-8") as f:
        f.write(args["test_source"])
    sys.path.insert(0, os.getcwd())
    import pytest

    class Counter:
        def __init__(self) -> None:
            self.outcomes: dict[str, str] = {}
            self.collected = 0
            self.asked = 0

        def pytest_collection_modifyitems(self, items: list[Any]) -> None:
            self.collected = len(items)

        def pytest_runtest_setup(self, item: Any) -> None:
            self.asked = link.asked

        def pytest_runtest_logreport(self, report: Any) -> None:
            failed = report.failed
            if report.when == "call" and link.gone and link.asked > self.asked:
                failed = True  # the solution went away during this test (even if the test swallowed that)
            if failed or report.when == "call":
                self.outcomes.setdefault(report.nodeid, "failed" if failed else report.outcome)
                if failed:
                    self.outcomes[report.nodeid] = "failed"

    counter = Counter()
    with open("pytest.ini", "w", encoding="utf-8") as f:
        f.write("[pytest]\n")  # ours: no ini file or conftest.py found around the work dir is read
    output = io.StringIO()
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # a fixed environment: pytest's own plugins, no installed ones
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        pytest.main(
            ["-q", "-p", "no:cacheprovider", "--noconftest", "-c", "pytest.ini", "--rootdir", ".", f"test_{name}.py"], plugins=[counter]
        )
    passed = sum(outcome == "passed" for outcome in counter.outcomes.values())
    failures = [{"test": k, "error": v} for k, v in counter.outcomes.items() if v != "passed"][:10]
    record: dict[str, Any] = {"passed": passed, "total": counter.collected, "failures": failures}
    if counter.collected == 0:
        why = [line for line in output.getvalue().splitlines() if line.strip()][-3:]
        record["error"] = "no tests were collected" + (": " + " | ".join(why) if why else "")
    emit(record)
