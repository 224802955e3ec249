"""The math verifier's worker: a process of its own that judges one sample at a time with math-verify.

math-verify bounds its parsing and comparing with SIGALRM, which only works in a process's main thread; the
pipeline calls verifiers from threads (a batch, or TRL's reward functions), so the judging happens here, in this
process's main thread. Requests and replies are one JSON object a line on stdin/stdout (plain data only). Each
sample gets a wall-clock budget (an interval timer that interrupts Python code) and a CPU-time limit a little
above it (the kernel kills this process when a sample is stuck in C code, such as a huge integer power, which no
signal handler interrupts; the parent then starts another worker). When the parent goes away, stdin ends and so
does this process.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import signal
import sys
from typing import Any

MAX_SHOWN = 200  # characters of an extracted answer kept in details


class Timeout(BaseException):
    """Raised by the interval timer (a BaseException, so that no `except Exception` in the libraries swallows it)."""


def _alarm(signum: int, frame: Any) -> None:
    raise Timeout


def _cpu_limit(seconds: float) -> None:
    """Kill this process (SIGXCPU, then SIGKILL at the hard limit) once it has used `seconds` more CPU time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY and soft >= hard:
        return
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _shown(parsed: list[Any], default: str = "") -> str:
    """The text math-verify extracted (its last element); never str() of the SymPy object, which can itself hang."""
    text = next((p for p in reversed(parsed) if isinstance(p, str)), default)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…"


def judge(request: dict[str, Any]) -> dict[str, Any]:
    """Whether the completion's answer is equivalent to the reference: {"equivalent", "details", "error"}."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    stage = "parsing the reference"
    try:
        gold_text = str(request["gold"])
        gold = []
        if "$" not in gold_text and "\\boxed" not in gold_text:  # the whole field is the answer: bare LaTeX (\{1, 2\})
            gold = parse(f"${gold_text}$", configs, "no_fallback", parsing_timeout=None, raise_on_error=True)
        if not gold:
            gold = parse(gold_text, configs, "no_fallback", parsing_timeout=None, raise_on_error=True)
        if not gold:
            return {"equivalent": False, "details": {}, "error": f"reference answer '{gold_text[:MAX_SHOWN]}' does not parse as math"}
        stage = "parsing the completion"
        answer = parse(str(request["completion"]), configs, parsing_timeout=None, raise_on_error=True)
        details: dict[str, Any] = {"expected": _shown(gold, gold_text)}
        if not answer:
            return {"equivalent": False, "details": {**details, "reason": "no answer found in the completion"}, "error": None}
        details["got"] = _shown(answer)
        if all(isinstance(a, str) for a in answer):  # extracted, but SymPy could not read it
            return {"equivalent": False, "details": details, "error": f"the completion's answer '{details['got']}' does not parse as math"}
        stage = "comparing"
        ok = verify(
            gold,
            answer,
            float_rounding=int(request.get("float_rounding", 6)),
            strict=bool(request.get("strict", True)),
            timeout_seconds=None,
            raise_on_error=True,
        )
        return {"equivalent": bool(ok), "details": details, "error": None}
    except Timeout:
        return {"equivalent": False, "details": {}, "error": f"timed out {stage} after {request['timeout']} s"}
    except Exception as exc:  # a parse or comparison failure is a 0 with the reason
        return {"equivalent": False, "details": {}, "error": f"{stage} failed: {type(exc).__name__}: {str(exc)[:MAX_SHOWN]}"}


def main() -> None:
    logging.disable(logging.WARNING)  # math-verify logs each timeout; the reply carries it
    signal.signal(signal.SIGALRM, _alarm)
    import math_verify  # noqa: F401  (loaded before the first sample's budget starts)

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        budget = float(request["timeout"])
        _cpu_limit(budget)
        signal.setitimer(signal.ITIMER_REAL, budget)
        try:
            reply = judge(request)
        except Timeout:  # the timer fired between judge's own handlers
            reply = {"equivalent": False, "details": {}, "error": f"timed out after {budget} s"}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
