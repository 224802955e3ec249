"""Start runs: one long-lived zygote per pipeline process and kind of run forks every run.

A sample costs a fork, not an interpreter start. Under bubblewrap the zygote lives in its own
pid/net/ipc/uts (and, unprivileged, user) namespaces with read-only system binds, and each run gets
new pid/mount/ipc/net/uts namespaces of its own, a private tmpfs as /tmp holding its work dir, and a
fresh unprivileged uid when the pipeline is root; bubblewrap's --die-with-parent takes everything
down with the pipeline (SIGKILL included), and nothing lands on the host's disk. With `rlimits`
the runs are plain processes: a fresh uid when root, rlimits, a child subreaper that kills what they
leave, and a zygote that cleans up when the pipeline dies. What runs inside is `_zygote.py`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import queue
import secrets
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from halo_pipeline.sandbox import limits as budgets
from halo_pipeline.sandbox import seccomp
from halo_pipeline.sandbox.bubblewrap import SAFE_PATH, Mode, SandboxUnavailable, _binds_under_tmp, bwrap_argv, require, world_reachable
from halo_pipeline.sandbox.limits import Limits

ZYGOTE_SOURCE = Path(__file__).with_name("_zygote.py")
# Modules a forked sample finds already loaded (an import costs nothing then).
_COMMON = (
    "abc array bisect cmath collections copy dataclasses datetime decimal enum fractions functools hashlib heapq io itertools json math"
)
COMMON_MODULES = tuple(
    (_COMMON + " numbers operator random re statistics string struct textwrap time traceback typing unicodedata").split()
)


@dataclass
class RunResult:
    returncode: int | None
    stdout: str
    stderr: str
    records: list[str]  # result-pipe lines (with a nonce: only those that carried it, nonce stripped)
    wall_s: float
    timed_out: bool = False
    output_exceeded: bool = False
    extra_lines: int = 0  # result-pipe lines without the nonce (someone else wrote there)
    files: dict[str, bytes] = field(default_factory=dict)
    result: bytes = b""  # the raw result pipe
    error: str | None = None  # the sandbox itself failed (setup, a dead zygote)

    @property
    def killed_reason(self) -> str | None:
        if self.error:
            return self.error
        if self.timed_out:
            return "timed out"
        if self.output_exceeded:
            return "output limit exceeded"
        if self.returncode is not None and self.returncode < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-self.returncode).name}"
            return f"killed by signal {-self.returncode}"
        return None


def new_nonce() -> str:
    return "HALO-" + secrets.token_hex(16) + ":"


def run(argv: list[str] | None = None, **kwargs: Any) -> RunResult:
    """Run `argv` (or a harness `role`) sandboxed and wait for it; see `start` for the arguments."""
    return start(argv, **kwargs).wait()


def start(
    argv: list[str] | None = None,
    *,
    role: str | None = None,
    pair: tuple[str, str] | None = None,
    args: Mapping[str, Any] | None = None,
    files: Mapping[str, str | bytes] | None = None,
    executable: Iterable[str] = (),
    limits: Limits = Limits(),
    stdin: str | bytes | None = None,
    secrets_on_fds: Mapping[int, str | bytes] | None = None,
    nonce: str | None = None,
    result: bool = False,
    collect: Iterable[str] = (),
    proc: bool = True,
    mode: str | None = None,
    ro_binds: Iterable[str] = (),
    modules: Iterable[str | Path] = (),
    preimport: Iterable[str] = (),
) -> Launched:
    """Start one sandboxed run in a fresh work dir holding `files` (`executable` ones mode 0755).

    `argv` is exec'd; or `role` ("module:function" of one of `modules`, harness files preloaded in
    the zygote) is called with `args` in a forked interpreter. `pair` = (driver role, candidate role)
    runs both, joined by pipes (the driver's fds 4/5 are the candidate's 5/4): the candidate confined
    like any run, the driver in the supervisor itself under a second fresh uid; `args` is then
    {"driver": ..., "candidate": ...}, the driver's fd 3 comes back as `result` and the candidate's
    stderr as `stderr`. The two argument sets travel in two memfds: the supervisor forks the
    candidate before it reads the driver's, so nothing of the tests is ever in the candidate's memory.

    `{result_fd}` in argv (or `result=True`) gives the run a result pipe on fd 3, returned as `result`
    and, split into lines, as `records` (only those carrying `nonce`, when given). `stdin` becomes
    fd 0 as a sealed memfd; `secrets_on_fds` are one-shot pipes at those fds. `collect` names work-dir
    files to read back. `proc=False` hides /proc from the run (bubblewrap): no /proc/self/mem, no
    /proc/self/fd to reopen pipes by.
    """
    iso = require(mode)
    if argv is not None and any("{result_fd}" in a for a in argv):
        argv, result = [a.replace("{result_fd}", "3") for a in argv], True
    spec_collect = list(collect)
    zygote = _zygote(iso.name, tuple(sorted(set(ro_binds))), tuple(str(m) for m in modules), tuple(preimport))
    spec = {
        "exec": argv,
        "role": role,
        "pair": list(pair) if pair else None,
        "limits": limits.model_dump(),
        "budget": budgets.budget().for_run(limits),
        "result": result,
        "collect": spec_collect,
        "proc": proc,
    }
    all_args = dict(args or {})
    if pair:  # the candidate's payload holds its own arguments only: the tests travel in a second memfd
        payloads = [_payload(files or {}, set(executable), stdin, secrets_on_fds or {}, dict(all_args.get("candidate") or {}))]
        payloads.append(_payload({}, set(), None, {}, dict(all_args.get("driver") or {})))
    else:
        payloads = [_payload(files or {}, set(executable), stdin, secrets_on_fds or {}, all_args)]
    # what may come back: the header and result pipe, two capped streams, each collected file at most file_size_mb
    cap = (2 << 20) + 2 * (limits.output_kb << 10) + len(spec_collect) * (limits.file_size_mb << 20)
    return zygote.launch(spec, payloads, limits.timeout_s, nonce, cap)


def _payload(
    files: Mapping[str, str | bytes],
    executable: set[str],
    stdin: str | bytes | None,
    pipes: Mapping[int, str | bytes],
    args: dict[str, Any],
) -> int:
    """Everything sample-specific goes in a memfd only the run's supervisor reads (never the zygote)."""
    encode = lambda v: v.encode() if isinstance(v, str) else bytes(v)  # noqa: E731
    blobs = [encode(v) for v in files.values()]
    header: dict[str, Any] = {
        "files": [[name, len(b), 0o755 if name in executable else 0o644] for name, b in zip(files, blobs, strict=True)]
    }
    if stdin is not None:
        blobs.append(encode(stdin))
        header["stdin"] = len(blobs[-1])
    header["pipes"] = []
    for fd, content in pipes.items():
        blobs.append(encode(content))
        header["pipes"].append([fd, len(blobs[-1])])
    header["args"] = args
    header["sizes"] = [len(b) for b in blobs]
    raw = json.dumps(header).encode()
    fd = os.memfd_create("halo-payload", os.MFD_CLOEXEC)
    with os.fdopen(os.dup(fd), "wb") as f:
        f.write(struct.pack(">I", len(raw)) + raw)
        for blob in blobs:
            f.write(blob)
    return fd


