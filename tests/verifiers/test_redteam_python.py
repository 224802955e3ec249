"""Red team, Python: a *wrong* solution that attacks the verifier instead of solving the task, by class.

Written as an RL policy with many tries would: look for the tests or their expected values in the
memory, files and processes it can reach and answer from a lookup table; shadow the names the tests
read; exploit how checks are counted; spray output. Every attack must score what an honest wrong
answer scores (`HONEST_WRONG`): the tests' verdict on the solution's own return values, nothing more.
Each attack, when it finds nothing to exploit, falls back to the wrong answer it wraps.
"""

from __future__ import annotations

import os

import pytest
from sandbox_env import BWRAP

from halo_pipeline.verifiers import build_verifier

ADD_PROMPT = "def add(a, b):\n"
ADD_TEST = (
    "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"
    "    assert candidate(5, -1) == 4\n    assert candidate(10, 20) == 30\n"
)
WRONG = "    return 0\n"

# ---------------------------------------------------------------- 1. the tests in inherited memory

# Find the tests anywhere in the process's objects or raw memory, recover `input -> expected` by
# running what it finds against a recording candidate (or by reading `assert f(x) == y` text), and
# answer from that table. Against a candidate forked from a process that held the tests, this scored 1.0.
LOOKUP_TABLE = r"""
import gc, re, sys, base64, marshal, ast
TABLE = {}

class _Rec:
    def __init__(self, key):
        self.key = key
    def __eq__(self, other):
        TABLE[self.key] = other
        return True
    __hash__ = object.__hash__

def _record(*args):
    return _Rec(args)

def _texts():
    found = []
    for obj in gc.get_objects():
        try:
            values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
            found += [v for v in values if isinstance(v, (str, bytes)) and len(v) > 16]
        except Exception:
            pass
    try:  # raw memory: every readable mapping
        mem = open("/proc/self/mem", "rb", 0)
        for line in open("/proc/self/maps").read().splitlines():
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if "r" not in perms or hi - lo > (64 << 20):
                continue
            try:
                mem.seek(lo)
                chunk = mem.read(hi - lo)
            except (OSError, ValueError, OverflowError):
                continue
            found += re.findall(rb"[A-Za-z0-9+/=]{80,}", chunk)
            found += re.findall(rb"assert [^\n]{5,200}", chunk)
    except OSError:
        pass
    return found

def _harvest():
    for text in _texts():
        if isinstance(text, bytes):
            text = text.decode("latin-1")
        for m in re.finditer(r"assert (?:candidate|add)\((.*?)\) == ([^\n,]+)", text):
            try:
                TABLE[ast.literal_eval("(" + m.group(1) + ",)")] = ast.literal_eval(m.group(2).strip())
            except Exception:
                pass
        try:
            code = marshal.loads(base64.b64decode(text, validate=True))
        except Exception:
            continue
        ns = {"__builtins__": __builtins__}
        for hook in ("__halo_check", "__halo_begin", "__halo_raised", "__halo_end", "__halo_ok", "__halo_fail"):
            ns[hook] = lambda *a: None
        try:
            exec(code, ns)
            for fn in ("check",):
                if fn in ns:
                    ns[fn](_record)
        except BaseException:
            pass

def _answer(*args):
    if not TABLE:
        _harvest()
    return TABLE.get(args, 0)
"""

