"""Run untrusted (model-written) programs: each run in a fresh, isolated, resource-limited process.

Secure by default: code runs only under **bubblewrap**; without it, running code is refused with the
line that installs it, unless the user opts down explicitly (`sandbox: rlimits` in the verifier's
settings, `--sandbox rlimits`, or HALO_PIPELINE_SANDBOX=rlimits), which is announced on the terminal
and recorded in the manifest.

One long-lived *zygote* per pipeline process and kind of run (`_sandbox_zygote.py`) forks every run,
so a sample costs a fork, not an interpreter start. Under bubblewrap the zygote lives in its own
pid/net/ipc/uts (and, unprivileged, user) namespaces with read-only system binds, and each run gets
new pid/mount/ipc/net/uts namespaces of its own, a private tmpfs as /tmp holding its work dir, and a
fresh unprivileged uid when the pipeline is root; bubblewrap's --die-with-parent takes everything
down with the pipeline (SIGKILL included), and nothing lands on the host's disk. With `rlimits`
the runs are plain processes: a fresh uid when root, rlimits, a child subreaper that kills what they
leave, and a zygote that cleans up when the pipeline dies.

Every run: an empty environment, no capabilities, no-new-privs, rlimits (CPU, address space, file
size, open files, processes), a wall-clock deadline, capped stdout/stderr, stdin from /dev/null or a
sealed memfd (never a file the parent reopens), an optional result pipe (fd 3), and files written
into and read back from its work dir without following links or blocking on FIFOs.
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
import shutil
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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SYSTEM_RO_BINDS = ("/usr", "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d")
USR_MERGED_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
ZYGOTE_SOURCE = Path(__file__).with_name("_sandbox_zygote.py")
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"
# Modules a forked sample finds already loaded (an import costs nothing then).
_COMMON = (
    "abc array bisect cmath collections copy dataclasses datetime decimal enum fractions functools hashlib heapq io itertools json math"
)
COMMON_MODULES = tuple(
    (_COMMON + " numbers operator random re statistics string struct textwrap time traceback typing unicodedata").split()
)
Mode = Literal["bubblewrap", "rlimits"]


class SandboxUnavailable(RuntimeError):
    """Model-written code cannot run here with the isolation asked for."""


class Limits(BaseModel):
    """Per-sample resource limits (each verifier that runs code exposes them as settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    timeout_s: float = Field(10.0, gt=0, description="Wall-clock limit per run, enforced by the parent.")
    cpu_s: int = Field(10, ge=1, description="CPU seconds per process (RLIMIT_CPU).")
    memory_mb: int = Field(1024, ge=64, description="Address space per process (RLIMIT_AS).")
    file_size_mb: int = Field(16, ge=1, description="Largest file a process may write (RLIMIT_FSIZE).")
    open_files: int = Field(64, ge=16, description="Open file descriptors per process (RLIMIT_NOFILE).")
    processes: int = Field(32, ge=4, description="Processes and threads the sample may run at once (RLIMIT_NPROC).")
    output_kb: int = Field(256, ge=1, description="stdout/stderr kept per stream; more output kills the run.")
    tmp_mb: int = Field(64, ge=1, description="Size of the run's private /tmp, which holds its work dir (bubblewrap only).")


@dataclass(frozen=True)
class Isolation:
    name: Mode  # what runs: "bubblewrap" or the opted-in "rlimits"
    reason: str = ""  # why bubblewrap is unavailable, or how rlimits was chosen
    available: bool = True

    @property
    def warning(self) -> str | None:
        if self.name == "bubblewrap":
            return None
        return (
            f"model-written code runs without OS isolation ({self.reason}): rlimits, a timeout, a fresh uid when root and "
            "cleanup of every process it starts apply, but the file system and the network are reachable. "
            f"For isolation, {INSTALL_HINT} and drop the opt-in."
        )

    def refusal(self) -> str:
        return (
            f"model-written code runs only under bubblewrap, which is unavailable here ({self.reason}): {INSTALL_HINT}, "
            "or accept weaker isolation explicitly with `sandbox: rlimits` in the verifier's settings "
            "(halo-pipeline verifiers run: --sandbox rlimits)"
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


# ---------------------------------------------------------------- which isolation


def effective_mode(mode: str | None = None) -> Mode:
    """`rlimits` when the verifier's settings or HALO_PIPELINE_SANDBOX opt down, else bubblewrap."""
    if mode == "rlimits" or os.environ.get("HALO_PIPELINE_SANDBOX") == "rlimits":
        return "rlimits"
    return "bubblewrap"


def isolation(mode: str | None = None) -> Isolation:
    chosen = effective_mode(mode)
    if chosen == "rlimits":
        how = "sandbox: rlimits" if mode == "rlimits" else "HALO_PIPELINE_SANDBOX=rlimits"
        return Isolation("rlimits", f"opted in with {how}")
    return _probe_bubblewrap()


def require(mode: str | None = None) -> Isolation:
    """The isolation runs will get, or SandboxUnavailable with the one line that fixes it."""
    iso = isolation(mode)
    if not iso.available:
        raise SandboxUnavailable(iso.refusal())
    if iso.warning:
        _warn_once(iso.warning)
    return iso


def describe(mode: str | None = None) -> dict[str, object]:
    """What the manifest records about code execution."""
    iso = isolation(mode)
    facts: dict[str, object] = {"isolation": iso.name, "reason": iso.reason or None, "warning": iso.warning}
    if not iso.available:
        facts["error"] = iso.refusal()
    return facts


@functools.cache
def _probe_bubblewrap() -> Isolation:
    """Whether bubblewrap works here, by running a real sandboxed `true` with the zygote's flags."""
    if not sys.platform.startswith("linux"):
        return Isolation("bubblewrap", f"bubblewrap needs Linux, this is {sys.platform}", available=False)
    if shutil.which("bwrap") is None:
        return Isolation("bubblewrap", "bwrap is not installed", available=False)
    argv = _bwrap_argv(()) + ["/bin/true"]
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, env={"PATH": SAFE_PATH})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Isolation("bubblewrap", f"bwrap failed to start: {exc}", available=False)
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        return Isolation("bubblewrap", f"bwrap does not work here: {detail[-1] if detail else proc.returncode}", available=False)
    return Isolation("bubblewrap")


_warned: set[str] = set()


def _warn_once(text: str) -> None:
    if text not in _warned:
        _warned.add(text)
        print(f"halo-pipeline: warning: {text}", file=sys.stderr, flush=True)


def world_reachable(path: str) -> bool:
    """Whether another uid can reach `path` (every directory on the way is world-searchable)."""
    real = Path(os.path.realpath(path))
    return all(os.stat(p).st_mode & 0o001 for p in [*real.parents, real] if p.is_dir())


# ---------------------------------------------------------------- running


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
    zygote = _zygote(iso.name, tuple(sorted(set(ro_binds))), tuple(str(m) for m in modules), tuple(preimport))
    spec = {
        "exec": argv,
        "role": role,
        "pair": list(pair) if pair else None,
        "limits": limits.model_dump(),
        "result": result,
        "collect": list(collect),
        "proc": proc,
    }
    all_args = dict(args or {})
    if pair:  # the candidate's payload holds its own arguments only: the tests travel in a second memfd
        payloads = [_payload(files or {}, set(executable), stdin, secrets_on_fds or {}, dict(all_args.get("candidate") or {}))]
        payloads.append(_payload({}, set(), None, {}, dict(all_args.get("driver") or {})))
    else:
        payloads = [_payload(files or {}, set(executable), stdin, secrets_on_fds or {}, all_args)]
    return zygote.launch(spec, payloads, limits.timeout_s, nonce)


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

    def __init__(self, status_fd: int, control_fd: int, timeout_s: float, nonce: str | None):
        self.status_fd, self.control_fd, self.nonce = status_fd, control_fd, nonce
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
        chunks: list[bytes] = []
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
                chunks.append(chunk)
        raw = b"".join(chunks)
        if len(raw) < 4:
            return RunResult(None, "", "", [], 0.0, error="the sandbox ended without a report (its zygote died?)")
        (size,) = struct.unpack(">I", raw[:4])
        header = json.loads(raw[4 : 4 + size])
        offset, blobs = 4 + size, {}
        for name, n in [*header.get("outputs", []), *header.get("files", [])]:
            blobs[name] = raw[offset : offset + n]
            offset += n
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

    def launch(self, spec: dict[str, Any], payload_fds: list[int], timeout_s: float, nonce: str | None) -> Launched:
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
        return Launched(status_r, control_w, timeout_s, nonce)

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the zygote)
        boot = (
            "import socket,sys,types;m=types.ModuleType('halo_zygote');sys.modules['halo_zygote']=m;"
            "s=socket.socket(fileno=int(sys.argv[1]));exec(compile(s.recv(1<<22),'halo_zygote','exec'),m.__dict__);"
            "s.detach();m.main(int(sys.argv[1]))"
        )
        command = [sys.executable, "-I", "-S", "-c", boot, str(theirs.fileno())]
        if self.mode == "bubblewrap":
            command = _bwrap_argv(self.binds) + command
        env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}
        try:
            self.proc = _spawn(
                lambda: subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=self.log,
                    stderr=self.log,
                    pass_fds=(theirs.fileno(),),
                    env=env,
                    start_new_session=True,  # no terminal signals: Ctrl-C is the pipeline's to handle
                )
            )
        finally:
            theirs.close()
        self.sock = ours
        hello = {
            "namespaces": self.mode == "bubblewrap",
            "tmp": _host_tmp(self.mode),
            "site_paths": _site_paths(),
            "modules": {Path(m).stem.lstrip("_"): Path(m).read_text() for m in self.modules},
            "preimport": [*COMMON_MODULES, *self.preimport],
            "binds_under_tmp": _binds_under_tmp(self.binds),
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


def _binds_under_tmp(binds: tuple[str, ...]) -> list[list[str]]:
    """Binds that a run's private /tmp would hide: each is also bound at a stash path the run re-binds from."""
    tmp = os.path.realpath(tempfile.gettempdir()).rstrip("/") + "/"
    paths = [p for p in _interpreter_paths(binds) if (p.rstrip("/") + "/").startswith(("/tmp/", tmp))]
    return [[p, f"/.halo-binds/{i}"] for i, p in enumerate(paths)]


def _bwrap_argv(binds: tuple[str, ...]) -> list[str]:
    args = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    if os.geteuid() != 0:
        args += ["--unshare-user", "--cap-add", "ALL"]  # capabilities inside the user namespace only; every run drops them
    else:  # root: no user namespace, so each run can move to its own host uid
        for cap in ("CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL"):
            args += ["--cap-add", cap]
    args += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
    # the private /tmp first: binds below it (a venv under /tmp) must land on top of it
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    made: set[str] = {"/", "/tmp", "/proc", "/dev"}

    def bind(path: str, target: str | None = None) -> None:
        target = target or path
        for parent in [str(p) for p in reversed(Path(target).parents)]:
            if parent not in made:  # bwrap would create these 0700: keep them traversable for the sample's uid
                args.extend(["--perms", "0755", "--dir", parent])
                made.add(parent)
        args.extend(["--ro-bind", path, target])
        made.add(target)

    for path in SYSTEM_RO_BINDS:
        if os.path.exists(path):
            bind(path)
    for link in USR_MERGED_LINKS:
        if os.path.islink(link):
            args += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            bind(link)
        made.add(link)
    for path in _interpreter_paths(binds):
        bind(path)
    for path, stash in _binds_under_tmp(binds):
        bind(path, stash)
    return args + ["--chdir", "/", "--"]


def _interpreter_paths(extra: Iterable[str]) -> list[str]:
    """Read-only binds beyond /usr: this Python's prefixes (venvs and pyenv installs live elsewhere) and `extra`."""
    paths = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, *extra)}
    paths |= {os.path.realpath(sys.executable)}
    keep = sorted(p for p in paths if os.path.exists(p) and not p.startswith("/usr/") and p != "/usr")
    # a path inside another bound path needs no bind of its own
    return [p for p in keep if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in keep)]
