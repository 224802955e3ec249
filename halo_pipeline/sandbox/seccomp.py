"""The seccomp filter every sandboxed process runs under: a classic-BPF program built here, in Python.

It denies (EPERM) what Docker's default profile denies and samples do not need: the kernel keyrings
(a key outlives the run and is readable by a later one of the same uid), tracing and reading other
processes (ptrace, process_vm_*, kcmp, pidfd_getfd), eBPF, perf, userfaultfd, io_uring, every kind of
mount and namespace change (mount and the new mount API, unshare, setns, clone with a CLONE_NEW* flag;
clone3, whose flags a filter cannot read, answers ENOSYS so the C library falls back to clone),
kernel modules, kexec, reboot, swap, accounting, the clocks, file handles, chroot, host names,
quotas, the kernel log, vhangup, I/O ports, and personality() beyond the ones Docker allows. A
syscall of another ABI (32-bit x86 through int 0x80, x32) kills the process: its numbers differ
and would slip past the list.

The program is the same bytes bubblewrap's `--seccomp FD` takes; the zygote installs it with
prctl(PR_SET_SECCOMP) in each run, after no-new-privs, in both isolation modes (the zygote itself
must still unshare and mount for every run, so the filter cannot be bubblewrap's).
"""

from __future__ import annotations

import platform
import struct

# linux/audit.h
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# linux/seccomp.h
RET_KILL_PROCESS, RET_ERRNO, RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
EPERM, ENOSYS = 1, 38
# linux/filter.h: the classic-BPF opcodes used here
LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
# struct seccomp_data: nr at 0, arch at 4, args[] from 16 (the low 32 bits of args[0] at 16 on little-endian)
NR, ARCH, ARG0_LO = 0, 4, 16
X32_SYSCALL_BIT = 0x40000000
CLONE_NEW_FLAGS = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)  # Docker's: linux, linux32, uname26 (and both), query

# (x86_64, aarch64) numbers; None where the architecture has no such call
DENIED: dict[str, tuple[int | None, int | None]] = {
    "add_key": (248, 217),
    "request_key": (249, 218),
    "keyctl": (250, 219),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "kcmp": (312, 272),
    "pidfd_getfd": (438, 438),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "fanotify_init": (300, 262),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    "unshare": (272, 97),
    "setns": (308, 268),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "create_module": (174, None),
    "get_kernel_syms": (177, None),
    "query_module": (178, None),
    "reboot": (169, 142),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "acct": (163, 89),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "adjtimex": (159, 171),
    "clock_adjtime": (305, 266),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "iopl": (172, None),
    "ioperm": (173, None),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "lookup_dcookie": (212, 18),
    "vhangup": (153, 58),
    "syslog": (103, 116),
    "uselib": (134, None),
    "_sysctl": (156, None),
    "ustat": (136, None),
    "sysfs": (139, None),
    "nfsservctl": (180, 42),
}
CLONE = (56, 220)
CLONE3 = (435, 435)
PERSONALITY = (135, 92)


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program(machine: str | None = None) -> bytes:
    """The filter for `machine` (default: this one), as packed `struct sock_filter`s; b"" where unsupported."""
    machine = machine or platform.machine()
    if machine not in AUDIT_ARCH:
        return b""
    col = 0 if machine == "x86_64" else 1
    deny = _insn(RET_K, RET_ERRNO | EPERM)
    out = [
        _insn(LD_W_ABS, ARCH),
        _insn(JEQ_K, AUDIT_ARCH[machine], jt=1),
        _insn(RET_K, RET_KILL_PROCESS),  # another ABI: its numbers would slip past the list
        _insn(LD_W_ABS, NR),
    ]
    if machine == "x86_64":
        out += [_insn(JGE_K, X32_SYSCALL_BIT, jf=1), _insn(RET_K, RET_KILL_PROCESS)]
    for numbers in DENIED.values():
        if (number := numbers[col]) is not None:
            out += [_insn(JEQ_K, number, jf=1), deny]
    out += [_insn(JEQ_K, CLONE3[col], jf=1), _insn(RET_K, RET_ERRNO | ENOSYS)]
    # clone: no new namespace (flags are args[0] on both architectures)
    out += [_insn(JEQ_K, CLONE[col], jf=3), _insn(LD_W_ABS, ARG0_LO), _insn(JSET_K, CLONE_NEW_FLAGS, jf=1), deny]
    out += [_insn(LD_W_ABS, NR)]
    # personality: only the values Docker allows
    checks = [_insn(JEQ_K, value, jt=len(PERSONALITIES) - i) for i, value in enumerate(PERSONALITIES)]
    out += [_insn(JEQ_K, PERSONALITY[col], jf=len(checks) + 2), _insn(LD_W_ABS, ARG0_LO), *checks, deny]
    out += [_insn(RET_K, RET_ALLOW)]
    return b"".join(out)


def denied_calls(machine: str | None = None) -> list[str]:
    """What the filter refuses here, for the manifest and the docs."""
    machine = machine or platform.machine()
    if machine not in AUDIT_ARCH:
        return []
    col = 0 if machine == "x86_64" else 1
    names = [name for name, numbers in DENIED.items() if numbers[col] is not None]
    return [*names, "clone with CLONE_NEW* flags", "clone3 (ENOSYS)", "personality() but " + "/".join(hex(p) for p in PERSONALITIES)]
