"""verifier=math: the completion's answer is mathematically equivalent to the reference (math-verify).

math-verify extracts the answer (a `\\boxed{}` or other LaTeX, or a plain expression), parses it with SymPy and
compares it with the reference: LaTeX and plain forms, fractions and decimals, sets, intervals, matrices and
expressions. Its timeouts use SIGALRM, which breaks in threads, and the pipeline calls verifiers from threads, so
each sample is judged in a worker process (`_math_worker.py`, started once and reused) with a per-sample
timeout; a worker stuck past it is killed and replaced. A timeout or a parse failure is reward 0 with `error`
saying why.
"""

from __future__ import annotations

import atexit
import json
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from halo_pipeline.verifiers import VerifierSettings, VerifyResult, register_verifier

WORKER = Path(__file__).with_name("_math_worker.py")
STARTUP_S = 120.0  # importing math-verify and SymPy, once per worker (not part of any sample's timeout)
GRACE_S = 2.0  # past the timeout, before a worker stuck in C code is killed (its own CPU limit may come first)


class MathSettings(VerifierSettings):
    answer_field: str = Field("answer", description="Sample field holding the reference answer (LaTeX or plain).")
    timeout: float = Field(5.0, gt=0, le=600, description="Seconds per sample for extracting, parsing and comparing.")
    float_rounding: int = Field(6, ge=0, le=15, description="Decimal places numbers are rounded to before comparing.")
    strict: bool = Field(True, description="Compare variables and relations strictly (false: `x = 1` matches `1`).")


def _check(settings: MathSettings) -> list[str]:
    import importlib.util

    if importlib.util.find_spec("math_verify") is None:
        return ["needs math-verify: pip install math-verify==0.9.0 (a dependency of halo-pipeline)"]
    return []


class WorkerGone(RuntimeError):
    pass


class _Worker:
    """One `_math_worker.py` process: a JSON line in, a JSON line out."""

    def __init__(self) -> None:
        self.pid = os.getpid()  # a forked child must not share its parent's workers
        self.proc = subprocess.Popen(
            [sys.executable, "-P", str(WORKER)],  # -P: the verifiers folder is not put on sys.path (its code.py)
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.buffer = b""
        if self._line(time.monotonic() + STARTUP_S) is None:
            self.kill()
            raise WorkerGone("the math verifier's worker did not start (is math-verify installed?)")

    def _line(self, deadline: float) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self.buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return None  # the worker died (its CPU limit)
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ask(self, request: dict[str, Any], wait_s: float) -> dict[str, Any] | None:
        """The reply, or None when the worker did not answer within `wait_s` (it is then dead or killed)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            return None
        return self._line(time.monotonic() + wait_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class _Pool:
    """Idle workers, shared by the threads of this process; each call takes one to itself."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []

    def judge(self, request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        with self.lock:
            worker = self.idle.pop() if self.idle else None
        if worker is None or worker.pid != os.getpid():
            worker = _Worker()
        reply = worker.ask(request, timeout + GRACE_S)
        if reply is None:
            worker.kill()
            return None
        with self.lock:
            self.idle.append(worker)
        return reply

    def close(self) -> None:
        with self.lock:
            workers, self.idle = self.idle, []
        for worker in workers:
            if worker.pid == os.getpid():
                worker.kill()


POOL = _Pool()
atexit.register(POOL.close)
os.register_at_fork(after_in_child=lambda: POOL.idle.clear())  # the parent's workers stay the parent's


@register_verifier("math", MathSettings, check=_check)
def math(settings: MathSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """1.0 when the completion's final answer is mathematically equivalent to the reference (math-verify: LaTeX,
    fractions, sets, intervals, expressions), else 0; a timeout or an answer that does not parse is 0 with the
    reason in `error`."""
    if settings.answer_field not in sample:
        return VerifyResult(0.0, False, {}, f"sample has no '{settings.answer_field}' field")
    request = {
        "gold": str(sample[settings.answer_field]),
        "completion": str(sample.get("completion", "")),
        "timeout": settings.timeout,
        "float_rounding": settings.float_rounding,
        "strict": settings.strict,
    }
    reply = POOL.judge(request, settings.timeout)
    if reply is None:
        return VerifyResult(0.0, False, {}, f"timed out after {settings.timeout} s (the worker was stopped)")
    ok = bool(reply["equivalent"])
    return VerifyResult(1.0 if ok else 0.0, ok, reply.get("details") or {}, reply.get("error"))
