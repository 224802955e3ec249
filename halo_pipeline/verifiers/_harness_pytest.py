"""Runs inside the sandbox (never imported by the pipeline): pytest on test_<module>.py.

Usage: python -I _harness_pytest.py RESULT_FD   (cwd holds .nonce, the solution and its tests)

The nonce is read and deleted before pytest imports anything model-written; the record (tests
passed / collected) is written to RESULT_FD when the session finishes. An early exit means no
record, which the parent scores 0.
"""

import json
import os
import sys


def main() -> None:
    out_fd = int(sys.argv[1])
    with open(".nonce", encoding="utf-8") as f:
        nonce = f.read()
    os.unlink(".nonce")
    write, dumps, exit_now = os.write, json.dumps, os._exit
    sys.path.insert(0, os.getcwd())
    import pytest

    class Counter:
        def __init__(self) -> None:
            self.outcomes: dict[str, str] = {}
            self.collected = 0

        def pytest_collection_modifyitems(self, items: list) -> None:
            self.collected = len(items)

        def pytest_runtest_logreport(self, report) -> None:  # type: ignore[no-untyped-def]
            if report.failed or report.when == "call":
                self.outcomes.setdefault(report.nodeid, "failed" if report.failed else report.outcome)
                if report.failed:
                    self.outcomes[report.nodeid] = "failed"

        def pytest_sessionfinish(self, session, exitstatus) -> None:  # type: ignore[no-untyped-def]
            passed = sum(o == "passed" for o in self.outcomes.values())
            failures = [{"test": k, "error": v} for k, v in self.outcomes.items() if v != "passed"][:10]
            record = {"passed": passed, "total": self.collected, "failures": failures}
            if self.collected == 0:
                record["error"] = "no tests were collected (collection failed?)"
            write(out_fd, (nonce + dumps(record) + "\n").encode())
            exit_now(0)

    pytest.main(["-q", "-p", "no:cacheprovider", "."], plugins=[Counter()])
    exit_now(0)


if __name__ == "__main__":
    main()
