"""Run untrusted (model-written) programs: each run in a fresh, isolated, resource-limited process.

The sandbox is its own layer: it knows nothing of verifiers (they call it). By concern:
`bubblewrap` (which isolation, bubblewrap's command line), `seccomp` (the filter every run gets),
`limits` (the limits a run gets and the budget that holds its processes together), `launcher` (the
zygote that forks every run, and the results) and `_zygote` (what runs inside).

Every run: an empty environment, no capabilities, no-new-privs, the seccomp filter, rlimits (CPU,
address space, file size, open files, processes), one memory and pids budget for all its processes
(its own cgroup, or rlimits split so that their sum stays within memory_mb), a wall-clock deadline,
capped stdout/stderr, stdin from /dev/null or a sealed memfd (never a file the parent reopens), an
optional result pipe (fd 3), and files written into and read back from its work dir without
following links or blocking on FIFOs; what comes back to the pipeline is read with a bound.
"""

from __future__ import annotations

from halo_pipeline.sandbox.bubblewrap import (
    INSTALL_HINT,
    SAFE_PATH,
    Isolation,
    Mode,
    SandboxUnavailable,
    describe,
    effective_mode,
    isolation,
    require,
    world_reachable,
)
from halo_pipeline.sandbox.launcher import COMMON_MODULES, Launched, RunResult, Zygote, new_nonce, run, shutdown, start
from halo_pipeline.sandbox.limits import Limits

__all__ = [
    "COMMON_MODULES",
    "INSTALL_HINT",
    "SAFE_PATH",
    "Isolation",
    "Launched",
    "Limits",
    "Mode",
    "RunResult",
    "SandboxUnavailable",
    "Zygote",
    "describe",
    "effective_mode",
    "isolation",
    "new_nonce",
    "require",
    "run",
    "shutdown",
    "start",
    "world_reachable",
]