class Launched:
    """A run in progress: `wait()` for its result, `kill()` to end it early."""

    def __init__(self, status_fd: int, control_fd: int, timeout_s: float, nonce: str | None, cap: int = 1 << 30):
        self.status_fd, self.control_fd, self.nonce, self.cap = status_fd, control_fd, nonce, cap
        self.deadline = time.monotonic() + timeout_s + 10.0  # the supervisor enforces timeout_s; this only guards against its loss
        self._result: RunResult | None = None

    def kill(self) -> None:
        if self.control_fd >= 0:
            os.close(self.control_fd)  # the supervisor sees EOF and kills the run
            self.control_fd = -1

    def wait(self) -> RunResult:
        if self._result is None:
            try:
                self._result = self._read()
            finally:
                self.kill()
                os.close(self.status_fd)
        return self._result

    def _read(self) -> RunResult:
        raw = bytearray()  # one buffer, never more than the cap: the report's blobs are copied out of it once
        with selectors.DefaultSelector() as sel:
            sel.register(self.status_fd, selectors.EVENT_READ)
            while True:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    return RunResult(None, "", "", [], 0.0, timed_out=True, error="the sandbox did not report in time")
                if not sel.select(left):
                    continue
                chunk = os.read(self.status_fd, 1 << 20)
                if not chunk:
                    break
                if len(raw) + len(chunk) > self.cap:
                    self.kill()
                    return RunResult(None, "", "", [], 0.0, error=f"the run's report exceeded {self.cap >> 20} MB")
                raw += chunk
        if len(raw) < 4:
            return RunResult(None, "", "", [], 0.0, error="the sandbox ended without a report (its zygote died?)")
        (size,) = struct.unpack(">I", raw[:4])
        header = json.loads(bytes(raw[4 : 4 + size]))
        offset, blobs, view = 4 + size, {}, memoryview(raw)
        for name, n in [*header.get("outputs", []), *header.get("files", [])]:
            blobs[name] = bytes(view[offset : offset + n])
            offset += n
        view.release()
        del raw
        res = blobs.pop("res", b"")
        out, err = blobs.pop("out", b""), blobs.pop("err", b"")
        records, extra = [], 0
        for line in res.decode("utf-8", errors="replace").splitlines():
            if self.nonce is None:
                if line.strip():
                    records.append(line)
            elif line.startswith(self.nonce):
                records.append(line[len(self.nonce) :])
            elif line.strip():
                extra += 1
        return RunResult(
            header.get("returncode"),
            out.decode("utf-8", errors="replace"),
            err.decode("utf-8", errors="replace"),
            records,
            float(header.get("wall_s", 0.0)),
            bool(header.get("timed_out")),
            bool(header.get("output_exceeded")),
            extra,
            {name: blobs[name] for name, _ in header.get("files", []) if name in blobs},
            res,
            header.get("error"),
        )


