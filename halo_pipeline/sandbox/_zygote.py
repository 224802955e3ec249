"""The sandbox's zygote: runs inside the sandbox (never imported by the pipeline), forks one run per request.

Started once per pipeline process and kind of run (`launcher.Zygote`), under bubblewrap or, when the
user opted down to `rlimits`, as a plain process. It loads Python and the harness modules once, so a
run costs a fork instead of an interpreter start.

A run, over the control socket (JSON + file descriptors):
  zygote --fork--> supervisor (trusted: reads the run's payload, writes its files into a fresh work
                   dir, enforces the deadline and output caps, collects files, reports its status)
         --fork--> sample (with bubblewrap: new pid/mount/ipc/net/uts namespaces, a private tmpfs as
                   /tmp holding the work dir; a fresh uid when we are root; no capabilities,
                   no-new-privs, rlimits), then exec(argv) or a role of a preloaded harness module.
A *pair* (the Python verifiers) is a test driver and a candidate joined by two pipes: the
supervisor forks the candidate (confined as above) before it has read the driver's payload (the
tests: a second memfd), then drops its own privileges to a second fresh uid, reads that payload and
becomes the driver; the candidate is killed when it exits (parent-death signal, and as its
pid namespace's init everything it started goes with it). Two forks per sample.

Sample data (programs, tests, inputs) reaches only the supervisor and the sample, through a memfd
the pipeline fills, never the zygote: a later fork cannot find an earlier sample's data in memory.
Without namespaces (rlimits) every process is a child subreaper's descendant: supervisors, then the
zygote, kill what a run leaves (by uid when root), and the zygote takes everything down when the
pipeline's end of the control socket closes, however the pipeline died.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import json
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import stat
import struct
import sys
import tempfile
import time
import types
from typing import Any

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x04000000, 0x08000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 36, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
RESULT_CAP = 1 << 20
FILE_CAP = 256 << 20
SAMPLE_PREFIX = "halo-sbx-"

_libc = ctypes.CDLL(None, use_errno=True)
SECCOMP_FILTER = b""  # the pipeline's compiled filter (seccomp.py), installed in every run by _confine
CGROUP_FILES = {  # per cgroup version: (memory limit, no swap beyond it, processes)
    2: ("memory.max", "memory.swap.max", "pids.max"),
    1: ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "pids.max"),
}


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, arg: int = 0) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)), f"prctl({option})")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


# ---------------------------------------------------------------- zygote


class Zygote:
    def __init__(self, sock: socket.socket, hello: dict[str, Any]):
        self.sock = sock
        self.namespaces: bool = hello["namespaces"]
        self.root = os.geteuid() == 0
        self.tmp = "/tmp" if self.namespaces else (hello.get("tmp") or tempfile.gettempdir())
        self.binds_under_tmp: list[list[str]] = hello.get("binds_under_tmp", [])
        # the pipeline's per-process cgroup dirs (one per hierarchy: v2, or v1's memory and pids), as
        # descriptors: each run gets a child of each, removed once its supervisor is gone
        cgroup = hello.get("cgroup") or {}
        self.cgroup_version: int = int(cgroup.get("version", 0))
        self.cgroup_fds: list[int] = [int(fd) for fd in cgroup.get("fds", [])]
        self.stale_cgroups: list[str] = []
        self.cgroup_names: dict[int, str] = {}  # supervisor pid -> its run's cgroup name
        self.cgroup_prefix = f"run-{os.urandom(6).hex()}-"  # the pipeline's other zygotes share the parent cgroup
        self.count = 0
        # supervisor pid -> (its runs' uids, our copy of its status pipe: the pipeline sees EOF only
        # once we have cleaned up after it, so a finished run has left nothing behind)
        self.runs: dict[int, tuple[list[int], int]] = {}
        self.own_fds: list[int] = []

    def serve(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.own_fds = [wake_r, wake_w]
        signal.set_wakeup_fd(wake_w)  # a finished supervisor wakes us to clean up after it
        signal.signal(signal.SIGCHLD, lambda *_: None)
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, "request")
        sel.register(wake_r, selectors.EVENT_READ, "child")
        while True:
            for key, _ in sel.select():
                if key.data == "child":
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 4096)
                    self.reap()
                    continue
                try:
                    data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, 16)
                except OSError:
                    data, fds = b"", []
                if not data:  # the pipeline is gone (exited, crashed or SIGKILLed): take everything down
                    for fd in fds:
                        os.close(fd)
                    self.shutdown()
                    return
                self.start(json.loads(data), fds)

    def start(self, spec: dict[str, Any], fds: list[int]) -> None:
        uids = [random.randrange(1 << 20, 1 << 30) for _ in range(2)] if self.root else []
        self.count += 1
        spec["cgroup_name"] = f"{self.cgroup_prefix}{self.count}"
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                signal.set_wakeup_fd(-1)
                self.sock.close()
                for fd in [*self.own_fds, *(status for _, status in self.runs.values())]:
                    os.close(fd)  # other runs' status pipes must not wait for us to close
                code = Supervisor(spec, fds, uids, self).run()
            finally:
                os._exit(code)
        for fd in fds[1:]:
            os.close(fd)
        self.runs[pid] = (uids, fds[0])
        self.cgroup_names[pid] = spec["cgroup_name"]

    def reap(self) -> None:
        """Collect finished supervisors and clean up after them (their runs' uids, dirs, orphans)."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid in self.runs:
                self._clean(pid, *self.runs.pop(pid))
        if set(_children(os.getpid())) - set(self.runs):  # orphans came back to us (subreaper): end them
            _kill_descendants(os.getpid(), keep=set(self.runs))

    def shutdown(self) -> None:
        deadline = time.monotonic() + 1.0  # single-run supervisors see their control pipes close and clean up themselves
        while self.runs and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.02)
        _kill_descendants(os.getpid())
        for pid, (uids, status_fd) in self.runs.items():
            self._clean(pid, uids, status_fd)

    def _clean(self, pid: int, uids: list[int], status_fd: int) -> None:
        if not self.namespaces:  # with namespaces the run's processes went with its pid namespace
            for uid in uids:
                _kill_uid(uid)
        for entry in _stale_dirs(self.tmp, only=pid):
            shutil.rmtree(entry, ignore_errors=True)
        if pid in self.cgroup_names:
            self.stale_cgroups.append(self.cgroup_names.pop(pid))
        self.stale_cgroups = [name for name in self.stale_cgroups if not _remove_cgroup(self.cgroup_fds, name)]
        os.close(status_fd)