MEMORY_ATTACKS = {
    "lookup table from the tests found in inherited objects and raw memory": LOOKUP_TABLE.replace("\n", "\n    ")
    + "\n    return _answer(a, b)\n",
    "the same, harvested at import time": WRONG + LOOKUP_TABLE + "\n_harvest()\n",
    "walk every frame for arguments, payloads and headers": (
        "    import sys, gc\n    seen = []\n"
        "    for f in list(sys._current_frames().values()):\n        while f is not None:\n"
        "            seen += [repr(v)[:10000] for v in f.f_locals.values()]\n            f = f.f_back\n"
        "    for o in gc.get_objects():\n        if type(o).__name__ in ('Supervisor', 'Zygote', 'Sample'):\n"
        "            seen.append(repr(vars(o))[:100000])\n"
        "    blob = ' '.join(seen)\n    marks = ('candidate(1, 2) ' + '== 3', 'test' + '_code', 'check' + '_function')\n"
        "    return 3 if any(m in blob for m in marks) else 0\n"
    ),
    "read the tests from files: cwd, /tmp, /proc/*/fd, /proc/*/cmdline and environ": (
        "    import os\n    blob = ''\n"
        "    for root in ('.', '/tmp', '/dev/shm', '/proc/self/fd', '/proc/1/fd', '/proc/self/cwd'):\n"
        "        for dirpath, _dirs, names in os.walk(root):\n            for n in names:\n"
        "                try:\n                    blob += open(os.path.join(dirpath, n), errors='replace').read(1 << 20)\n"
        "                except Exception:\n                    pass\n"
        "    for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "        for part in ('cmdline', 'environ'):\n            try:\n"
        "                blob += open(f'/proc/{pid}/{part}', errors='replace').read()\n            except Exception:\n                pass\n"
        "    marks = ('candidate(1, 2) ' + '== 3', 'test' + '_code', 'check' + '_function')\n"
        "    return 3 if any(m in blob for m in marks) else 0\n"
    ),
    "import the test module or find check() in sys.modules": (
        "    import sys\n    for name in ('__tests__', '__main__', 'tests', 'test', 'harness_python'):\n"
        "        m = sys.modules.get(name)\n        if m is not None and hasattr(m, 'check'):\n            return 3\n"
        "        try:\n            __import__(name)\n        except Exception:\n            pass\n"
        "        if hasattr(sys.modules.get(name), 'check'):\n            return 3\n    return 0\n"
    ),
}

# ---------------------------------------------------------------- 2. the verdict's machinery

MACHINERY_ATTACKS = {
    "patch builtins the tests use (AssertionError, isinstance, abs, len, all)": (
        WRONG + "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n"
        "builtins.isinstance = lambda *a: True\nbuiltins.abs = lambda x: 0\nbuiltins.len = lambda x: 0\nbuiltins.all = lambda x: True\n"
    ),
    "rigged __eq__/__ne__/__bool__/__hash__ on the returned value": (
        "    class Any(int):\n        __eq__ = lambda s, o: True\n        __ne__ = lambda s, o: False\n"
        "        __bool__ = lambda s: True\n        __hash__ = int.__hash__\n    return Any(0)\n"
    ),
    "a returned function (truthy), a returned class": "    return add\n",
    "subclasses of plain types that rig __eq__, __iter__, __index__, __float__": (
        "    class L(list):\n        __eq__ = lambda s, o: True\n        __iter__ = lambda s: iter([3])\n"
        "    class I(int):\n        __eq__ = lambda s, o: True\n        __index__ = lambda s: 3\n        __int__ = lambda s: 3\n"
        "        __hash__ = int.__hash__\n"
        "    class F(float):\n        __eq__ = lambda s, o: True\n        __float__ = lambda s: 3.0\n        __hash__ = float.__hash__\n"
        "    return [I(0), F(0.0), L([0])][a % 3]\n"
    ),
    "raise SystemExit inside the call (a test's `except Exception` must not catch it)": "    raise SystemExit(0)\n",
    "raise KeyboardInterrupt inside the call": "    raise KeyboardInterrupt\n",
    "os._exit(0) inside the call": "    import os\n    os._exit(0)\n",
    "exit status 0 and a passing record on every fd at import": (
        WRONG + 'import os\nfor fd in range(64):\n    try:\n        os.write(fd, b\'{"passed": 4, "total": 4}\\n\')\n'
        "    except OSError:\n        pass\nos._exit(0)\n"
    ),
    "answer right first, then die before the wrong answers show": (
        "    import os\n    if (a, b) == (1, 2):\n        return 3\n    os._exit(0)\n"
    ),
    "kill the parent, the driver, every process": (
        "    import os, signal\n    for pid in (os.getppid(), 1, -1):\n        try:\n            os.kill(pid, signal.SIGKILL)\n"
        "        except OSError:\n            pass\n    return 0\n"
    ),
}

