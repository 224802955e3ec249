"""Which isolation a run gets, and bubblewrap's command line for the zygote.

Secure by default: code runs only under **bubblewrap**; without it, running code is refused with the
line that installs it, unless the user opts down explicitly (`sandbox: rlimits` in the verifier's
settings, `--sandbox rlimits`, or HALO_PIPELINE_SANDBOX=rlimits), which is announced on the terminal
and recorded in the manifest.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from halo_pipeline.sandbox import seccomp
from halo_pipeline.sandbox.limits import budget

SYSTEM_RO_BINDS = ("/usr", "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d")
USR_MERGED_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"
Mode = Literal["bubblewrap", "rlimits"]


class SandboxUnavailable(RuntimeError):
    """Model-written code cannot run here with the isolation asked for."""


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
    denied = seccomp.denied_calls()
    facts["budget"] = budget().describe()
    facts["seccomp"] = f"denies {', '.join(denied)}" if denied else f"none: no filter for {platform.machine()}"
    return facts


@functools.cache
def _probe_bubblewrap() -> Isolation:
    """Whether bubblewrap works here, by running a real sandboxed `true` with the zygote's flags."""
    if not sys.platform.startswith("linux"):
        return Isolation("bubblewrap", f"bubblewrap needs Linux, this is {sys.platform}", available=False)
    if shutil.which("bwrap") is None:
        return Isolation("bubblewrap", "bwrap is not installed", available=False)
    argv = bwrap_argv(()) + ["/bin/true"]
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


def _binds_under_tmp(binds: tuple[str, ...]) -> list[list[str]]:
    """Binds that a run's private /tmp would hide: each is also bound at a stash path the run re-binds from."""
    tmp = os.path.realpath(tempfile.gettempdir()).rstrip("/") + "/"
    paths = [p for p in _interpreter_paths(binds) if (p.rstrip("/") + "/").startswith(("/tmp/", tmp))]
    return [[p, f"/.halo-binds/{i}"] for i, p in enumerate(paths)]


def bwrap_argv(binds: tuple[str, ...], cgroup_namespace: bool = True) -> list[str]:
    args = ["bwrap", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
    if cgroup_namespace:
        args.append("--unshare-cgroup-try")
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
