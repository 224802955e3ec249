"""The limits every run gets (each verifier that runs code exposes them as settings), and the budget that
holds a run's memory and processes together: one cgroup per run where one can be made, else split rlimits."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Limits(BaseModel):
    """Per-sample resource limits (each verifier that runs code exposes them as settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    timeout_s: float = Field(10.0, gt=0, description="Wall-clock limit per run, enforced by the parent.")
    cpu_s: int = Field(10, ge=1, description="CPU seconds per process (RLIMIT_CPU).")
    memory_mb: int = Field(
        1024,
        ge=64,
        description="Memory of the whole run, all its processes together: its cgroup's limit, or split over its processes where no cgroup can be made (docs/verifiers.md).",
    )
    file_size_mb: int = Field(16, ge=1, description="Largest file a process may write (RLIMIT_FSIZE).")
    open_files: int = Field(64, ge=16, description="Open file descriptors per process (RLIMIT_NOFILE).")
    processes: int = Field(32, ge=4, description="Processes and threads the run may have at once (its cgroup's pids.max and RLIMIT_NPROC).")
    output_kb: int = Field(256, ge=1, description="stdout/stderr kept per stream; more output kills the run.")
    tmp_mb: int = Field(64, ge=1, description="Size of the run's private /tmp, which holds its work dir (bubblewrap only).")

    def for_compile(self, timeout_s: float) -> Limits:
        """A compile of a sample under the sample's own memory budget and output cap: the compile's time,
        room for a compiler's processes and threads (64) and for its objects and binary (64 MB files,
        a 256 MB /tmp). C, C++ (`<bits/stdc++.h>`) and Rust programs compile within the default 1024 MB
        where a cgroup holds the budget; under the split rlimits a compile needs 2048 MB (C, C++: up
        to four processes at once) or 8192 MB (Rust: 16 threads)."""
        return self.model_copy(
            update={
                "timeout_s": timeout_s,
                "cpu_s": max(1, int(timeout_s)),
                "processes": max(self.processes, 64),
                "file_size_mb": max(self.file_size_mb, 64),
                "tmp_mb": max(self.tmp_mb, 256),
            }
        )


# ---------------------------------------------------------------- one budget per sample

CGROUP_PREFIX = "halo-sandbox-"
MIN_PROCESS_MB = 512  # without a cgroup, no process gets less address space than this (a compiler needs it)


@dataclass(frozen=True)
class Budget:
    """How a run's memory and processes are held together.

    `cgroup` 2 or 1: every run gets its own cgroup (memory.max / memory.limit_in_bytes = memory_mb
    for all its processes together, no swap beyond it, pids.max = processes) under `dirs`, this
    pipeline process's cgroup(s); each process also keeps RLIMIT_AS = memory_mb. `cgroup` 0: no
    cgroup can be made here, so the budget is split: at most `nproc` processes and threads of
    memory_mb / nproc address space each, which sum to at most memory_mb.
    """

    cgroup: int = 0
    dirs: tuple[str, ...] = ()

    def for_run(self, limits: Limits) -> dict[str, Any]:
        if self.cgroup:
            return {"cgroup": True, "memory": limits.memory_mb << 20, "pids": limits.processes, "address_mb": limits.memory_mb}
        address_mb, nproc = split(limits)
        return {"cgroup": False, "address_mb": address_mb, "nproc": nproc}

    def describe(self) -> str:
        if self.cgroup:
            return (
                f"cgroup v{self.cgroup}: one cgroup per sample, memory_mb for all its processes together "
                "(no swap beyond it) and `processes` at most; RLIMIT_AS = memory_mb per process as well"
            )
        return (
            "rlimits: no writable cgroup here, so memory_mb is split: at most memory_mb / "
            f"{MIN_PROCESS_MB} (and `processes`) processes and threads, each with that share of the address space"
        )


def split(limits: Limits) -> tuple[int, int]:
    """Without a cgroup: (address space per process in MB, processes) whose product stays within memory_mb."""
    nproc = max(1, min(limits.processes, limits.memory_mb // MIN_PROCESS_MB))
    return limits.memory_mb // nproc, nproc


_budgets: dict[int, Budget] = {}
_budgets_lock = threading.Lock()  # verifier batches start runs from many threads: one budget is made once


def _fresh_lock_after_fork() -> None:
    global _budgets_lock
    _budgets_lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_fresh_lock_after_fork)


def budget() -> Budget:
    """This pipeline process's budget: cgroup v2 where the memory and pids controllers can be given to
    a child cgroup, else v1's memory (and pids) hierarchy where writable (as root), else the split rlimits."""
    pid = os.getpid()
    with _budgets_lock:
        if pid not in _budgets:
            _budgets[pid] = _cgroup_budget(pid) or Budget()
        return _budgets[pid]


def release() -> None:
    """Remove this process's cgroup dirs (their runs are over: every zygote has exited)."""
    with _budgets_lock:
        found = _budgets.pop(os.getpid(), None)
    if found:
        for path in found.dirs:
            _remove_tree(path)


def _cgroup_budget(pid: int) -> Budget | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        mounts = _cgroup_mounts()
        own = _own_cgroups()
    except OSError:
        return None
    name = f"{CGROUP_PREFIX}{pid}"
    v2 = mounts.get("cgroup2")
    if v2 and "" in own:
        here = _below(v2, own[""])
        # a cgroup that has processes (ours) cannot give controllers to children, unless it is the root:
        # the runs' cgroup goes beside ours, under our parent, which already gives them to us
        base = here if os.path.realpath(here) == os.path.realpath(v2[0]) else os.path.dirname(here)
        made = _make(base, name, version=2)
        if made:
            return Budget(2, (made,))
    if "memory" in mounts and "memory" in own:
        memory = _make(_below(mounts["memory"], own["memory"]), name, version=1)
        if memory:
            pids = _make(_below(mounts["pids"], own["pids"]), name, version=1) if "pids" in mounts and "pids" in own else None
            return Budget(1, (memory, *([pids] if pids else [])))
    return None


def _cgroup_mounts() -> dict[str, tuple[str, str]]:
    """{"cgroup2" | v1 controller: (mount point, the hierarchy path it shows)} from /proc/self/mountinfo."""
    found: dict[str, tuple[str, str]] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, kind = left.split(), right.split()
        if len(fields) < 5 or len(kind) < 3 or kind[0] not in ("cgroup", "cgroup2"):
            continue
        root, point = fields[3], fields[4].replace("\\040", " ")
        if kind[0] == "cgroup2":
            found.setdefault("cgroup2", (point, root))
        else:
            for option in kind[2].split(","):
                if option in ("memory", "pids"):
                    found.setdefault(option, (point, root))
    return found


def _own_cgroups() -> dict[str, str]:
    """{"" (v2) | v1 controller: this process's cgroup path} from /proc/self/cgroup."""
    found: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            found[controller] = path
    return found


def _below(mount: tuple[str, str], path: str) -> str:
    point, root = mount
    relative = path[len(root) :] if root != "/" and path.startswith(root) else path
    return os.path.join(point, relative.lstrip("/"))


def _make(base: str, name: str, version: int) -> str | None:
    """`base/name`, ready to hold one child cgroup per run; None where that cannot be done here."""
    if not os.access(base, os.W_OK):
        return None
    for stale in Path(base).glob(f"{CGROUP_PREFIX}*"):  # a pipeline process that died without cleaning up
        owner = stale.name[len(CGROUP_PREFIX) :]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _remove_tree(str(stale))
    path = os.path.join(base, name)
    try:
        if version == 2:
            wanted = {"memory", "pids"}
            if not wanted <= set(Path(base, "cgroup.controllers").read_text().split()):
                return None
            if not wanted <= set(Path(base, "cgroup.subtree_control").read_text().split()):
                Path(base, "cgroup.subtree_control").write_text("+memory +pids")
        os.makedirs(path, exist_ok=True)
        if version == 2:
            Path(path, "cgroup.subtree_control").write_text("+memory +pids")
        # one throwaway run cgroup proves that limits can be written here and a process can join it
        probe = os.path.join(path, "probe")
        os.mkdir(probe)
        try:
            limit = (
                "memory.max" if version == 2 else ("memory.limit_in_bytes" if Path(probe, "memory.limit_in_bytes").exists() else "pids.max")
            )
            Path(probe, limit).write_text(str(1 << 30) if limit.startswith("memory") else "8")
            if not _can_join(os.path.join(probe, "tasks" if version == 1 else "cgroup.procs")):
                raise OSError(f"a process cannot join {probe}")
        finally:
            os.rmdir(probe)
    except OSError:
        _remove_tree(path)
        return None
    return path


def _can_join(members: str) -> bool:
    """Whether a process can move itself into a cgroup, as every run's sample does (a child that exits at once)."""
    child = os.fork()
    if child == 0:  # only system calls here: another thread may hold any lock at the fork
        try:
            fd = os.open(members, os.O_WRONLY)
            os.write(fd, b"0")
        except BaseException:
            os._exit(1)
        os._exit(0)
    return os.waitpid(child, 0)[1] == 0


def _remove_tree(path: str) -> None:
    """rmdir a cgroup and its (empty) children, deepest first; what still holds a process stays."""
    with contextlib.suppress(OSError):
        for sub in sorted((p for p in Path(path).iterdir() if p.is_dir()), key=lambda p: -len(str(p))):
            _remove_tree(str(sub))
    with contextlib.suppress(OSError):
        os.rmdir(path)
