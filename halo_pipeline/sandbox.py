"""Run untrusted (model-written) programs: one fresh, isolated, resource-limited process per sample.

Layers, outermost first:
- the parent enforces a wall-clock timeout and kills the whole process group, then sweeps any
  process that escaped it (a per-sample uid when we are root; an environment marker otherwise);
- rlimits (CPU, address space, file size, open files, processes) set by `prlimit` before exec;
- bubblewrap when it works here: new pid/net/ipc/uts namespaces (no network, nothing outlives the
  sample), read-only system binds, a private size-capped /tmp, the sample's own work dir as the
  only writable place; as root it then drops to a fresh unprivileged uid (so the process limit
  applies and nothing host-owned is writable). Without bubblewrap the rlimit layer runs alone and
  `isolation()` says so, with the reason, for the manifest.

The sandboxed program gets an empty environment (no tokens, no keys), stdin from /dev/null (or a
file the caller gives), capped stdout/stderr, and one extra pipe (`{result_fd}` in argv) on which
a harness reports results tagged with a nonce the program under test never sees.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

SYSTEM_RO_BINDS = ("/usr", "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d")
USR_MERGED_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
MARKER_VAR = "HALO_SANDBOX_ID"


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
    tmp_mb: int = Field(64, ge=1, description="Size of the private /tmp (bubblewrap only).")


@dataclass(frozen=True)
class Isolation:
    name: str  # "bubblewrap" or "rlimits"
    reason: str = ""  # why bubblewrap is not used, when it is not

    @property
    def warning(self) -> str | None:
        if self.name == "bubblewrap":
            return None
        return (
            f"model-written code runs without OS isolation ({self.reason}): only rlimits and a timeout apply; "
            "the network and the file system are reachable. Install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap)."
        )


@dataclass
class RunResult:
    returncode: int | None
    stdout: str
    stderr: str
    records: list[str]  # lines from the result pipe that carried the nonce, nonce stripped
    wall_s: float
    timed_out: bool = False
    output_exceeded: bool = False
    extra_lines: int = 0  # result-pipe lines without the nonce (someone else wrote there)
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def killed_reason(self) -> str | None:
        if self.timed_out:
            return "timed out"
        if self.output_exceeded:
            return "output limit exceeded"
        if self.returncode is not None and self.returncode < 0:
            return f"killed by {signal.Signals(-self.returncode).name}"
        return None


@functools.cache
def isolation() -> Isolation:
    """Which isolation this machine gives; probed once by running a real sandboxed `true`."""
    if os.environ.get("HALO_PIPELINE_SANDBOX") == "rlimits":
        return Isolation("rlimits", "HALO_PIPELINE_SANDBOX=rlimits")
    if not sys.platform.startswith("linux"):
        return Isolation("rlimits", f"bubblewrap needs Linux, this is {sys.platform}")
    if shutil.which("bwrap") is None:
        return Isolation("rlimits", "bwrap is not installed")
    with tempfile.TemporaryDirectory(prefix="halo-sbx-probe-") as work:
        uid = _sample_uid(with_bwrap=True)
        if uid is not None:
            os.chown(work, uid, uid)
        argv = _bwrap_argv(Path(work), uid, Limits(), ["/bin/true"])
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, env={"PATH": SAFE_PATH})
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Isolation("rlimits", f"bwrap failed to start: {exc}")
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        return Isolation("rlimits", f"bwrap does not work here: {detail[-1] if detail else proc.returncode}")
    return Isolation("bubblewrap")


def describe() -> dict[str, object]:
    """What the manifest records about code execution."""
    iso = isolation()
    return {"isolation": iso.name, "reason": iso.reason or None, "warning": iso.warning}


def run(
    argv: list[str],
    *,
    files: Mapping[str, str | bytes] | None = None,
    limits: Limits = Limits(),
    stdin_file: str | None = None,
    ro_binds: Iterable[str] = (),
    nonce: str | None = None,
    collect: Iterable[str] = (),
    workdir: Path | None = None,
) -> RunResult:
    """Run `argv` sandboxed in a fresh work dir holding `files`.

    `{result_fd}` in argv becomes the number of the result pipe; lines written there that start
    with `nonce` are returned (the harness reads the nonce from `.nonce`, which the caller puts in
    `files`, and deletes it before running untrusted code). `collect` names work-dir files to read
    back (e.g. a compiled binary). `workdir` reuses a directory the caller owns (compile, then run).
    """
    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="halo-sbx-")) if workdir is None else workdir
    uid = _sample_uid(with_bwrap=isolation().name == "bubblewrap")
    try:
        for name, content in (files or {}).items():
            path = work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        if uid is not None:
            _chown_tree(work, uid)
        return _run_in(work, argv, uid, limits, stdin_file, tuple(ro_binds), nonce, tuple(collect))
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="halo-sbx-"))


def new_nonce() -> str:
    return "HALO-" + secrets.token_hex(16) + ":"


def _run_in(
    work: Path,
    argv: list[str],
    uid: int | None,
    limits: Limits,
    stdin_file: str | None,
    ro_binds: tuple[str, ...],
    nonce: str | None,
    collect: tuple[str, ...],
) -> RunResult:
    read_fd, write_fd = os.pipe()
    marker = secrets.token_hex(8)
    argv = [a.replace("{result_fd}", str(write_fd)) for a in argv]
    iso = isolation()
    if iso.name == "bubblewrap":
        command = _bwrap_argv(work, uid, limits, argv, ro_binds)
    else:
        command = _drop_privileges(uid) + argv
    command = _prlimit(limits, uid) + command
    env = {"PATH": SAFE_PATH, "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8", MARKER_VAR: marker}
    stdin = open(work / stdin_file, "rb") if stdin_file else subprocess.DEVNULL  # noqa: SIM115
    started = time.perf_counter()
    try:
        proc = subprocess.Popen(
            command,
            cwd=work,
            env=env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(write_fd,),
            start_new_session=True,
        )
    finally:
        os.close(write_fd)
        if stdin_file:
            stdin.close()  # type: ignore[union-attr]
    streams = _collect(proc, read_fd, limits)
    _kill_group(proc.pid)  # the sample's leftovers in its session go with it, finished or not
    proc.wait()
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    if iso.name != "bubblewrap":  # with bubblewrap the pid namespace already took everything with it
        _sweep(uid, marker)
    wall = time.perf_counter() - started
    out, err, results = (b"".join(streams.data[name]).decode("utf-8", errors="replace") for name in ("out", "err", "res"))
    timed_out = streams.timed_out
    records, extra = [], 0
    for line in results.splitlines():
        if nonce and line.startswith(nonce):
            records.append(line[len(nonce) :])
        elif line.strip():
            extra += 1
    collected = {}
    for name in collect:
        path = work / name
        if path.is_file() and not path.is_symlink():
            collected[name] = path.read_bytes()
    return RunResult(proc.returncode, out, err, records, wall, timed_out, streams.exceeded, extra, collected)


@dataclass
class _Streams:
    data: dict[str, list[bytes]]
    timed_out: bool = False
    exceeded: bool = False
    exited: bool = False


def _collect(proc: subprocess.Popen[bytes], result_fd: int, limits: Limits) -> _Streams:
    """Read stdout, stderr and the result pipe (each capped) until the process exits and its pipes
    close, or the wall-clock limit passes. One thread, no polling: the process's exit is a pidfd."""
    caps = {"out": limits.output_kb * 1024, "err": limits.output_kb * 1024, "res": 1 << 20}
    streams = _Streams({name: [] for name in caps})
    sizes = dict.fromkeys(caps, 0)
    fds = {proc.stdout.fileno(): "out", proc.stderr.fileno(): "err", result_fd: "res"}  # type: ignore[union-attr]
    sel = selectors.DefaultSelector()
    for fd, name in fds.items():
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, name)
    pidfd = os.pidfd_open(proc.pid) if hasattr(os, "pidfd_open") else None
    if pidfd is not None:
        sel.register(pidfd, selectors.EVENT_READ, "exit")
    deadline = time.monotonic() + limits.timeout_s
    open_pipes, exited_at = len(fds), 0.0
    try:
        while open_pipes or not streams.exited:
            now = time.monotonic()
            # after the exit, give escaped children holding the pipes a moment, not the whole budget
            limit = min(deadline, exited_at + 0.2) if streams.exited else deadline
            if now >= limit:
                streams.timed_out = not streams.exited
                break
            ready = sel.select(min(limit - now, 0.05) if pidfd is None else limit - now)
            if pidfd is None and not streams.exited and proc.poll() is not None:
                streams.exited, exited_at = True, time.monotonic()
            for key, _ in ready:
                name = key.data
                if name == "exit":
                    sel.unregister(key.fd)
                    streams.exited, exited_at = True, time.monotonic()
                    continue
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    open_pipes -= 1
                    continue
                if sizes[name] < caps[name]:
                    streams.data[name].append(chunk[: caps[name] - sizes[name]])
                sizes[name] += len(chunk)
                if sizes[name] > caps[name] and name != "res" and not streams.exceeded:
                    streams.exceeded = True
                    _kill_group(proc.pid)  # keep draining until the pipes close so nothing blocks
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)
        os.close(result_fd)
    return streams


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _sample_uid(with_bwrap: bool) -> int | None:
    """A fresh unprivileged uid per sample when we are root (so RLIMIT_NPROC applies to it alone).

    Without bubblewrap the interpreter is reached through the host's own paths, so the uid drop
    only happens when a stranger could reach it (a Python under /root could not)."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    if not with_bwrap and not all(_world_reachable(p) for p in (sys.executable, sys.prefix, sys.base_prefix)):
        return None
    return random.randrange(1 << 20, 1 << 30)


def _world_reachable(path: str) -> bool:
    real = Path(os.path.realpath(path))
    return all(os.stat(p).st_mode & 0o001 for p in [*real.parents, real] if p.is_dir())


def _chown_tree(root: Path, uid: int) -> None:
    for dirpath, _dirs, names in os.walk(root):
        os.chown(dirpath, uid, uid)
        for name in names:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)


def _drop_privileges(uid: int | None) -> list[str]:
    if uid is None:
        return []
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--no-new-privs",
        "--",
    ]


def _prlimit(limits: Limits, uid: int | None) -> list[str]:
    nproc = limits.processes if uid is not None else _user_process_count() + limits.processes
    return [
        "prlimit",
        f"--cpu={limits.cpu_s}",
        f"--as={limits.memory_mb << 20}",
        f"--fsize={limits.file_size_mb << 20}",
        f"--nofile={limits.open_files}",
        f"--nproc={nproc}",
        "--core=0",
        "--",
    ]


def _user_process_count() -> int:
    """RLIMIT_NPROC counts every process of the real uid, so a non-root budget starts from the current count."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                continue
    return count


