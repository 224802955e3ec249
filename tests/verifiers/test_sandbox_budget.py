"""The sandbox holds the whole sample: every process it starts runs under the seccomp filter (no
keyring to leave data in for another sample, no ptrace, no new namespaces), all of them together
share one memory and pids budget (a cgroup per run where one can be made, else rlimits split so
that their sum stays within memory_mb), and compiles run under the same kind of limits."""

from __future__ import annotations

import os
import platform
import textwrap
from collections.abc import Iterator

import pytest
from sandbox_env import bubblewrap_only, needs

import halo_pipeline.sandbox as sandbox
from halo_pipeline.sandbox import limits as budgets
from halo_pipeline.sandbox import seccomp
from halo_pipeline.sandbox.launcher import Launched
from halo_pipeline.verifiers.code import HARNESSES

MODES = [pytest.param("bubblewrap", marks=bubblewrap_only("this mode")), "rlimits"]
MACHINE = platform.machine()
has_filter = pytest.mark.skipif(MACHINE not in seccomp.AUDIT_ARCH, reason=f"no seccomp filter for {MACHINE}")
COLUMN = 0 if MACHINE == "x86_64" else 1


def nr(name: str) -> int:
    number = seccomp.DENIED[name][COLUMN]
    assert number is not None
    return number


def python(program: str, mode: str, **limits: object) -> sandbox.RunResult:
    return sandbox.run(
        role="harness_python:script",
        args={"program": textwrap.dedent(program)},
        modules=HARNESSES,
        mode=mode,
        limits=sandbox.Limits(**limits),  # type: ignore[arg-type]
    )


CALL = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
def call(name, *args):
    result = libc.syscall(*args)
    print(name, "ok" if result >= 0 else errno.errorcode.get(ctypes.get_errno(), ctypes.get_errno()), flush=True)
"""


# ---------------------------------------------------------------- seccomp


@has_filter
@pytest.mark.parametrize("mode", MODES)
def test_keyrings_are_denied_so_no_sample_leaves_data_for_another(mode: str) -> None:
    """A key added to the user keyring outlives the run and is found by any later process of the uid."""
    store = (
        CALL
        + f"""
call("add_key", {nr("add_key")}, b"user", b"halo-left-behind", b"the answers", 11, ctypes.c_long(-4))  # KEY_SPEC_USER_KEYRING
call("keyctl", {nr("keyctl")}, 0, ctypes.c_long(-4), 0)  # KEYCTL_GET_KEYRING_ID
"""
    )
    fetch = (
        CALL
        + f"""
call("request_key", {nr("request_key")}, b"user", b"halo-left-behind", None, 0)
call("keyctl_search", {nr("keyctl")}, 10, ctypes.c_long(-4), b"user", b"halo-left-behind", 0)  # KEYCTL_SEARCH
"""
    )
    first, second = python(store, mode), python(fetch, mode)
    assert first.stdout.split() == ["add_key", "EPERM", "keyctl", "EPERM"], first
    assert second.stdout.split() == ["request_key", "EPERM", "keyctl_search", "EPERM"], second


@has_filter
@pytest.mark.parametrize("mode", MODES)
def test_ptrace_process_vm_and_new_namespaces_are_denied(mode: str) -> None:
    program = (
        CALL
        + f"""
import time
child = os.fork()
if child == 0:
    time.sleep(5)
    os._exit(0)
call("ptrace_attach", {nr("ptrace")}, 16, child, 0, 0)  # PTRACE_ATTACH to our own child
call("ptrace_traceme", {nr("ptrace")}, 0, 0, 0, 0)
buf = ctypes.create_string_buffer(8)
iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)
call("process_vm_readv", {nr("process_vm_readv")}, child, iov, 1, iov, 1, 0)
call("unshare_user", {nr("unshare")}, 0x10000000)
call("clone_newuser", {seccomp.CLONE[COLUMN]}, 0x10000000 | 17, 0, 0, 0, 0)  # CLONE_NEWUSER | SIGCHLD
call("bpf", {nr("bpf")}, 0, 0, 0)
call("personality_exec_shield", {seccomp.PERSONALITY[COLUMN]}, 0x0400000)  # READ_IMPLIES_EXEC
call("personality_query", {seccomp.PERSONALITY[COLUMN]}, 0xFFFFFFFF)
os.kill(child, 9)
"""
    )
    run = python(program, mode)
    got = dict(zip(run.stdout.split()[::2], run.stdout.split()[1::2], strict=True))
    denied = ["ptrace_attach", "ptrace_traceme", "process_vm_readv", "unshare_user", "clone_newuser", "bpf", "personality_exec_shield"]
    assert {name: got.get(name) for name in denied} == dict.fromkeys(denied, "EPERM"), run
    assert got.get("personality_query") == "ok", run  # what the C library and programs ask is still answered


@has_filter
@needs("gcc")
@pytest.mark.parametrize("mode", MODES)
def test_a_compiled_program_runs_under_the_filter_too(mode: str) -> None:
    """The filter survives exec: a C program calling add_key directly gets EPERM."""
    source = f"""
