"""Runs inside the sandbox (preloaded into the zygote, never imported by the pipeline): C, C++ and Rust samples.

`test` statements run as a *pair* (see `native_sources.py` for the two programs):

- `candidate` builds the solution's program (its own unit/crate, under the sample's limits), tells
  the driver whether it built, waits for the tests' program to start, then execs it: from then on
  the process is the solution's, answering calls on fds 4 (requests in) and 5 (replies out). It
  was forked before the tests reached the process it came from, and its arguments hold the
  solution's program only.
- `driver` builds the tests' program meanwhile (another uid as root; never the solution's text),
  runs it joined to the candidate, reads each check site's first pass and first failure from a
  pipe only it holds, and writes the record on fd 3. The number of sites is the trusted side's
  count; a site that never reported did not pass.

I/O cases (`cases`) and compile-only samples (`build`) are single runs: the program is built and
run here, each case in a fresh directory with its input on a sealed memfd and its stdout capped;
the outputs go back on fd 3 and the pipeline compares them with the expected ones, which never
enter the sandbox. The binary and every output stay in the sandbox; what comes back is capped.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import json
import os
import resource
import secrets
import select
import shutil
import signal
import struct
import subprocess
import time
from typing import Any

LOG_CAP = 8 << 10
BINARY_CAP = 512 << 10  # a tests' program small enough to come back for the pipeline's cache (the result pipe keeps 1 MiB)
PR_SET_DUMPABLE = 4


def _write_files(files: dict[str, str], binary_files: dict[str, str] | None = None, mode: int = 0o644) -> None:
    """Source files (text) and built ones (base64: an object, a program) into the work dir, never through a link."""
    contents = {**{k: v.encode() for k, v in files.items()}, **{k: base64.b64decode(v) for k, v in (binary_files or {}).items()}}
    for name, data in contents.items():
        if "/" in name or name in (".", ".."):
            raise ValueError(f"file name '{name}' must be plain")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def _head(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(LOG_CAP).decode("utf-8", errors="replace")
    except OSError:
        return ""


class Build:
    """The build commands, one after the other, in the work dir, within a deadline; output to a capped log."""

    def __init__(self, commands: list[list[str]], deadline: float, log: str):
        self.commands, self.deadline, self.log = list(commands), deadline, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.failed: str | None = None
        self._next()

    def _next(self) -> None:
        argv = self.commands.pop(0)
        env = {**os.environ, "TMPDIR": os.getcwd()}  # the compilers' temporary files: in the work dir, never a shared /tmp
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=env)

    def wait(self) -> bool:
        while self.proc is not None:
            try:
                code = self.proc.wait(timeout=max(0.0, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(self.proc)
                self.proc, self.failed = None, "the build ran past compile_timeout_s"
                return False
            if code != 0:
                self.proc = None
                self.failed = f"killed by {_signal_name(-code)}" if code < 0 else ""
                return False
            self.proc = None
            if self.commands:
                self._next()
        return True

    @property
    def errors(self) -> str:
        return ((self.failed + "\n") if self.failed else "") + _head(self.log)


def _signal_name(number: int) -> str:
    with contextlib.suppress(ValueError):
        return signal.Signals(number).name
    return f"signal {number}"


def _send(fd: int, payload: bytes) -> bool:
    data = struct.pack("<I", len(payload)) + payload
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:
        return False
    return True


def _read_exactly(fd: int, n: int, deadline: float | None) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
        try:
            chunk = os.read(fd, n - got)
        except OSError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _receive(fd: int, deadline: float | None, cap: int = 1 << 20) -> bytes | None:
    head = _read_exactly(fd, 4, deadline)
    if head is None:
        return None
    (n,) = struct.unpack("<I", head)
    return None if n > cap else _read_exactly(fd, n, deadline)


def _program_limits(args: dict[str, Any]) -> None:
    """The build had the compile's CPU time and file size; the programs get the sample's."""
    for which, value in ((resource.RLIMIT_CPU, max(1, int(args["cpu_s"]))), (resource.RLIMIT_FSIZE, int(args["file_size_mb"]) << 20)):
        _, hard = resource.getrlimit(which)
        if hard == resource.RLIM_INFINITY or value < hard:
            resource.setrlimit(which, (value, value))


def _not_dumpable() -> None:
    """No process of the same uid may trace us or reach our descriptors and memory through /proc."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_DUMPABLE, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