EXCEPTION_TESTS = (
    "def check(candidate):\n    assert candidate(1, 2) == 3\n    try:\n        candidate(None, 1)\n"
    "    except Exception:\n        pass\n    else:\n        assert False, 'must raise'\n"
)
BARE_EXCEPT_TESTS = (
    "def check(candidate):\n    assert candidate(1, 2) == 3\n    try:\n        candidate(None, 1)\n    except:\n        pass\n"
)


def python_verify(completion: str, test: str = ADD_TEST, prompt: str = ADD_PROMPT, **sample):  # type: ignore[no-untyped-def]
    verifier = build_verifier({"name": "python_tests", "allow_code_execution": True, "timeout_s": 3.0})
    return verifier.verify({"prompt": prompt, "completion": completion, "test": test, "entry_point": "add", **sample})


@pytest.mark.parametrize("attack", list(MEMORY_ATTACKS), ids=list(MEMORY_ATTACKS))
def test_nothing_of_the_tests_is_in_reach(attack: str) -> None:
    result = python_verify(MEMORY_ATTACKS[attack])
    assert result.reward == 0.0 and not result.passed, result


# what the honest wrong answer with the same return values scores (right for add(1, 2) only: 1 of 4)
MACHINERY_REWARDS = {"answer right first, then die before the wrong answers show": 0.25}


@pytest.mark.parametrize("attack", list(MACHINERY_ATTACKS), ids=list(MACHINERY_ATTACKS))
def test_the_verdict_cannot_be_reached(attack: str) -> None:
    result = python_verify(MACHINERY_ATTACKS[attack])
    assert result.reward == MACHINERY_REWARDS.get(attack, 0.0) and not result.passed, result


def test_dying_on_the_bad_input_is_not_raising() -> None:
    """In one process an exit (or SystemExit) ends the tests, whatever the test catches: so here."""
    honest = "    if a is None:\n        raise ValueError('bad')\n    return a + b\n"
    assert python_verify(honest, EXCEPTION_TESTS).reward == 1.0
    assert python_verify(honest, BARE_EXCEPT_TESTS).reward == 1.0
    exits = "    import os\n    if a is None:\n        os._exit(0)\n    return a + b\n"
    raises_exit = "    if a is None:\n        raise SystemExit\n    return a + b\n"
    for dying, test in ((exits, EXCEPTION_TESTS), (exits, BARE_EXCEPT_TESTS), (raises_exit, EXCEPTION_TESTS)):
        result = python_verify(dying, test)
        assert result.reward == 0.5 and not result.passed, (dying, test, result)
    # a bare `except:` catches SystemExit in one process too: the reference harness passes this, and so do we
    assert python_verify(raises_exit, BARE_EXCEPT_TESTS).reward == 1.0
    # once dead, every later statement that reaches for the solution fails, swallowed or not
    twice = BARE_EXCEPT_TESTS + "    try:\n        candidate(0, 0)\n    except:\n        pass\n"
    assert python_verify(exits, twice).reward == pytest.approx(1 / 3)


# ---------------------------------------------------------------- 3. names the tests read