#include <errno.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {{
    long r = syscall({nr("add_key")}, "user", "halo-left-behind", "the answers", 11L, -4L);
    printf("%s\\n", r >= 0 ? "stored" : errno == EPERM ? "EPERM" : "other");
    return 0;
}}
"""
    built = sandbox.run(["/usr/bin/gcc", "main.c", "-o", "prog"], files={"main.c": source}, mode=mode, collect=["prog"])
    assert built.returncode == 0, built.stderr
    run = sandbox.run(["./prog"], files={"prog": built.files["prog"]}, executable=["prog"], mode=mode)
    assert run.stdout.strip() == "EPERM", run


def test_the_filter_checks_the_architecture_and_has_a_program_for_each() -> None:
    for machine, arch in seccomp.AUDIT_ARCH.items():
        program = seccomp.program(machine)
        assert program and len(program) % 8 == 0 and len(program) // 8 < 4096  # BPF_MAXINSNS
        assert arch.to_bytes(4, "little") in program  # a call of another ABI never reaches the list
    assert seccomp.program("riscv64") == b"" and seccomp.denied_calls("riscv64") == []
    assert "keyctl" in seccomp.denied_calls("aarch64") and "iopl" not in seccomp.denied_calls("aarch64")


# ---------------------------------------------------------------- one budget per sample

HOLDERS = """
import os, time
half = {half_mb} << 20
r, w = os.pipe()
kids = []
for _ in range(4):
    try:
        pid = os.fork()
    except OSError:  # out of processes: that is the budget too
        break
    if pid == 0:
        os.close(r)
        try:
            block = b"x" * half  # written, so resident
        except MemoryError:
            os._exit(1)
        os.write(w, b"%d\\n" % os.getpid())
        time.sleep(30)
        os._exit(0)
    kids.append(pid)
os.close(w)
os.set_blocking(r, False)
held, dead, text = set(), set(), b""
deadline = time.time() + 20
while len(held | dead) < len(kids) and time.time() < deadline:
    try:
        text += os.read(r, 4096)
    except BlockingIOError:
        pass
    held = {{int(x) for x in text.split()}}
    for kid in kids:
        if kid not in dead and os.waitpid(kid, os.WNOHANG)[0]:
            dead.add(kid)
    time.sleep(0.05)
time.sleep(0.5)
for kid in kids:
    if kid not in dead and os.waitpid(kid, os.WNOHANG)[0]:
        dead.add(kid)
print("forked", len(kids), "holding", len(held - dead))
for kid in kids:
    try:
        os.kill(kid, 9)
    except ProcessLookupError:
        pass
