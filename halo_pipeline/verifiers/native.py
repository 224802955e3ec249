"""Building C, C++ and Rust completions for the code verifiers, with tests the solution cannot rig.

`test` statements (CHECK(cond) / check!(cond)) are compiled into the program, so they share its
process. What keeps the result out of the solution's reach:

- C/C++: the solution is preprocessed on its own (`cc -E`), so its macros are expanded and gone
  before the tests' code, which follows it with the harness's own CHECK, counters with internal
  linkage and per-sample random names (the solution can neither name nor redefine them), and the
  test function in a namespace (C++) where the solution's global comparison operators are hidden.
  The record carries a nonce that arrives on a one-shot pipe read in the executable's
  `.preinit_array`, before any of the solution's constructors; a build with a second preinit entry
  or an IFUNC (code that runs even earlier) is refused, and so is a solution that defines a C
  library function (it would replace `strcmp` for the tests too) unless it is the entry point.
  Exiting, crashing, atexit/signal handlers and writes to any descriptor leave no valid record.
- Rust: the tests are the first item of the solution's module (its macros are not in scope there;
  std's macros and prelude are imported explicitly), with private counters and their own check!;
  the solution is compiled under forbid(unsafe_code) (no no_mangle/link_section/asm/raw fds) and
  runs without /proc, so it cannot reach the nonce or the result pipe at all. Hand-written
  PartialEq/PartialOrd/Not impls (a value equal to anything) are refused.

Not contained in-process, and documented: C/C++ code that reads its own memory for the nonce,
inline assembly, pragmas aimed at the tests, and C++ operators for the solution's own types.
I/O tests (`tests: [{input, output}]`), judged by the parent, are the fully contained form.
"""

from __future__ import annotations

import functools
import re
import secrets
import shutil
import subprocess
from pathlib import Path