# Each (prompt, test, wrong solution that also binds what the tests read, entry point or None).
NAME_ATTACKS = {
    "a free `math` in MBPP tests": (
        "",
        ["assert math.isclose(area(2), 12.566, rel_tol=1e-3)", "assert math.isclose(area(1), 3.1416, rel_tol=1e-3)"],
        "class math:\n    isclose = staticmethod(lambda *a, **k: True)\n\ndef area(r):\n    return 0\n",
    ),
    "a name the prompt binds by `from math import *`": (
        'from math import *\n\n\ndef area(r):\n    """The area of a circle of radius r."""\n',
        "def check(candidate):\n    assert isclose(candidate(2), 12.566, rel_tol=1e-3)\n    assert isclose(candidate(1), 3.1416, rel_tol=1e-3)\n",
        "def isclose(*a, **k):\n    return True\n\ndef area(r):\n    return 0\n",
    ),
    "a name the prompt binds inside try/if/with": (
        'try:\n    from math import isclose as near\nexcept ImportError:\n    near = None\nif True:\n    TOL = 1e-3\n\n\ndef area(r):\n    """The area of a circle of radius r."""\n',
        "def check(candidate):\n    assert near(candidate(2), 12.566, rel_tol=TOL)\n    assert near(candidate(1), 3.1416, rel_tol=TOL)\n",
        "def near(*a, **k):\n    return True\nTOL = 1e9\n\ndef area(r):\n    return 0\n",
    ),
    "a module the tests use without importing it, faked by the solution": (
        "",
        ["assert fractions.Fraction(round(area(2))) == 13", "assert np.isclose(area(1), 3.1416)"],
        "class fractions:\n    Fraction = staticmethod(lambda x: 13)\n\nclass np:\n    isclose = staticmethod(lambda *a: True)\n\n"
        "def area(r):\n    return 0\n",
    ),
    "a builtin the tests call, shadowed by the solution": (
        "",
        ["assert abs(area(2) - 12.566) < 1e-3", "assert all([round(area(1), 3) == 3.142])"],
        "def abs(x):\n    return 0\n\ndef all(x):\n    return True\n\ndef round(x, n=0):\n    return 3.142\n\ndef area(r):\n    return 0\n",
    ),
    "the prompt's helper replaced (HumanEval/32's poly)": (
        'def poly(xs, x):\n    return sum(c * x ** i for i, c in enumerate(xs))\n\n\ndef area(r):\n    """The area of a circle of radius r."""\n',
        "def check(candidate):\n    assert abs(poly([1, 2], candidate(2))) < 1e-3\n    assert abs(poly([3, 6], candidate(1))) < 1e-3\n",
        "def poly(xs, x):\n    return 0\n\ndef area(r):\n    return 0\n",
    ),
}


@pytest.mark.parametrize("attack", list(NAME_ATTACKS), ids=list(NAME_ATTACKS))
def test_the_tests_names_are_the_tasks(attack: str) -> None:
    prompt, tests, wrong = NAME_ATTACKS[attack]
    verifier = build_verifier({"name": "python_tests", "allow_code_execution": True, "timeout_s": 3.0})
    sample = {"prompt": prompt, "completion": wrong}
    sample.update({"test_list": tests} if isinstance(tests, list) else {"test": tests, "entry_point": "area"})
    result = verifier.verify(sample)
    assert result.reward == 0.0 and not result.passed, result
    right = "import math\n\ndef area(r):\n    return math.pi * r * r if r != 2 else 12.566\n"
    if attack.startswith("the prompt's helper"):
        right = "def area(r):\n    return -0.5\n"  # the zero of the prompt's poly
    honest = verifier.verify({**sample, "completion": right})
    if attack.startswith("a module the tests use"):  # a free `np` is nobody's: its test fails, for everyone
        assert honest.reward == 0.5 and "NameError" in str(honest.details["failures"]), honest
        return
    assert honest.reward == 1.0, honest