# ---------------------------------------------------------------- one run


class Supervisor:
    """Trusted: sets up one run, watches it, reports. Never runs sample code itself."""

    def __init__(self, spec: dict[str, Any], fds: list[int], uids: list[int], zygote: Zygote):
        self.spec, self.namespaces, self.tmp = spec, zygote.namespaces, zygote.tmp
        self.uid: int | None = uids[0] if uids else None
        self.driver_uid: int | None = uids[1] if uids else None
        self.binds_under_tmp = zygote.binds_under_tmp
        self.status_fd, self.control_fd, payload_fd = fds[:3]
        # a pair's second payload (the tests' driver's arguments) is read only after the candidate is forked
        self.driver_payload_fd = fds[3] if len(fds) > 3 else -1
        self.header, self.blobs = _read_payload(payload_fd)
        os.close(payload_fd)
        self.host_work: str | None = None
        self.work = "/tmp/w"
        self.limits: dict[str, Any] = spec["limits"]
        self.budget: dict[str, Any] = spec.get("budget") or {}
        self.cgroup_version, self.cgroup_fds = zygote.cgroup_version, zygote.cgroup_fds
        self.cgroup_procs: list[int] = []  # the run's cgroup.procs, which its sample joins first thing
        self.nproc_base = 0

    def run(self) -> int:
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _prctl(PR_SET_CHILD_SUBREAPER, 1)  # whatever the sample daemonizes stays our descendant
            return self.run_pair() if self.spec.get("pair") else self.run_single()
        except BaseException as exc:  # report a setup failure on the status pipe
            with contextlib.suppress(Exception):
                _write_status(self.status_fd, {"error": f"sandbox setup failed: {type(exc).__name__}: {exc}"}, [])
            return 70

    def run_single(self) -> int:
        if self.namespaces:
            _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWUTS), "unshare")
            self.private_tmp()
        else:
            self.host_dir()
        self.nproc_base = 0 if self.uid is not None else _count_own_processes()
        self.join_budget()
        self._write_files()
        stdin = self._stdin()
        pipes = {name: os.pipe() for name in ("out", "err", *(["res"] if self.spec.get("result") else []))}
        inputs = self._input_pipes()
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(self.status_fd)
                os.close(self.control_fd)
                targets = {0: stdin, 1: pipes["out"][1], 2: pipes["err"][1]}
                if "res" in pipes:
                    targets[3] = pipes["res"][1]
                targets.update(inputs)
                Sample(self, targets, self.spec.get("exec"), self.spec.get("role"), self.header.get("args", {})).start()
            except BaseException as exc:
                _last_words(exc)
            finally:
                os._exit(71)
        os.close(stdin)
        for fd in [*(w for _, w in pipes.values()), *inputs.values(), *self.cgroup_procs]:
            os.close(fd)
        status = self._watch(pid, {name: r for name, (r, _) in pipes.items()}, started)
        files = self._collect()
        _write_status(self.status_fd, status, files)
        if self.host_work:
            shutil.rmtree(self.host_work, ignore_errors=True)
        return 0

    def run_pair(self) -> int:
        """Fork the candidate, then become the driver (unprivileged) and report its record."""
        driver_role, candidate_role = self.spec["pair"]
        if self.driver_payload_fd < 0:
            raise ValueError("a pair needs the driver's payload")
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        errors = os.memfd_create("stderr")
        self.nproc_base = 0 if self.uid is not None else _count_own_processes()
        self.join_budget()
        own_pid_ns = -1
        if self.namespaces:
            own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY)
            _check(_libc.unshare(CLONE_NEWPID), "unshare")  # the candidate is its pid namespace's init
        else:
            self.host_dir()
        # from now on no process of the candidate's uid (rlimits without root) may read our memory or
        # reopen the tests' memfd through /proc while we read it and become the driver
        _prctl(PR_SET_DUMPABLE, 0)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(self.driver_payload_fd)
                _prctl(PR_SET_DUMPABLE, 1)  # the candidate itself is an ordinary process
                os.close(self.status_fd)
                os.close(self.control_fd)
                null = os.open("/dev/null", os.O_RDWR)
                targets = {0: null, 1: null, 2: errors, 4: requests_r, 5: replies_w}
                # forked before the driver's payload was read: the tests were never in this memory
                Sample(self, targets, None, candidate_role, self.header.get("args", {}), own_namespaces=self.namespaces).start()
            except BaseException as exc:
                _last_words(exc)
            finally:
                os._exit(71)
        for fd in (requests_r, replies_w, self.control_fd):
            os.close(fd)
        driver_args = _read_payload(self.driver_payload_fd)[0].get("args", {})
        os.close(self.driver_payload_fd)
        if own_pid_ns >= 0:
            # what the driver starts (a test's subprocess) stays out of the candidate's namespace; an
            # unprivileged bubblewrap does not allow this, and such rare processes then share it
            _libc.setns(own_pid_ns, CLONE_NEWPID)
            os.close(own_pid_ns)
        record = os.memfd_create("record")
        driver_dir = tempfile.mkdtemp(prefix=f"{SAMPLE_PREFIX}{os.getpid()}-d", dir=self.tmp)
        if self.driver_uid is not None:
            os.chown(driver_dir, self.driver_uid, self.driver_uid)
        self.status_fd = status_fd = fcntl.fcntl(self.status_fd, fcntl.F_DUPFD_CLOEXEC, 200)
        errors = fcntl.fcntl(errors, fcntl.F_DUPFD_CLOEXEC, status_fd + 1)
        null = os.open("/dev/null", os.O_RDWR)
        _move_fds({0: null, 1: null, 2: null, 3: record, 4: replies_r, 5: requests_w})
        _close_all_but({0, 1, 2, 3, 4, 5, status_fd, errors})
        os.chdir(driver_dir)
        _confine(self.limits, self.driver_uid, self.nproc_base, self.namespaces, driver=True)
        _prctl(PR_SET_DUMPABLE, 0)  # again (a uid change resets it): no same-uid process may ptrace the driver or read its memory
        _fresh_stdio()
        timed_out = False

        def deadline_passed(*_: Any) -> None:
            raise TimeoutError("the tests ran past their deadline")

        signal.signal(signal.SIGALRM, deadline_passed)
        signal.setitimer(signal.ITIMER_REAL, float(self.limits["timeout_s"]))
        module, _, function = driver_role.partition(":")
        try:
            getattr(sys.modules[module], function)(driver_args)
        except TimeoutError:
            timed_out = True
        except BaseException as exc:
            os.write(3, (json.dumps({"error": f"the tests' driver failed: {type(exc).__name__}: {exc}"[:500]}) + "\n").encode())
        signal.setitimer(signal.ITIMER_REAL, 0)
        outputs = {"res": _read_fd(3, RESULT_CAP), "err": _read_fd(errors, int(self.limits["output_kb"]) * 1024, tail=True)}
        status = {"returncode": 0, "timed_out": timed_out, "wall_s": time.monotonic() - started, "_outputs": outputs}
        _write_status(status_fd, status, [])
        os.chdir("/")
        shutil.rmtree(driver_dir, ignore_errors=True)
        return 0  # our exit takes the candidate (and all it started) with it

    def join_budget(self) -> None:
        """With cgroups: the run's own cgroup (memory and pids for all its processes together), named
        after us; the sample moves itself in before it runs anything. Without: per-process rlimits."""
        if not self.budget.get("cgroup") or not self.cgroup_fds:
            return
        name = str(self.spec["cgroup_name"])
        memory_file, swap_file, pids_file = CGROUP_FILES[self.cgroup_version]
        for parent in self.cgroup_fds:
            os.mkdir(name, 0o755, dir_fd=parent)
            run_dir = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=parent)
            try:
                for file, value in (
                    (memory_file, self.budget["memory"]),
                    (swap_file, self.budget["memory"]),
                    (pids_file, self.budget["pids"]),
                ):
                    if self.cgroup_version == 2 and file == swap_file:
                        value = 0  # v2 counts swap apart: none beyond memory.max
                    try:
                        fd = os.open(file, os.O_WRONLY, dir_fd=run_dir)
                    except FileNotFoundError:  # this hierarchy has no such file (v1: memory and pids apart; no swap accounting)
                        continue
                    try:
                        os.write(fd, str(value).encode())
                    finally:
                        os.close(fd)
                # v1: the sample's one thread by `tasks` (cgroup.procs moves a thread group under a lock
                # that waits for an RCU grace period, ~15 ms a run); v2 has only cgroup.procs for this
                members = "tasks" if self.cgroup_version == 1 else "cgroup.procs"
                self.cgroup_procs.append(os.open(members, os.O_WRONLY | os.O_CLOEXEC, dir_fd=run_dir))
            finally:
                os.close(run_dir)

    def private_tmp(self) -> None:
        """This mount namespace gets its own tmpfs as /tmp, holding the work dir (nothing lands on the host)."""
        _mount("none", "/", None, MS_REC | MS_PRIVATE)
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={int(self.limits['tmp_mb']) << 20},mode=0755")
        for path, stash in self.binds_under_tmp:  # read-only binds (a venv under /tmp) the new /tmp hid
            os.makedirs(path, 0o755, exist_ok=True)
            _mount(stash, path, None, MS_BIND | MS_REC)
            _mount("none", path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.mkdir(self.work, 0o700)
        if self.uid is not None:
            os.chown(self.work, self.uid, self.uid)

    def host_dir(self) -> None:
        """rlimits: a host temp dir named after us, so a sweep can tell a dead run's dir from a live one."""
        self.host_work = self.work = tempfile.mkdtemp(prefix=f"{SAMPLE_PREFIX}{os.getpid()}-", dir=self.tmp)
        if self.uid is not None:
            os.chown(self.work, self.uid, self.uid)

    def _write_files(self) -> None:
        dir_fd = os.open(self.work, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            for name, _size, mode in self.header.get("files", []):
                if "/" in name or name in (".", ".."):
                    raise ValueError(f"file name '{name}' must be plain")
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
                with os.fdopen(fd, "wb") as f:
                    f.write(self.blobs.pop(0))
                if self.uid is not None:
                    os.chown(name, self.uid, self.uid, dir_fd=dir_fd, follow_symlinks=False)
        finally:
            os.close(dir_fd)

    def _stdin(self) -> int:
        """The test case's input: a sealed memfd (nothing in the work dir to swap for a link or a FIFO)."""
        if self.header.get("stdin") is None:
            return os.open("/dev/null", os.O_RDONLY)
        fd = os.memfd_create("stdin", os.MFD_ALLOW_SEALING)
        content = self.blobs.pop(0)
        if content:
            os.write(fd, content)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def _input_pipes(self) -> dict[int, int]:
        """Small secrets (a nonce) on their own pipe: whoever reads first consumes them."""
        targets = {}
        for target, _size in self.header.get("pipes", []):
            r, w = os.pipe()
            os.write(w, self.blobs.pop(0))
            os.close(w)
            targets[int(target)] = r
        return targets

    def _watch(self, pid: int, readers: dict[str, int], started: float) -> dict[str, Any]:
        caps = {"out": self.limits["output_kb"] * 1024, "err": self.limits["output_kb"] * 1024, "res": RESULT_CAP}
        data: dict[str, list[bytes]] = {name: [] for name in readers}
        sizes = dict.fromkeys(readers, 0)
        sel = selectors.DefaultSelector()
        for name, fd in readers.items():
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ, name)
        pidfd = os.pidfd_open(pid)
        sel.register(pidfd, selectors.EVENT_READ, "exit")
        sel.register(self.control_fd, selectors.EVENT_READ, "control")
        deadline = started + float(self.limits["timeout_s"])
        open_pipes, exited_at, timed_out, exceeded, killed = len(readers), 0.0, False, False, False
        while open_pipes or not exited_at:
            now = time.monotonic()
            limit = min(deadline, exited_at + 0.2) if exited_at else deadline  # escaped holders of the pipes get a moment, no more
            if now >= limit:
                timed_out = not exited_at
                break
            for key, _ in sel.select(limit - now):
                name = key.data
                if name == "exit":
                    sel.unregister(pidfd)
                    exited_at = time.monotonic()
                    continue
                if name == "control":  # the pipeline asked us to stop (or died)
                    sel.unregister(self.control_fd)
                    killed = True
                    self._kill(pid)
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
                    data[name].append(chunk[: caps[name] - sizes[name]])
                sizes[name] += len(chunk)
                if sizes[name] > caps[name] and name != "res" and not exceeded:
                    exceeded = True
                    self._kill(pid)
        sel.close()
        self._kill(pid)  # the sample's leftovers go with it, finished or not
        _, wait_status = os.waitpid(pid, 0)
        returncode = None
        if exited_at and not timed_out:
            returncode = os.waitstatus_to_exitcode(wait_status)
            if self.namespaces and self.spec.get("exec") and returncode > 128:
                returncode = 128 - returncode  # the run's init exits 128+N for a program killed by signal N
        self._sweep()
        os.close(pidfd)
        return {
            "returncode": returncode,
            "timed_out": timed_out,
            "output_exceeded": exceeded,
            "killed": killed and not exited_at,
            "wall_s": time.monotonic() - started,
            "_outputs": {name: b"".join(chunks) for name, chunks in data.items()},
        }

    def _kill(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)  # with namespaces it is the run's init: the kernel takes the rest
        if not self.namespaces:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def _sweep(self) -> None:
        if self.namespaces:
            return
        if self.uid is not None:
            _kill_uid(self.uid)
        _kill_descendants(os.getpid())

    def _collect(self) -> list[tuple[str, bytes]]:
        """Read back named files without following links or blocking on FIFOs a sample planted."""
        found = []
        for name in self.spec.get("collect", []):
            try:
                fd = os.open(os.path.join(self.work, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                info = os.fstat(fd)
                cap = min(FILE_CAP, int(self.limits["file_size_mb"]) << 20)  # (bigger cannot be written: RLIMIT_FSIZE)
                if stat.S_ISREG(info.st_mode) and info.st_size <= cap:
                    found.append((name, _read_fd(fd, cap)))
            finally:
                os.close(fd)
        return found


class Sample:
    """The sample process: confine, then exec the program or run a harness role. Never returns."""

    def __init__(
        self, sup: Supervisor, targets: dict[int, int], argv: list[str] | None, role: str | None, args: Any, own_namespaces: bool = False
    ):
        self.sup, self.targets, self.argv, self.role, self.args, self.own_namespaces = sup, targets, argv, role, args, own_namespaces

    def start(self) -> None:
        sup = self.sup
        for procs in sup.cgroup_procs:  # into the run's budget before anything else happens here (we are one thread)
            os.write(procs, b"0")
            os.close(procs)
        os.setsid()
        if self.own_namespaces:  # a pair's candidate: the supervisor stays outside these (it is the driver)
            _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWUTS), "unshare")
            sup.private_tmp()
        if sup.namespaces:
            if sup.spec.get("proc", True):
                _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            else:  # no /proc at all: nothing to read our memory or reopen our pipes through
                _mount("tmpfs", "/proc", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555")
            with contextlib.suppress(OSError):
                socket.sethostname("sandbox")
        os.chdir(sup.work)
        self._fds()
        _confine(sup.limits, sup.uid, sup.nproc_base, sup.namespaces, sup.budget)
        env = {"PATH": SAFE_PATH, "HOME": sup.work, "TMPDIR": sup.work, "LANG": "C.UTF-8"}
        if self.argv:
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            if sup.namespaces:
                self._init_then_exec(self.argv, env)
            self._exec(self.argv, env)
        os.environ.clear()
        os.environ.update(env)
        _fresh_stdio()
        module, _, function = str(self.role).partition(":")
        code = 0
        try:
            getattr(sys.modules[module], function)(self.args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
        os._exit(code)

    def _fds(self) -> None:
        """Exactly the run's descriptors, at their numbers: nothing else of the supervisor's leaks in."""
        _move_fds(self.targets)
        _close_all_but(set(self.targets))

    def _init_then_exec(self, argv: list[str], env: dict[str, str]) -> None:
        """As pid 1 of the run's namespace, stay a small init: the program runs as pid 2 (normal signal
        semantics), orphans are reaped, and our exit (the program's) ends the namespace."""
        child = os.fork()
        if child == 0:
            self._exec(argv, env)
        _close_all_but(set())
        while True:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                os._exit(0)
            if pid == child:
                code = os.waitstatus_to_exitcode(status)
                os._exit(code if code >= 0 else 128 - code)

    def _exec(self, argv: list[str], env: dict[str, str]) -> None:
        try:
            os.execve(argv[0], argv, env)
        except OSError as exc:
            os.write(2, f"cannot run {argv[0]}: {exc.strerror}\n".encode())
        os._exit(127)


# ---------------------------------------------------------------- helpers


def _confine(
    limits: dict[str, Any], uid: int | None, nproc_base: int, namespaces: bool, budget: dict[str, Any] | None = None, driver: bool = False
) -> None:
    """rlimits, then no privileges: a fresh uid when root (every capability goes with root), else the
    namespace's capabilities dropped explicitly; no-new-privs; the seccomp filter; and the
    parent-death signal, set after the credentials changed (a uid change clears it). A sample's
    address space and process count come from its budget (split so that their sum stays within
    memory_mb where no cgroup holds the total); a pair's driver keeps the plain per-process limits."""
    budget = budget or {}
    address_mb = int(limits["memory_mb"]) if driver else int(budget.get("address_mb", limits["memory_mb"]))
    processes = int(limits["processes"]) if driver else int(budget.get("nproc", limits["processes"]))
    for which, value in (
        (resource.RLIMIT_CPU, int(limits["cpu_s"])),
        (resource.RLIMIT_AS, address_mb << 20),
        (resource.RLIMIT_FSIZE, int(limits["file_size_mb"]) << 20),
        (resource.RLIMIT_NOFILE, int(limits["open_files"])),
        (resource.RLIMIT_NPROC, nproc_base + processes),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(which, (value, value))
    parent = os.getppid()
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    else:
        with contextlib.suppress(OSError):
            _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        for cap in range(64):
            with contextlib.suppress(OSError):
                _prctl(PR_CAPBSET_DROP, cap)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)
        zeros = (ctypes.c_uint32 * 6)()
        with contextlib.suppress(AttributeError):
            _check(_libc.capset(header, zeros), "capset")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _install_seccomp(SECCOMP_FILTER)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(137)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _install_seccomp(program: bytes) -> None:
    """Install the classic-BPF filter (8-byte `struct sock_filter`s) on this process and all it starts."""
    if not program:
        return
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _check(
        _libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog), ctypes.c_ulong(0), ctypes.c_ulong(0)),
        "seccomp",
    )


def _remove_cgroup(parents: list[int], name: str) -> bool:
    """Remove a finished run's cgroups (True once none is left; False while a process still holds one)."""
    done = True
    for parent in parents:
        try:
            os.rmdir(name, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError:
            done = False
    return done


PATH_FDS: set[int] = set()


def _reach_python_through_fds() -> None:
    """rlimits as root: a Python installed under /root is out of the sample uid's reach. Its import
    paths are opened here (as root) and replaced by /proc/self/fd/N, which resolve without walking
    /root again: the samples can import what the pipeline can, and read (not write) nothing more."""
    replaced: dict[str, str] = {}
    for i, path in enumerate(list(sys.path)):
        if not path or not os.path.isdir(path) or _world_reachable(path):
            continue
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY)
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1000)
        os.close(fd)
        PATH_FDS.add(high)
        replaced[path.rstrip("/")] = sys.path[i] = f"/proc/self/fd/{high}"
    for module in list(sys.modules.values()):  # packages already loaded find their submodules there too
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            for j, entry in enumerate(search):
                for real, via_fd in replaced.items():
                    if entry == real or entry.startswith(real + "/"):
                        search[j] = via_fd + entry[len(real) :]
    sys.path_importer_cache.clear()