PREPROCESSED = "solution.i"
C_HARNESS = """#include <unistd.h>
#include <stdio.h>
#ifdef __cplusplus
extern "C" void halo_tests_@R@(unsigned long *passed, unsigned long *total);
#else
void halo_tests_@R@(unsigned long *passed, unsigned long *total);
#endif
static char halo_nonce_@R@[128];
static long halo_nonce_len_@R@ = -1;
/* preinit: before every constructor of the program; the nonce pipe is then closed */
static void halo_preinit_@R@(int argc, char **argv, char **envp) {
    (void)argc; (void)argv; (void)envp;
    halo_nonce_len_@R@ = (long)read(4, halo_nonce_@R@, sizeof halo_nonce_@R@ - 1);
    close(4);
}
__attribute__((section(".preinit_array"), used)) static void (*halo_preinit_entry_@R@)(int, char **, char **) = halo_preinit_@R@;
int main(void) {
    unsigned long passed = 0, total = 0;
    char line[256];
    if (halo_nonce_len_@R@ <= 0) _exit(3);
    halo_tests_@R@(&passed, &total);
    int n = snprintf(line, sizeof line, "%.*s{\\"passed\\": %lu, \\"total\\": %lu}\\n", (int)halo_nonce_len_@R@, halo_nonce_@R@, passed, total);
    if (n > 0) (void)!write(3, line, (size_t)n);
    _exit(0);
}
"""
C_TESTS = """
#line 1 "tests"
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC reset_options
#endif
static unsigned long halo_p_@R@, halo_t_@R@;
#define CHECK(cond) do { halo_t_@R@++; if (cond) halo_p_@R@++; } while (0)
"""
CPP_HIDE_OPERATORS = """namespace halo_ns_@R@ {
struct halo_tag_@R@ {};
bool operator==(halo_tag_@R@, halo_tag_@R@); bool operator!=(halo_tag_@R@, halo_tag_@R@);
bool operator<(halo_tag_@R@, halo_tag_@R@); bool operator>(halo_tag_@R@, halo_tag_@R@);
bool operator<=(halo_tag_@R@, halo_tag_@R@); bool operator>=(halo_tag_@R@, halo_tag_@R@);
bool operator!(halo_tag_@R@);
"""
RUST_HARNESS = """
#[used]
#[link_section = ".preinit_array"]
static HALO_PREINIT: extern "C" fn() = halo_preinit;
static mut HALO_NONCE: [u8; 128] = [0; 128];
static mut HALO_NONCE_LEN: isize = -1;
// preinit: before anything else in the program; the nonce pipe is then closed
extern "C" fn halo_preinit() {
    use std::io::Read;
    use std::os::unix::io::FromRawFd;
    let mut pipe = unsafe { std::fs::File::from_raw_fd(4) };
    let n = pipe.read(unsafe { &mut *std::ptr::addr_of_mut!(HALO_NONCE) }).map(|n| n as isize).unwrap_or(-1);
    unsafe { HALO_NONCE_LEN = n; }
}
fn main() {
    use std::io::Write;
    use std::os::unix::io::FromRawFd;
    let n = unsafe { HALO_NONCE_LEN };
    if n <= 0 { std::process::exit(3); }
    std::panic::set_hook(Box::new(|_| {}));
    let (passed, total) = solution::halo_tests_@R@::run();
    let nonce = unsafe { &*std::ptr::addr_of!(HALO_NONCE) };
    let mut out = unsafe { std::fs::File::from_raw_fd(3) };
    let mut line = nonce[..n as usize].to_vec();
    line.extend_from_slice(format!("{{\\"passed\\": {}, \\"total\\": {}}}\\n", passed, total).as_bytes());
    let _ = out.write_all(&line);
    std::process::exit(0);
}
"""
RUST_TESTS = """
    #[allow(unused_imports, unused_macros, dead_code, non_snake_case)]
    pub(crate) mod halo_tests_@R@ {
        use super::*;
        // explicit imports beat the solution's glob-imported names; the prelude glob makes a clash an error
        use ::std::prelude::rust_2021::*;
        use ::std;
        use ::std::{assert, assert_eq, assert_ne, concat, format, matches, panic, print, println, stringify, todo, unimplemented, unreachable, vec};
        static HALO_P: ::std::sync::atomic::AtomicUsize = ::std::sync::atomic::AtomicUsize::new(0);
        static HALO_T: ::std::sync::atomic::AtomicUsize = ::std::sync::atomic::AtomicUsize::new(0);
        macro_rules! check {
            ($cond:expr) => {{
                HALO_T.fetch_add(1, ::std::sync::atomic::Ordering::SeqCst);
                if let ::std::result::Result::Ok(true) = ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| $cond)) {
                    HALO_P.fetch_add(1, ::std::sync::atomic::Ordering::SeqCst);
                }
            }};
        }
        pub(crate) fn run() -> (usize, usize) {
@BODY@
            (HALO_P.load(::std::sync::atomic::Ordering::SeqCst), HALO_T.load(::std::sync::atomic::Ordering::SeqCst))
        }
    }
"""
RIGGED_RUST_IMPL = re.compile(r"\bPartial(?:Eq|Ord)\b|\bimpl\b[^{;]*\bNot\b[^{;]*\bfor\b")
RUST_DERIVE = re.compile(r"#\s*\[\s*derive\s*\([^)\]]*\)\s*\]")
RUST_INNER_ATTRS = re.compile(r"\A(\s*(?://[^\n]*\n\s*)*#!\[[^\]]*\]\s*)+")


def random_tag() -> str:
    return secrets.token_hex(8)


# ---------------------------------------------------------------- C and C++


def c_sources(language: str, code: str) -> dict[str, str]:
    """Step 1 input: the solution alone, to be preprocessed (its macros end there)."""
    return {f"solution.{_ext(language)}": code}


def c_preprocess_argv(language: str, compiler: str, flags: list[str]) -> list[str]:
    return [compiler, *flags, "-E", "-Dmain=halo_candidate_main__", f"solution.{_ext(language)}", "-o", PREPROCESSED]


def c_test_sources(language: str, preprocessed: str, test_body: str, tag: str) -> dict[str, str]:
    """Step 2 input: the harness TU, and the tests TU = the macro-free solution + the harness's CHECK."""
    ext = _ext(language)
    tests = preprocessed + C_TESTS.replace("@R@", tag)
    signature = f"void halo_tests_{tag}(unsigned long *passed, unsigned long *total)"
    body = f'{signature} {{\n#line 1 "test"\n{test_body}\n*passed = halo_p_{tag}; *total = halo_t_{tag};\n}}\n'
    if language == "cpp":  # unqualified operator lookup stops at this namespace: global overloads are hidden
        tests += CPP_HIDE_OPERATORS.replace("@R@", tag) + body + "}\n"
        tests += f'extern "C" {signature} {{ halo_ns_{tag}::halo_tests_{tag}(passed, total); }}\n'
    else:
        tests += body
    return {f"harness.{ext}": C_HARNESS.replace("@R@", tag), f"tests.{ext}": tests}