# ---------------------------------------------------------------- zygotes


class Zygote:
    """One long-lived zygote: started from a thread that lives as long as the process (bubblewrap's
    --die-with-parent follows the *thread* that started it), restarted if it dies."""

    def __init__(self, mode: Mode, binds: tuple[str, ...], modules: tuple[str, ...], preimport: tuple[str, ...]):
        self.mode, self.binds, self.modules, self.preimport = mode, binds, modules, preimport
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.log: Any = None

    def launch(self, spec: dict[str, Any], payload_fds: list[int], timeout_s: float, nonce: str | None, cap: int) -> Launched:
        status_r, status_w = os.pipe()
        control_r, control_w = os.pipe()
        message = json.dumps(spec).encode()
        try:
            with self.lock:
                for attempt in (0, 1):
                    if self.sock is None or self.proc is None or self.proc.poll() is not None:
                        self._start()
                    try:
                        socket.send_fds(self.sock, [message], [status_w, control_r, *payload_fds])  # type: ignore[arg-type]
                        break
                    except OSError:
                        self._stop()
                        if attempt:
                            raise
        except BaseException:
            for fd in (status_r, control_w):
                os.close(fd)
            raise
        finally:
            for fd in (status_w, control_r, *payload_fds):
                os.close(fd)
        return Launched(status_r, control_w, timeout_s, nonce, cap)

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the zygote)
        boot = (
            "import socket,sys,types;m=types.ModuleType('halo_zygote');sys.modules['halo_zygote']=m;"
            "s=socket.socket(fileno=int(sys.argv[1]));exec(compile(s.recv(1<<22),'halo_zygote','exec'),m.__dict__);"
            "s.detach();m.main(int(sys.argv[1]))"
        )
        command = [sys.executable, "-I", "-S", "-c", boot, str(theirs.fileno())]
        budget = budgets.budget()
        if self.mode == "bubblewrap":  # (runs move into cgroups outside the zygote's: no cgroup namespace then)
            command = bwrap_argv(self.binds, cgroup_namespace=not budget.cgroup) + command
        env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}
        cgroup_fds = [os.open(path, os.O_RDONLY | os.O_DIRECTORY) for path in budget.dirs]
        try:
            self.proc = _spawn(
                lambda: subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=self.log,
                    stderr=self.log,
                    pass_fds=(theirs.fileno(), *cgroup_fds),
                    env=env,
                    start_new_session=True,  # no terminal signals: Ctrl-C is the pipeline's to handle
                )
            )
        finally:
            theirs.close()
            for fd in cgroup_fds:
                os.close(fd)
        self.sock = ours
        hello = {
            "namespaces": self.mode == "bubblewrap",
            "tmp": _host_tmp(self.mode),
            "site_paths": _site_paths(),
            "modules": {Path(m).stem.lstrip("_"): Path(m).read_text() for m in self.modules},
            "preimport": [*COMMON_MODULES, *self.preimport],
            "binds_under_tmp": _binds_under_tmp(self.binds),
            "seccomp": seccomp.program().hex(),
            "cgroup": {"version": budget.cgroup, "fds": cgroup_fds},
        }
        try:
            ours.sendall(ZYGOTE_SOURCE.read_bytes())
            ours.sendall(json.dumps(hello).encode())
            ours.settimeout(120)
            ack = ours.recv(1 << 16)
            ours.settimeout(None)
        except OSError as exc:
            ack, why = b"", str(exc)
        else:
            why = "it exited"
        if not ack:
            self._stop()
            self.log.seek(0)
            tail = self.log.read().decode(errors="replace").strip().splitlines()[-3:]
            raise SandboxUnavailable(f"the sandbox did not start ({why}): {' | '.join(tail) or 'no output'}")

    def _stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.wait(timeout=5)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