def _world_reachable(path: str) -> bool:
    real = os.path.realpath(path)
    parts = real.split("/")
    return all(os.stat("/".join(parts[:i]) or "/").st_mode & 0o001 for i in range(1, len(parts) + 1))


def _close_all_but(keep: set[int]) -> None:
    """Close every descriptor except `keep` (and the import-path descriptors every fork needs)."""
    keep = keep | PATH_FDS
    low = 0
    for fd in sorted(keep):
        if low < fd:  # (closerange(n, n) would close everything from n on)
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)


def _last_words(exc: BaseException) -> None:
    """A sample that failed to set itself up says why on its stderr (fd 2, once it is the run's)."""
    with contextlib.suppress(OSError):
        os.write(2, f"sandbox: the run could not start: {type(exc).__name__}: {exc}\n".encode())


def _move_fds(targets: dict[int, int]) -> None:
    """Put each fd at its target number (all copied out of the way first, so no target clobbers a source)."""
    high = {target: fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for target, fd in targets.items()}
    for target, fd in high.items():
        os.dup2(fd, target, inheritable=True)


def _fresh_stdio() -> None:
    """A forked interpreter: give its standard streams fresh objects on the new descriptors."""
    sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False)  # noqa: SIM115


def _read_fd(fd: int, cap: int, tail: bool = False) -> bytes:
    """Up to `cap` bytes of a regular file or memfd from its start (or its last `cap` bytes)."""
    size = os.fstat(fd).st_size
    start = max(0, size - cap) if tail else 0
    return os.pread(fd, min(cap, size - start), start) if size > start else b""