# ---------------------------------------------------------------- the pair: `test` statements


def candidate(args: dict[str, Any]) -> None:
    _write_files(args["files"], args.get("binary_files"))
    build = Build(args["build"], time.monotonic() + float(args["compile_timeout_s"]), "build.log")
    built = build.wait()
    _send(5, json.dumps({"compiled": built, "errors": "" if built else build.errors}).encode())
    if not built or _receive(4, None) != b"go":  # the tests' program runs: only now the solution's may
        return
    _program_limits(args)
    os.execve(f"./{args['binary']}", [f"./{args['binary']}"], dict(os.environ))


def driver(args: dict[str, Any]) -> None:
    record = _drive(args)
    os.write(3, (json.dumps(record) + "\n").encode())


def _drive(args: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + float(args["compile_timeout_s"])
    prebuilt = args.get("prebuilt")
    if prebuilt:  # built once for this task (by the hash of its sources) in a build run of its own
        _write_files({}, {args["binary"]: prebuilt}, 0o755)
        build = None
    else:
        _write_files(args["files"])
        build = Build(args["build"], deadline, "tests.log")
    status = _receive(4, deadline + 1.0)  # the candidate's build runs meanwhile
    built = build.wait() if build is not None else True
    if status is None:
        return {"compiled": False, "compiler_errors": ["the solution's build did not finish (compile_timeout_s, or the memory limit)"]}
    try:
        theirs = json.loads(status)
        compiled, errors = bool(theirs["compiled"]), str(theirs.get("errors") or "")
    except (ValueError, KeyError, TypeError):
        return {"compiled": False, "compiler_errors": ["the solution's side broke the protocol"]}
    if not compiled:
        return {"compiled": False, "compiler_errors": errors.splitlines()[:20]}
    if not built:
        assert build is not None
        return {"compiled": True, "tests_error": build.errors.splitlines()[:20]}
    record: dict[str, Any] = {"compiled": True}
    for name in os.listdir("."):  # the sources and the build's output go; the program unlinks itself once it runs
        if name != args["binary"]:
            os.unlink(name)
    events_r, events_w = os.pipe()
    _program_limits(args)
    with open("tests.stderr", "wb") as stderr:
        proc = subprocess.Popen(
            [f"./{args['binary']}", "5", "4", str(events_w)],
            pass_fds=(4, 5, events_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    for fd in (4, 5, events_w):
        os.close(fd)
    sites = int(args["sites"])
    state = [0] * sites  # 0 never ran, 1 passed (so far), 2 failed
    ended, stopped = False, None
    deadline = time.monotonic() + float(args["timeout_s"])
    pending = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([events_r], [], [], left)[0]:
            stopped = "timed out"
            break
        chunk = os.read(events_r, 4096)
        if not chunk:
            break
        pending += chunk
        while len(pending) >= 5:
            kind, k = pending[0:1], struct.unpack("<I", pending[1:5])[0]
            pending = pending[5:]
            if kind == b"E":
                ended = True
            elif k < sites:
                state[k] = 1 if kind == b"P" and state[k] == 0 else 2 if kind == b"F" else state[k]
    _kill_group(proc)
    os.close(events_r)
    if stopped is None and not ended:
        code = proc.returncode
        stopped = f"killed by {_signal_name(-code)}" if code is not None and code < 0 else "the tests' program exited early"
    failures = [{"check": k, "error": "failed" if s == 2 else "did not run"} for k, s in enumerate(state) if s != 1]
    record.update(passed=state.count(1), total=sites, failures=failures[:10])
    if stopped:
        record["stopped"] = stopped
        tail = _head("tests.stderr").strip().splitlines()[-3:]
        if tail:
            record["stderr"] = tail
    return record


# ---------------------------------------------------------------- single runs: compile only, I/O cases


def build(args: dict[str, Any]) -> None:
    """Compile only; with `return_binary`, the program comes back too (ours: a tests' program, the wire's object)."""
    _write_files(args["files"], args.get("binary_files"))
    b = Build(args["build"], time.monotonic() + float(args["compile_timeout_s"]), "build.log")
    ok = b.wait()
    record: dict[str, Any] = {"compiled": ok, "compiler_errors": [] if ok else b.errors.splitlines()[:20]}
    if ok and args.get("return_binary") and os.path.getsize(args["binary"]) <= BINARY_CAP:
        with open(args["binary"], "rb") as f:
            record["binary"] = base64.b64encode(f.read()).decode()
    os.write(3, (json.dumps(record) + "\n").encode())


def cases(args: dict[str, Any]) -> None:
    _write_files(args["files"])
    b = Build(args["build"], time.monotonic() + float(args["compile_timeout_s"]), "build.log")
    if not b.wait():
        os.write(3, (json.dumps({"compiled": False, "compiler_errors": b.errors.splitlines()[:20]}) + "\n").encode())
        return
    os.write(3, (json.dumps({"compiled": True}) + "\n").encode())
    _not_dumpable()
    _program_limits(args)
    binary, cap, timeout = args["binary"], int(args["output_cap"]), float(args["timeout_s"])
    os.chmod(binary, 0o500)
    for i, stdin in enumerate(args["inputs"]):
        out, why = _one_case(binary, stdin, cap, timeout)
        os.write(3, (json.dumps({"case": i, "stdout": out.decode("utf-8", errors="replace"), "why": why}) + "\n").encode())


def _one_case(binary: str, stdin: str, cap: int, timeout: float) -> tuple[bytes, str | None]:
    """One case: a fresh directory with a copy of the program, its input on a sealed memfd, stdout capped."""
    work = f"case-{secrets.token_hex(8)}"
    os.mkdir(work, 0o700)
    shutil.copyfile(binary, os.path.join(work, "prog"))
    os.chmod(os.path.join(work, "prog"), 0o500)
    memfd = os.memfd_create("stdin", os.MFD_ALLOW_SEALING)
    os.write(memfd, stdin.encode())
    fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    os.lseek(memfd, 0, os.SEEK_SET)
    proc = subprocess.Popen(["./prog"], cwd=work, stdin=memfd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    os.close(memfd)
    assert proc.stdout is not None
    fd, exited = proc.stdout.fileno(), os.pidfd_open(proc.pid)
    chunks, size, why = [], 0, None
    deadline, ended = time.monotonic() + timeout, None
    while True:  # stdout until it closes; once the program exited, what it left holding the pipe gets 0.2 s
        left = (deadline if ended is None else min(deadline, ended + 0.2)) - time.monotonic()
        ready = select.select([fd, exited] if ended is None else [fd], [], [], max(0.0, left))[0] if left > 0 else []
        if not ready:
            why = "timed out" if ended is None else None
            break
        if exited in ready:
            ended = time.monotonic()
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        size += len(chunk)
        if size > cap:
            why = "output limit exceeded"
            break
        chunks.append(chunk)
    os.close(exited)
    if why is None and ended is None:  # stdout closed first: the program still has until the deadline to end
        try:
            proc.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            why = "timed out"
    _kill_group(proc)
    proc.stdout.close()
    if why is None and proc.returncode < 0:
        why = f"killed by {_signal_name(-proc.returncode)}"
    if os.getpid() == 1:  # the run's own pid namespace: nothing a case started survives into the next
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, 0)[0] > 0:  # as its init, reap them (zombies count against the processes limit)
                pass
    shutil.rmtree(work, ignore_errors=True)
    return b"".join(chunks), why
