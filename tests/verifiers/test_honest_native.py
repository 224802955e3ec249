"""Honest corpus, C / C++ / Rust: solutions that attack nothing must score what a reference harness gives them.

The reference is the harness `test` statements were written for, built here independently of the
verifier: **one** program, the solution's text and then the tests in `main`, compiled with the same
compiler and flags and run on the host. Its CHECK / check! counts per site (a textual occurrence:
`__COUNTER__` in C/C++, `line!()`/`column!()` in Rust); a site passes when it ran and every run of
it held; a C++ exception or a Rust panic inside a check fails that check only; a crash ends the
program (the sites not reached fail). Reward = compile_credit + (1 - compile_credit) x passed /
sites, or 0 when it does not compile. Ours runs the tests in a process of their own against the
solution's process and must give the same reward to every reference solution and every wrong
variant of `native_corpus.py`, with gcc and clang.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import sandbox_env  # noqa: F401  (bubblewrap, or the explicit rlimits opt-in where it is missing)
from native_corpus import TASKS, Task
from sandbox_env import needs, needs_rust

from halo_pipeline.verifiers import build_verifier
from halo_pipeline.verifiers.native_sources import C_PRELUDE, CPP_PRELUDE

CREDIT = 0.2
FLAGS = {"c": ["-O1", "-std=c11"], "cpp": ["-O1", "-std=c++17"], "rust": ["-C", "opt-level=1"]}

C_REFERENCE = r"""
#include <stdio.h>
static int ref_state[4096];
static void ref_site(int k, int ok) {
    if (!ok) { if (ref_state[k] != 2) { ref_state[k] = 2; printf("F %d\n", k); fflush(stdout); } }
    else if (ref_state[k] == 0) { ref_state[k] = 1; printf("P %d\n", k); fflush(stdout); }
}
#ifdef __cplusplus
#define CHECK(...) do { bool ref_ok_ = false; try { ref_ok_ = static_cast<bool>(__VA_ARGS__); } catch (...) {} ref_site(__COUNTER__, ref_ok_); } while (0)
#else
#define CHECK(...) ref_site(__COUNTER__, !!(__VA_ARGS__))
#endif
int main(void) {
@TESTS@
    return 0;
}
enum { REF_SITES = __COUNTER__ };
int ref_sites(void) { return REF_SITES; }
"""

RUST_REFERENCE = r"""
static REF_STATE: std::sync::Mutex<Vec<((u32, u32), u8)>> = std::sync::Mutex::new(Vec::new());
fn ref_site(at: (u32, u32), ok: bool) {
    let mut state = REF_STATE.lock().unwrap_or_else(|e| e.into_inner());
    let found = state.iter().position(|(k, _)| *k == at);
    let i = match found { Some(i) => i, None => { state.push((at, 0)); state.len() - 1 } };
    if !ok && state[i].1 != 2 { state[i].1 = 2; println!("F {:?}", at); }
    else if ok && state[i].1 == 0 { state[i].1 = 1; println!("P {:?}", at); }
}
macro_rules! check {
    ($($c:tt)*) => {{
        let ok = ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| -> bool { $($c)* }));
        ref_site((line!(), column!()), matches!(ok, Ok(true)));
    }};
}
fn main() {
    std::panic::set_hook(Box::new(|_| {}));
    let _ = std::panic::catch_unwind(|| {
@TESTS@
    });
}
"""


def reference_reward(language: str, compiler: str, solution: str, test: str) -> float:
    """The one-program harness: build, run, count what passed among all sites."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if language == "rust":
            program = re.sub(r"\bfn\s+main\s*\(", "fn ref_solution_main(", solution) + RUST_REFERENCE.replace("@TESTS@", test)
            (work / "main.rs").write_text(program)
            argv = [compiler, "--edition", "2021", *FLAGS["rust"], "--cap-lints", "allow", "-o", "prog", "main.rs"]
            total = test.count("check!(")
        else:
            prelude = "".join(f"#include <{h}>\n" for h in (CPP_PRELUDE if language == "cpp" else C_PRELUDE))
            program = prelude + "#define main ref_solution_main\n" + solution + "\n#undef main\n" + C_REFERENCE.replace("@TESTS@", test)
            ext = "cc" if language == "cpp" else "c"
            (work / f"main.{ext}").write_text(program)
            argv = [compiler, *FLAGS[language], f"main.{ext}", "-o", "prog", "-lm"]
            total = len(re.findall(r"\bCHECK\(", test))
        built = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=300)
        if built.returncode != 0:
            return 0.0
        ran = subprocess.run(["./prog"], cwd=work, capture_output=True, text=True, timeout=60)
        final: dict[str, str] = {}
        for line in ran.stdout.splitlines():
            kind, _, site = line.partition(" ")
            final[site] = "F" if kind == "F" or final.get(site) == "F" else "P"
        passed = sum(v == "P" for v in final.values())
        return min(1.0, CREDIT + (1 - CREDIT) * passed / total)


def _check_language(language: str, verifier: dict[str, object], compiler: str) -> None:
    tasks: list[Task] = TASKS[language]
    samples = [(task, sample) for task in tasks for sample in task.samples()]
    results = build_verifier({**verifier, "allow_code_execution": True, "timeout_s": 20}).verify_batch([s for _, s in samples])
    disagree = {}
    for (task, sample), result in zip(samples, results, strict=True):
        expected = reference_reward(language, compiler, str(sample["completion"]), task.test)
        variant = "reference" if sample["completion"] == task.solution else f"wrong {task.wrong.index(str(sample['completion']))}"
        if variant == "reference":
            assert expected == 1.0, (task.name, "the reference solution must pass its own tests")
        else:
            assert expected < 1.0, (task.name, variant, "a wrong variant the tests cannot tell apart proves nothing")
        if result.reward != pytest.approx(expected) or result.passed != (expected == 1.0) or result.error:
            disagree[(task.name, variant)] = (result.reward, expected, result.error, result.details.get("failures"))
    assert not disagree, disagree


@needs("gcc")
def test_c_with_gcc_scores_what_the_reference_gives() -> None:
    _check_language("c", {"name": "gcc"}, shutil.which("gcc") or "gcc")


@needs("clang")
def test_c_with_clang_scores_what_the_reference_gives() -> None:
    _check_language("c", {"name": "clang"}, shutil.which("clang") or "clang")


@needs("g++")
def test_cpp_with_gcc_scores_what_the_reference_gives() -> None:
    _check_language("cpp", {"name": "gcc", "language": "cpp"}, shutil.which("g++") or "g++")


@needs("clang++")
def test_cpp_with_clang_scores_what_the_reference_gives() -> None:
    _check_language("cpp", {"name": "clang", "language": "cpp"}, shutil.which("clang++") or "clang++")


@needs_rust()
def test_rust_scores_what_the_reference_gives() -> None:
    _check_language("rust", {"name": "rust"}, shutil.which("rustc") or "rustc")
