"""Verifiers that run model-written code: what they share (settings, refusals, results, comparing output).

The verifiers live by language family: `code_python.py` (python_tests, pytest) and `code_native.py`
(gcc, clang, rust, and execution, which runs a program of any of the four languages on inputs).
All of them run the completion through `halo_pipeline.sandbox` (bubblewrap unless the verifier's
`sandbox: rlimits` opts down) and only when its settings say `allow_code_execution: true`. The code
that decides pass/fail never shares a process with the solution's code:

- tests (python_tests, pytest, and the `test` statements of gcc/clang/rust): the tests run in a
  *driver* process, the solution in a *candidate* process, exec'd fresh; only plain data crosses
  between them (`_harness_python.py`, `_harness_native.py`), and the driver alone writes the record.
- I/O cases (execution, and `tests: [{input, output}]` of compiled languages): the pipeline
  compares each case's stdout with the expected output, which never enters the sandbox.
Exit codes are never trusted.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

import halo_pipeline.sandbox as sbx
from halo_pipeline.verifiers import VerifierSettings, VerifyResult

HARNESS_PYTHON = Path(__file__).with_name("_harness_python.py")
HARNESS_PYTEST = Path(__file__).with_name("_harness_pytest.py")
HARNESS_NATIVE = Path(__file__).with_name("_harness_native.py")
HARNESSES = (HARNESS_PYTHON, HARNESS_PYTEST, HARNESS_NATIVE)
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


# ---------------------------------------------------------------- comparing output


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


def _reachable(tool: str, path: str, mode: str | None) -> list[str]:
    """rlimits as root: the sample's fresh uid runs the compiler, so it must be able to reach it (bubblewrap binds it)."""
    if sbx.effective_mode(mode) != "rlimits" or os.geteuid() != 0 or sbx.world_reachable(path):
        return []
    return [
        f"{tool} at {path} is not reachable by the samples' unprivileged uid (sandbox: rlimits as root): install it system-wide, or use bubblewrap"
    ]


def _need_module(name: str) -> list[str]:
    return [] if importlib.util.find_spec(name) else [f"the '{name}' package is not installed (pip install {name})"]


def _need_file(path: str | None) -> list[str]:
    return [] if path is None or Path(path).is_file() else [f"test_file '{path}' does not exist"]