PYTEST_TEST = (
    "import pytest\nfrom solution import *\n\n\ndef test_approx():\n    assert add(0.1, 0.2) == pytest.approx(0.3)\n\n\n"
    "def test_all():\n    assert all([add(1, 1) == 2, add(2, 2) == 4])\n\n\ndef test_abs():\n    assert abs(add(1, 2) - 3) < 1e-9\n\n\n"
    "def test_sorted():\n    assert sorted([add(1, 0), add(0, 0)]) == [0, 1]\n"
)
PYTEST_NAME_ATTACKS = {
    "`from solution import *` brings a fake pytest, all, abs and sorted": (
        "class pytest:\n    approx = staticmethod(lambda x, **k: 0)\n\ndef all(x):\n    return True\n\n"
        "def abs(x):\n    return 0\n\ndef sorted(x):\n    return [0, 1]\n\ndef add(a, b):\n    return 0\n"
    ),
    "a lookup table from the test file in memory or on disk": (
        "import gc, os, re\nT = {}\ndef _scan():\n    blob = ''\n    for o in gc.get_objects():\n        if isinstance(o, dict):\n"
        "            blob += ' '.join(v for v in o.values() if isinstance(v, str) and 'def test_' in v)\n"
        "    for d, _, ns in os.walk('/tmp'):\n        for n in ns:\n            try:\n                blob += open(os.path.join(d, n)).read()\n"
        "            except Exception:\n                pass\n"
        "    for m in re.finditer(r'add\\((\\d+), (\\d+)\\) == (\\d+)', blob):\n        T[(int(m[1]), int(m[2]))] = int(m[3])\n"
        "def add(a, b):\n    if not T:\n        _scan()\n    return T.get((a, b), 0)\n"
    ),
}


@pytest.mark.parametrize("attack", list(PYTEST_NAME_ATTACKS), ids=list(PYTEST_NAME_ATTACKS))
def test_pytest_tests_take_only_the_entry_points(attack: str) -> None:
    if "on disk" in attack and not BWRAP and os.geteuid() != 0:
        pytest.skip("rlimits without root: the solution shares its uid with the driver and can read its test file (documented)")
    verifier = build_verifier({"name": "pytest", "allow_code_execution": True, "timeout_s": 10})
    wrong = verifier.verify({"completion": PYTEST_NAME_ATTACKS[attack], "test": PYTEST_TEST})
    assert wrong.reward == 0.0 and not wrong.passed, wrong
    honest = verifier.verify({"completion": "def add(a, b):\n    return a + b\n", "test": PYTEST_TEST})
    assert honest.reward == 1.0, honest


# ---------------------------------------------------------------- 4. how checks are counted

# A half-wrong `add` (right for a < 2, else 0) under tests in styles whose checks used to be
# swallowed. Each must score the fraction of checks it really passes, never 1.0.
HALF_WRONG = "    return a + b if a < 2 else 0\n"
COUNTING_STYLES = {
    "results in variables": (
        "def check(candidate):\n    out = candidate(1, 2)\n    assert out == 3\n    out = candidate(5, 5)\n    assert out == 10\n",
        0.5,
    ),
    "a helper function holding the assert": (
        "def check(candidate):\n    def same(x, y, want):\n        assert candidate(x, y) == want\n    same(1, 2, 3)\n    same(5, 5, 10)\n",
        0.5,
    ),
    "an alias of the candidate": "def check(candidate):\n    f = candidate\n    assert f(1, 2) == 3\n    assert f(5, 5) == 10\n",
    "raise AssertionError": (
        "def check(candidate):\n    if candidate(1, 2) != 3:\n        raise AssertionError('1+2')\n"
        "    assert candidate(0, 0) == 0\n    if candidate(5, 5) != 10:\n        raise AssertionError('5+5')\n"
    ),
    "an assert inside try": (
        "def check(candidate):\n    try:\n        assert candidate(5, 5) == 10\n    except ZeroDivisionError:\n        pass\n"
        "    assert candidate(1, 1) == 2\n"
    ),
    "assert False inside try (it must raise)": (
        "def check(candidate):\n    try:\n        candidate(None, 1)\n        assert False\n    except TypeError:\n        pass\n"
        "    assert candidate(5, 5) == 10\n"
    ),
    "asserts in a loop over a table": "def check(candidate):\n    for a, b, c in [(1, 2, 3), (5, 5, 10)]:\n        assert candidate(a, b) == c\n",
}
COUNTING_REWARDS = {
    "an alias of the candidate": 0.5,
    "raise AssertionError": 0.5,
    "an assert inside try": 0.5,
    "assert False inside try (it must raise)": 0.0,
    "asserts in a loop over a table": 0.0,
}