def _bwrap_argv(work: Path, uid: int | None, limits: Limits, argv: list[str], ro_binds: Iterable[str] = ()) -> list[str]:
    args = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    if uid is None:
        args += ["--unshare-user"]
    else:  # root: no user namespace, so setpriv can move to the sample's own host uid
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    args += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
    # the private /tmp first: binds below it (a venv or work dir under /tmp) must land on top of it
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(limits.tmp_mb << 20), "--tmpfs", "/tmp"]
    made: set[str] = {"/", "/tmp", "/proc", "/dev"}

    def bind(path: str, option: str = "--ro-bind") -> None:
        for parent in [str(p) for p in reversed(Path(path).parents)]:
            if parent not in made:  # bwrap would create these 0700: keep them traversable for the sample's uid
                args.extend(["--perms", "0755", "--dir", parent])
                made.add(parent)
        args.extend([option, path, path])
        made.add(path)

    for path in SYSTEM_RO_BINDS:
        if os.path.exists(path):
            bind(path)
    for link in USR_MERGED_LINKS:
        if os.path.islink(link):
            args += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            bind(link)
        made.add(link)
    for path in _interpreter_paths(ro_binds):
        bind(path)
    args += ["--bind", str(work), str(work), "--chdir", str(work), "--setenv", "HOME", str(work), "--setenv", "TMPDIR", str(work)]
    return args + ["--"] + _drop_privileges(uid) + argv


def _interpreter_paths(extra: Iterable[str]) -> list[str]:
    """Read-only binds beyond /usr: this Python's prefixes (venvs and pyenv installs live elsewhere) and `extra`."""
    paths = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, *extra)}
    paths |= {os.path.realpath(sys.executable)}
    keep = sorted(p for p in paths if os.path.exists(p) and not p.startswith("/usr/") and p != "/usr")
    # a path inside another bound path needs no bind of its own
    return [p for p in keep if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in keep)]


def _sweep(uid: int | None, marker: str) -> None:
    """Kill whatever escaped the process group (daemonized children) once the sample is over."""
    if uid is not None:
        subprocess.run(
            _drop_privileges(uid) + [sys.executable, "-I", "-S", "-c", "import os, signal; os.kill(-1, signal.SIGKILL)"],
            env={"PATH": SAFE_PATH},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        return
    needle = f"{MARKER_VAR}={marker}".encode()
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            continue