"""


def holding(run: sandbox.RunResult) -> int:
    words = run.stdout.split()
    assert words[:1] == ["forked"] and words[2] == "holding", run
    return int(words[3])


@pytest.mark.parametrize("mode", MODES)
def test_children_of_one_sample_share_one_memory_budget(mode: str) -> None:
    """Four children each writing memory_mb/2: at most one can hold it (per-process limits let all four)."""
    run = python(HOLDERS.format(half_mb=512), mode, memory_mb=1024, processes=8, timeout_s=60, cpu_s=60)
    assert holding(run) <= 1, run


@pytest.fixture
def without_cgroups() -> Iterator[None]:
    """This process as where no cgroup can be made: the zygotes restart with the split rlimits."""
    sandbox.shutdown()
    budgets._budgets[os.getpid()] = budgets.Budget()
    yield
    sandbox.shutdown()
    budgets._budgets.pop(os.getpid(), None)


@pytest.mark.parametrize("mode", MODES)
def test_without_cgroups_the_split_rlimits_keep_the_sum_within_memory_mb(mode: str, without_cgroups: None) -> None:
    assert budgets.split(sandbox.Limits(memory_mb=2048, processes=8)) == (512, 4)
    assert budgets.split(sandbox.Limits(memory_mb=256, processes=32)) == (256, 1)
    assert "split" in str(sandbox.describe(mode)["budget"])
    run = python(HOLDERS.format(half_mb=1024), mode, memory_mb=2048, processes=8, timeout_s=60, cpu_s=60)
    assert holding(run) == 0, run  # each process may map 512 MB: none can hold 1024
    small = python("print(sum(range(10**6)))", mode, memory_mb=2048, processes=8)
    assert small.stdout.strip() == str(sum(range(10**6))), small  # an ordinary sample still runs


def test_the_manifest_says_which_budget_and_filter_are_in_force() -> None:
    facts = sandbox.describe("rlimits")
    assert str(facts["budget"]).startswith(("cgroup v1", "cgroup v2", "rlimits"))
    if MACHINE in seccomp.AUDIT_ARCH:
        assert "add_key" in str(facts["seccomp"]) and "ptrace" in str(facts["seccomp"])


# ---------------------------------------------------------------- compiles


@needs("gcc")
@pytest.mark.parametrize("mode", MODES)
def test_a_compile_that_reads_dev_zero_is_stopped_by_the_memory_budget(mode: str) -> None:
    """`#include "/dev/zero"` makes the compiler read forever into a growing buffer: the budget ends it."""
    limits = {"memory_mb": 256, "timeout_s": 60.0, "cpu_s": 60}
    run = sandbox.run(
        ["/usr/bin/gcc", "-c", "main.c", "-o", "main.o"],
        files={"main.c": '#include "/dev/zero"\n'},
        limits=sandbox.Limits(**limits),  # type: ignore[arg-type]
        mode=mode,
        collect=["main.o"],
    )
    assert run.returncode != 0 and "main.o" not in run.files, run
    assert not run.timed_out, "the memory budget, not the deadline, should end it"
    assert len(run.stderr) <= 256 << 10


@pytest.mark.parametrize("mode", MODES)
def test_each_run_has_a_cgroup_of_its_own_where_one_can_be_made(mode: str) -> None:
    budget = budgets.budget()
    if not budget.cgroup:
        pytest.skip("no writable cgroup here: the split rlimits are in force (tested above)")
    read = "print([line for line in open('/proc/self/cgroup').read().splitlines() if 'halo-sandbox-' in line])"
    first, second = python(read, mode), python(read, mode)
    assert first.stdout.strip() not in ("", "[]") and first.stdout != second.stdout, (first, second)
    assert f"halo-sandbox-{os.getpid()}/run-" in first.stdout


def test_a_report_larger_than_its_bound_is_refused_unread() -> None:
    """The pipeline reads a run's report into one buffer bounded by what the run may send back."""
    status_r, status_w = os.pipe()
    control_r, control_w = os.pipe()
    launched = Launched(status_r, control_w, 10.0, None, cap=1 << 20)
    writer = os.fork()
    if writer == 0:
        try:
            os.close(status_r)
            chunk = b"x" * (1 << 16)
            for _ in range(64):  # 4 MB: a supervisor gone wrong
                os.write(status_w, chunk)
        finally:
            os._exit(0)
    os.close(status_w)
    result = launched.wait()
    os.waitpid(writer, 0)
    os.close(control_r)
    assert result.error and "exceeded 1 MB" in result.error, result


@needs("gcc", "g++")
@pytest.mark.parametrize("mode", MODES)
def test_compiles_fit_the_samples_own_budget_and_dev_zero_does_not(mode: str) -> None:
    """`Limits.for_compile`: the verifier's memory_mb and output cap, the compile's time."""
    limits = sandbox.Limits().for_compile(60.0)
    assert (limits.memory_mb, limits.output_kb, limits.timeout_s) == (1024, 256, 60.0)
    if not budgets.budget().cgroup:
        limits = limits.model_copy(update={"memory_mb": 2048})  # the split rlimits: room for gcc's four processes
    program = (
        '#include <bits/stdc++.h>\nint main(){std::map<int, std::vector<std::string>> m; m[1].push_back("a"); std::cout << m.size();}\n'
    )
    built = sandbox.run(
        ["/usr/bin/g++", "-O1", "-std=c++17", "main.cc", "-o", "prog"],
        files={"main.cc": program},
        limits=limits,
        mode=mode,
        collect=["prog"],
    )
    assert built.returncode == 0 and built.files.get("prog"), built.stderr
    zero = sandbox.run(["/usr/bin/gcc", "-c", "main.c"], files={"main.c": '#include "/dev/zero"\n'}, limits=limits, mode=mode)
    assert zero.returncode != 0 and not zero.timed_out and "out of memory" in zero.stderr, zero