def _read_payload(fd: int) -> tuple[dict[str, Any], list[bytes]]:
    os.lseek(fd, 0, os.SEEK_SET)
    with os.fdopen(os.dup(fd), "rb") as f:
        (size,) = struct.unpack(">I", f.read(4))
        header = json.loads(f.read(size))
        blobs = [f.read(n) for n in header.get("sizes", [])]
    return header, blobs


def _write_status(fd: int, status: dict[str, Any], files: list[tuple[str, bytes]]) -> None:
    outputs: dict[str, bytes] = status.pop("_outputs", {})
    blobs = list(outputs.values()) + [content for _, content in files]
    header = {**status, "outputs": [[k, len(v)] for k, v in outputs.items()], "files": [[n, len(c)] for n, c in files]}
    raw = json.dumps(header).encode()
    with os.fdopen(fd, "wb") as f:
        f.write(struct.pack(">I", len(raw)) + raw)
        for blob in blobs:
            f.write(blob)


def _kill_uid(uid: int) -> None:
    """As root: kill every process of a run's uid (whatever escaped its session), from a child of that uid."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    return found


def _kill_descendants(root: int, keep: set[int] | None = None) -> None:
    """SIGKILL every descendant of `root` (but not the subtrees of `keep`) until none is left; a
    subreaper keeps orphans in its tree, so nothing a sample daemonized can get out of it."""
    keep = keep or set()
    for _ in range(100):
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
        found = []
        for pid in parents:
            if pid in keep:
                continue
            ancestor = parents.get(pid)
            while ancestor and ancestor != root and ancestor not in keep and ancestor in parents:
                ancestor = parents[ancestor]
            if ancestor == root and pid != root:
                found.append(pid)
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for pid in found:  # reap our own children among them
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.005)


def _count_own_processes() -> int:
    """RLIMIT_NPROC counts every process of the real uid, so a shared uid's budget starts from the current count."""
    uid, count = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                count += os.stat(f"/proc/{entry}").st_uid == uid
    return count