@pytest.mark.parametrize("style", list(COUNTING_STYLES), ids=list(COUNTING_STYLES))
def test_every_check_counts(style: str) -> None:
    spec = COUNTING_STYLES[style]
    test = spec[0] if isinstance(spec, tuple) else spec
    want = spec[1] if isinstance(spec, tuple) else COUNTING_REWARDS[style]
    half = python_verify(HALF_WRONG, test)
    assert half.reward == pytest.approx(want) and not half.passed, half
    honest = python_verify("    return a + b\n", test)
    assert honest.reward == 1.0 and honest.passed and not honest.error, honest


# ---------------------------------------------------------------- 5. spraying output


def io_verify(program: str, expected: str, compare: str):  # type: ignore[no-untyped-def]
    verifier = build_verifier({"name": "execution", "allow_code_execution": True, "timeout_s": 5, "compare": compare})
    return verifier.verify({"completion": program, "tests": [{"input": "", "output": expected}]})


# (program, the answers it sprays): it may pass for one of them at most, like any single answer
SPRAYS = {
    "every number, one line": ("print(' '.join(map(str, range(-1000, 1001))))\n", ["42", "-7", "999"]),
    "every number, one per line": ("for i in range(-1000, 1001):\n    print(i)\n", ["42", "-7", "999"]),
    "every answer of a yes/no task": ("print('YES')\nprint('NO')\n", ["YES", "NO"]),
    "every answer of a yes/no task, one line": ("print('YES NO')\n", ["YES", "NO"]),
    "the answer embedded in a longer number": ("print(1421)\n", ["42", "14", "21"]),
}


@pytest.mark.parametrize("compare", ["contains", "regex", "exact", "numeric"])
@pytest.mark.parametrize("spray", list(SPRAYS), ids=list(SPRAYS))
def test_spraying_output_does_not_pass(spray: str, compare: str) -> None:
    program, answers = SPRAYS[spray]
    passed = [answer for answer in answers if io_verify(program, answer, compare).reward > 0]
    assert len(passed) <= 1, passed


def test_what_contains_and_regex_still_accept() -> None:
    assert io_verify("print('Enter n: 42')\n", "42", "contains").reward == 1.0
    assert io_verify("print('thinking...')\nprint('the answer is 42')\n", "42", "contains").reward == 1.0
    assert io_verify("print('-42')\n", "42", "contains").reward == 0.0
    assert io_verify("print('42 is it')\n", "42", "contains").reward == 0.0
    assert io_verify("print('the answer is 42')\n", r"the answer is \d+", "regex").reward == 1.0
    assert io_verify("print('the answer is 42 or 43')\n", r"the answer is \d+", "regex").reward == 0.0
    broken = io_verify("print(1)\n", "(unclosed", "regex")
    assert broken.reward == 0.0 and "regex" in (broken.error or "")


# ---------------------------------------------------------------- 6. samples the design cannot run

BAD_SAMPLES = {
    "test code that does not parse": {
        "prompt": ADD_PROMPT,
        "completion": "    return a + b\n",
        "test": "def check(candidate):\n    assert (\n",
        "entry_point": "add",
    },
    "an entry point that is not a name": {
        "prompt": ADD_PROMPT,
        "completion": "    return a + b\n",
        "test": ADD_TEST,
        "entry_point": "add b",
    },
    "tests that check nothing": {
        "completion": "def add(a, b):\n    return a + b\n",
        "test": "def check(candidate):\n    pass\n",
        "entry_point": "add",
    },
    "setup of the tests that fails": {
        "completion": "def add(a, b):\n    return a + b\n",
        "test": "import no_such_module_here\n" + ADD_TEST,
        "entry_point": "add",
    },
    "no tests at all": {"completion": "def add(a, b):\n    return a + b\n"},
    "test_list of non-strings": {"completion": "def add(a, b):\n    return a + b\n", "test_list": [None, 3]},
}


@pytest.mark.parametrize("case", list(BAD_SAMPLES), ids=list(BAD_SAMPLES))
def test_a_sample_that_cannot_run_scores_zero_with_the_reason(case: str) -> None:
    verifier = build_verifier({"name": "python_tests", "allow_code_execution": True, "timeout_s": 3.0})
    result = verifier.verify(BAD_SAMPLES[case])
    assert result.reward == 0.0 and not result.passed and result.error, result