def c_build_argv(language: str, compiler: str, flags: list[str]) -> list[str]:
    """Step 2: compile both TUs, link (harness first), and describe the result for `c_inspect`."""
    ext = _ext(language)
    script = (
        f'"$0" "$@" -c tests.{ext} -o tests.o && "$0" "$@" -c harness.{ext} -o harness.o && '
        '"$0" "$@" harness.o tests.o -o prog -lm && '
        "{ nm -g --defined-only tests.o; echo @@; readelf -hSW prog; echo @@; readelf -rsW prog; } > prog.info"
    )
    return ["/bin/sh", "-c", script, compiler, *flags]


def c_inspect(info: str, compiler: str, entry_point: str | None) -> str | None:
    """Why this build is refused (code that runs before the nonce is read, a replaced library function), or None."""
    parts = info.split("@@\n")
    if len(parts) != 3:
        return "the build could not be inspected (readelf and nm from binutils are needed: apt-get install binutils)"
    symbols, headers, dynamic = parts
    pointer = 8 if "ELF64" in headers else 4
    preinit = [int(m, 16) for m in re.findall(r"PREINIT_ARRAY\s+[0-9a-fA-F]+\s+[0-9a-fA-F]+\s+([0-9a-fA-F]+)", headers)]
    if sum(preinit) != pointer:
        return "the solution adds pre-initialisation code (.preinit_array), which could run before the harness"
    if re.search(r"^\s*\d+:\s+[0-9a-fA-F]+\s+\S+\s+IFUNC\s|\bR_\w+_IRELATIVE?\b", dynamic, re.MULTILINE):
        return "the solution defines an IFUNC resolver, which runs before the harness"
    defined = {line.split()[-1] for line in symbols.splitlines() if len(line.split()) >= 3}
    replaced = sorted(name for name in defined & _library_symbols(compiler) if name != entry_point)
    if replaced:
        return (
            f"the solution defines `{replaced[0]}`, a C library function (it would replace the library's for the tests too): "
            "rename it, or name it as the sample's entry_point"
        )
    return None


@functools.cache
def _library_symbols(compiler: str) -> frozenset[str]:
    """Unmangled functions the C and math libraries export (what a solution must not replace under the tests)."""
    names: set[str] = set()
    for lib in ("libc.so.6", "libm.so.6"):
        try:
            path = subprocess.run([compiler, f"-print-file-name={lib}"], capture_output=True, text=True, timeout=60).stdout.strip()
            listing = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for line in listing.splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[1] in "TtWwi":
                names.add(fields[2].split("@")[0])
    return frozenset(n for n in names if not n.startswith("_"))


def _ext(language: str) -> str:
    return "c" if language == "c" else "cc"


# ---------------------------------------------------------------- Rust


def rust_check_refusal(code: str) -> str | None:
    """Hand-written comparison impls would let a returned value equal anything: refused (derives are fine)."""
    if RIGGED_RUST_IMPL.search(RUST_DERIVE.sub("", code)):
        return (
            "the solution implements PartialEq/PartialOrd/Not by hand, which could make a value equal anything "
            "under check!: derive them, or use I/O tests"
        )
    return None


def rust_test_source(code: str, test_body: str, tag: str) -> str:
    """The solution in `mod solution` (forbid(unsafe_code)) with the tests as its first item, then the harness."""
    code = re.sub(r"\bfn\s+main\s*\(", "fn halo_candidate_main(", code)
    inner = RUST_INNER_ATTRS.match(code)
    attrs, rest = (inner.group(0), code[inner.end() :]) if inner else ("", code)
    tests = RUST_TESTS.replace("@R@", tag).replace("@BODY@", test_body)
    module = f"#[forbid(unsafe_code)]\n#[allow(dead_code)]\nmod solution {{\n{attrs}\n{tests}\n{rest}\n}}\n"
    return module + RUST_HARNESS.replace("@R@", tag)


@functools.cache
def rust_sysroot() -> str:
    rustc = shutil.which("rustc")
    if rustc is None:
        raise FileNotFoundError("rustc is not installed")
    return subprocess.run([rustc, "--print", "sysroot"], capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def rust_compiler() -> str:
    return str(Path(rust_sysroot()) / "bin" / "rustc")