_zygotes: dict[tuple[Any, ...], Zygote] = {}
_zygotes_lock = threading.Lock()


def _zygote(mode: Mode, binds: tuple[str, ...], modules: tuple[str, ...], preimport: tuple[str, ...]) -> Zygote:
    key = (mode, binds, modules, preimport)
    with _zygotes_lock:
        if key not in _zygotes:
            _zygotes[key] = Zygote(mode, binds, modules, preimport)
        return _zygotes[key]


@atexit.register
def shutdown() -> None:
    """Close every zygote (each then kills what is left of its runs and exits)."""
    with _zygotes_lock:
        zygotes = list(_zygotes.values())
        _zygotes.clear()
    for z in zygotes:
        with z.lock:
            z._stop()
    budgets.release()  # every run's cgroup went with its zygote: now this process's own


def _forget_after_fork() -> None:
    """A forked child must not share its parent's zygotes (their sockets are the parent's lifeline);
    it starts its own, with fresh locks (another thread may have held one at the fork)."""
    global _zygotes_lock
    for z in _zygotes.values():
        if z.sock is not None:
            z.sock.close()
    _zygotes.clear()
    _spawner.clear()
    _zygotes_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)

_spawner: list[queue.Queue[Any]] = []


def _spawn(fn: Any) -> Any:
    """Run `fn` on a thread that lives until the process exits."""
    with _zygotes_lock:
        if not _spawner:
            jobs: queue.Queue[Any] = queue.Queue()

            def serve() -> None:
                while True:
                    job, done = jobs.get()
                    try:
                        done.set_result(job())
                    except BaseException as exc:
                        done.set_exception(exc)

            threading.Thread(target=serve, name="halo-sandbox-spawner", daemon=True).start()
            _spawner.append(jobs)
        jobs = _spawner[0]
    done: Future[Any] = Future()
    jobs.put((fn, done))
    return done.result()


def _host_tmp(mode: Mode) -> str:
    """Where rlimits runs get their work dirs: the temp dir, if the unprivileged sample uid can reach it."""
    tmp = tempfile.gettempdir()
    if mode == "rlimits" and os.geteuid() == 0 and not world_reachable(tmp):
        return "/tmp"  # e.g. TMPDIR under /root: a run's fresh uid could not even enter its work dir
    return tmp


@functools.cache
def _site_paths() -> list[str]:
    """This environment's site-packages, so sandboxed code can import what is installed (the zygote runs with -S)."""
    import site

    return [p for p in site.getsitepackages() if Path(p).is_dir()]