def _stale_dirs(tmp: str, only: int | None = None) -> list[str]:
    """Work dirs of supervisor `only`, or of every supervisor that is gone."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(tmp):
            owner = entry.name[len(SAMPLE_PREFIX) :].split("-", 1)[0]
            if not entry.name.startswith(SAMPLE_PREFIX) or not owner.isdigit() or not entry.is_dir(follow_symlinks=False):
                continue
            if (int(owner) == only) if only is not None else not os.path.exists(f"/proc/{owner}"):
                found.append(entry.path)
    return found


def main(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    data, _fds, _flags, _addr = socket.recv_fds(sock, 1 << 22, 0)
    hello = json.loads(data)
    global SECCOMP_FILTER
    SECCOMP_FILTER = bytes.fromhex(hello.get("seccomp", ""))
    sys.path.extend(p for p in hello.get("site_paths", []) if p not in sys.path)
    for name, source in hello.get("modules", {}).items():
        module = types.ModuleType(name)
        module.__file__ = f"<{name}>"
        sys.modules[name] = module
        exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    failed = []
    for name in hello.get("preimport", []):
        try:
            __import__(name)
        except Exception as exc:  # a missing optional module is the sample's problem, not the zygote's
            failed.append(f"{name}: {exc}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the pipeline's to handle
    zygote = Zygote(sock, hello)
    if not zygote.namespaces and zygote.root:
        _reach_python_through_fds()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of a supervisor that died come back to us
    if not zygote.namespaces:
        for stale in _stale_dirs(zygote.tmp):  # left by a run whose supervisor was killed
            shutil.rmtree(stale, ignore_errors=True)
    gc.collect()
    gc.freeze()  # forks share the loaded modules' pages rather than copying them when a collection walks them
    sock.send(json.dumps({"ok": True, "pid": os.getpid(), "import_errors": failed}).encode())
    zygote.serve()