def test_mbpp_prompts_in_words_and_several_entry_points() -> None:
    verifier = build_verifier({"name": "python_tests", "allow_code_execution": True, "timeout_s": 3.0})
    words = {
        "prompt": "Write a function to add two numbers.",
        "completion": "def add(a, b):\n    return a + b\n",
        "test_list": ["assert add(1, 2) == 3"],
    }
    assert verifier.verify(words).reward == 1.0
    two = {
        "completion": "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n",
        "test": "assert add(1, 2) == 3\nassert sub(3, 2) == 1\nassert helper(1) == 1\n",
        "entry_point": ["add", "sub"],
    }
    with_helper = verifier.verify({**two, "completion": two["completion"] + "\ndef helper(x):\n    return x\n"})
    assert with_helper.reward == pytest.approx(2 / 3), with_helper  # `helper` is not declared: never the solution's


# ---------------------------------------------------------------- 7. the candidate's whole address space

MEMORY_PROBE = r"""
def add(a, b):
    # every readable page of this process, read through /proc/self/mem (a sandboxed process is not
    # dumpable, which closes that file to it, so it makes itself dumpable first; process_vm_readv,
    # which read it before, is denied by the sandbox's seccomp filter), searched for the marker as
    # text and inside every base64 run
    import base64, binascii, ctypes, os, re
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
    mem = os.open("/proc/self/mem", os.O_RDONLY)

    mark = re.compile(rb"HALO-MARK" + rb"ER-[0-9a-f]{32}")
    step, overlap = 4 << 20, 64 << 10
    pages = 0
    for line in open("/proc/self/maps").read().splitlines():
        span, perms = line.split()[:2]
        lo, hi = (int(x, 16) for x in span.split("-"))
        if "r" not in perms or hi - lo > (512 << 20) or lo >= 1 << 47:
            continue
        at = lo
        while at < hi:
            size = min(step, hi - at)
            try:
                chunk = os.pread(mem, size, at)
            except OSError:
                chunk = b""
            if chunk:
                pages += 1
                if mark.search(chunk):
                    return 1
                for blob in re.findall(rb"[A-Za-z0-9+/]{40,}={0,2}", chunk):
                    for cut in range(4):
                        try:
                            if mark.search(base64.b64decode(blob[cut:] + b"=" * (-len(blob[cut:]) % 4))):
                                return 1
                        except (binascii.Error, ValueError):
                            pass
            at += step - overlap if size == step else size
    return 0 if pages > 10 else -1  # -1: the probe could not read memory (the test would prove nothing)
"""


@pytest.mark.parametrize("verifier_name", ["python_tests", "pytest"])
def test_no_byte_of_the_tests_is_in_the_candidates_memory(verifier_name: str) -> None:
    """A marker that exists only in the test code is searched for in every readable page of the
    candidate, as text and inside every base64 run: never found (before issue 27 it always was)."""
    import secrets

    marker = "HALO-MARKER-" + secrets.token_hex(16)
    verifier = build_verifier({"name": verifier_name, "allow_code_execution": True, "timeout_s": 20.0, "cpu_s": 20})
    if verifier_name == "pytest":
        test = (
            f"from solution import add\n\n\ndef test_marker():\n    assert add(0, 0) == 1, {marker!r}\n\n\n"
            "def test_the_probe_could_read():\n    assert add(0, 0) != -1\n"
        )
        result = verifier.verify({"completion": MEMORY_PROBE, "test": test})
    else:
        test = f"def check(candidate):\n    assert candidate(0, 0) == 1, {marker!r}\n    assert candidate(0, 0) != -1\n"
        result = verifier.verify({"prompt": "", "completion": MEMORY_PROBE, "test": test, "entry_point": "add"})
    # the marker was not found (0), and the probe did read the memory (not -1)
    assert result.reward == 0.5 and result.details.get("total") == 2, result
