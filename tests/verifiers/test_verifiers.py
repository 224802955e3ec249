"""Every built-in verifier on real inputs (code ones through the real sandbox), composition,
discovery, and the code-execution gate at validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sandbox_env import needs

from conftest import cli, write
from halo_pipeline.verifiers import build_verifier, check_spec, code_execution, registry

CONF = Path(__file__).resolve().parents[2] / "conf" / "verifier"


def run(name: str, sample: dict, **settings):  # type: ignore[no-untyped-def]
    return build_verifier({"name": name, **settings}).verify(sample)


def code(name: str, sample: dict, **settings):  # type: ignore[no-untyped-def]
    return run(name, sample, allow_code_execution=True, **settings)


def test_every_builtin_has_a_config_and_every_config_builds() -> None:
    builtins = {n for n, r in registry().items() if r.fn.__module__.startswith("halo_pipeline.")}
    configs = {p.stem for p in CONF.glob("*.yaml")}
    assert builtins == configs
    for path in CONF.glob("*.yaml"):
        node = yaml.safe_load(path.read_text())
        assert node["name"] == path.stem
        if path.stem == "reward_model":
            assert "needs `model:`" in check_spec(node)[0][1]  # a trained model path must be given
            continue
        if "allow_code_execution" in node:
            assert node["allow_code_execution"] is False, f"{path.name}: code execution must be off unless a recipe turns it on"
        build_verifier(node)


def test_code_verifiers_refuse_unless_allowed() -> None:
    sample = {"prompt": "def f():\n", "completion": "    return 1\n", "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}
    refused = run("python_tests", sample)
    assert refused.reward == 0 and "allow_code_execution" in (refused.error or "")
    assert code("python_tests", sample).reward == 1.0
    problems = check_spec({"name": "python_tests"})
    assert problems and "allow_code_execution: true" in problems[0][1]  # (key, text): reported at the verifier
    assert check_spec({"name": "python_tests", "allow_code_execution": True}) == []
    assert check_spec({"name": "weighted", "verifiers": ["python_syntax", "python_tests"]})  # a part runs code
    assert code_execution({"name": "all_of", "verifiers": ["python_tests"], "allow_code_execution": True})
    assert not code_execution("python_syntax")


@needs("gcc", "g++", "clang")
def test_c_cpp_and_rust_compile_then_test() -> None:
    c = "int add(int a, int b) { return a + b; }\nint main(void) { return 7; }\n"
    r = code("gcc", {"completion": c, "test": "CHECK(add(1, 2) == 3); CHECK(add(2, 2) == 5);"})
    assert r.reward == pytest.approx(0.2 + 0.8 * 0.5) and not r.passed  # compile credit + half the checks
    assert code("clang", {"completion": "```c\n" + c + "```", "test": "CHECK(add(1, 2) == 3);"}).reward == 1.0
    broken = code("gcc", {"completion": "int add(int a, int b) { return a + b }", "test": "CHECK(add(1, 2) == 3);"})
    assert (
        broken.reward == 0 and broken.error == "compilation failed" and any("error" in line for line in broken.details["compiler_errors"])
    )
    cpp = "#include <vector>\nint add(int a, int b) { std::vector<int> v{a, b}; return v[0] + v[1]; }\n"
    assert code("gcc", {"completion": cpp, "test": "CHECK(add(1, 2) == 3);"}, language="cpp").reward == 1.0
    io = '#include <stdio.h>\nint main(void) { int a, b; scanf("%d %d", &a, &b); printf("%d\\n", a + b); }\n'
    r = code("gcc", {"completion": io, "tests": [{"input": "1 2", "output": "3"}, {"input": "5 5", "output": "11"}]})
    assert r.reward == pytest.approx(0.6) and r.details["failures"][0]["got"] == "10\n"
    exit_early = "#include <stdlib.h>\nint add(int a, int b) { exit(0); }\n"
    assert code("gcc", {"completion": exit_early, "test": "CHECK(add(1, 2) == 3);"}).reward == pytest.approx(0.2)


def test_rust_checks_survive_panics() -> None:
    from halo_pipeline.verifiers.code_native import _need_toolchain

    if problems := _need_toolchain("rust", None):
        pytest.skip("; ".join(problems))
    rs = "fn add(a: i32, b: i32) -> i32 { a + b }\nfn main() {}\n"
    test = "check!(add(1, 2) == 3); check!(add(2, 2) == 4); check!({ let v: Vec<i32> = vec![]; v[3] == 1 });"
    r = code("rust", {"completion": rs, "test": test})
    assert r.details["passed"] == 2 and r.details["total"] == 3 and r.reward == pytest.approx(0.2 + 0.8 * 2 / 3)


def test_execution_compares_stdout() -> None:
    prog = "```python\nprint(sum(map(int, input().split())))\n```"
    r = code("execution", {"completion": prog, "tests": [{"input": "1 2", "output": "3"}, {"input": "2 2", "output": "5"}]})
    assert r.reward == 0.5
    assert code("execution", {"completion": "print(3.14159)", "expected_output": "3.1416"}, compare="numeric", tolerance=1e-4).passed
    assert code("execution", {"completion": "print('the answer is 42')", "expected_output": r".*answer is \d+"}, compare="regex").passed
    assert not code(
        "execution", {"completion": "print('the answer is 42!')", "expected_output": r".*answer is \d+"}, compare="regex"
    ).passed
    assert code("execution", {"completion": "print('ok', end='')", "expected_output": "ok"}, compare="contains").passed


def test_pytest_verifier_counts_tests() -> None:
    test = "from solution import add\n\ndef test_a():\n    assert add(1, 2) == 3\n\ndef test_b():\n    assert add(2, 2) == 5\n"
    r = code("pytest", {"completion": "def add(a, b):\n    return a + b\n", "test": test})
    assert r.reward == 0.5 and r.details["total"] == 2
    quitter = code("pytest", {"completion": "import os\nos._exit(0)\n", "test": test})
    assert quitter.reward == 0.0 and quitter.error


def test_mbpp_style_tests() -> None:
    sample = {"completion": "def sq(x):\n    return x * x\n", "test_list": ["assert sq(2) == 4", "assert sq(3) == 9", "assert sq(4) == 15"]}
    r = code("python_tests", sample)
    assert r.details["passed"] == 2 and r.details["total"] == 3


def test_json_verifiers() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}, "required": ["n", "s"]}
    assert run("json_schema", {"completion": '```json\n{"n": 1, "s": "x"}\n```'}, json_schema=schema).reward == 1.0
    partial = run("json_schema", {"completion": '{"n": "one", "s": "x"}'}, json_schema=schema)
    assert 0 < partial.reward < 1 and not partial.passed and partial.details["errors"]
    assert run("json_schema", {"completion": "not json"}, json_schema=schema).reward == 0
    assert run("json_schema", {"completion": "[1]", "schema": {"type": "array"}}).reward == 1.0  # per-sample schema
    assert check_spec({"name": "json_schema", "json_schema": {"type": "nope"}})
    r = run("json_structure", {"completion": 'Here: {"a": {"b": 1}}'}, required_keys=["a.b", "c"])
    assert r.reward == 0.75 and r.details["missing"] == ["c"]
    assert run("json_structure", {"completion": "[1, 2]"}).reward == 0.25


@pytest.mark.parametrize(
    ("completion", "answer", "ok"),
    [
        ("so the answer is \\boxed{42}", "42", True),
        ("#### 1,234", "1234", True),
        ("The final answer is 3/4.", "0.75", True),
        ("\\frac{1}{2}", "0.5", True),
        ("that is 50%", "0.5", True),
        ("x = 41, then 43", "42", False),
        ("-7.5 degrees", "-7.50", True),
    ],
)
def test_numeric(completion: str, answer: str, ok: bool) -> None:
    assert run("numeric", {"completion": completion, "answer": answer}).passed is ok


def test_reference_metrics() -> None:
    ref = "the cat sat on the mat"
    for name in ("bleu", "chrf", "rouge"):
        same = run(name, {"completion": ref, "reference": ref})
        other = run(name, {"completion": "quantum chromodynamics lattice", "reference": ref})
        near = run(name, {"completion": "the cat sat on a mat", "reference": [ref, "a dog"]})
        assert same.reward == pytest.approx(1.0) and other.reward < 0.2 < near.reward < 1.0, name
        assert run(name, {"completion": "x"}).error


def test_composition() -> None:
    sample = {"prompt": "def f():\n", "completion": "    return 1\n", "test": "def check(c):\n    assert c() == 2\n", "entry_point": "f"}
    both = code("all_of", sample, verifiers=["python_syntax", "python_tests"])
    assert not both.passed and both.reward == 0 and [p["verifier"] for p in both.details["parts"]] == ["python_syntax", "python_tests"]
    mix = code("weighted", sample, verifiers=["python_syntax", "python_tests"], weights=[0.25, 0.75])
    assert mix.reward == pytest.approx(0.25)
    with pytest.raises(Exception, match="weights"):
        build_verifier({"name": "weighted", "verifiers": ["python_syntax"], "weights": [1, 2]})


def test_project_verifier_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(
        tmp_path / "my_checks.py",
        """
        from halo_pipeline.verifiers import VerifierSettings, VerifyResult, register_verifier

        class Polite(VerifierSettings):
            word: str = "please"

        @register_verifier("polite", Polite)
        def polite(settings, sample):
            '''1 when the completion says the magic word.'''
            ok = settings.word in sample["completion"]
            return VerifyResult(float(ok), ok)
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    v = build_verifier({"uses": "my_checks:polite", "word": "thanks"})
    assert v.verify({"completion": "thanks!"}).reward == 1.0
    assert v.verify({"completion": "please"}).reward == 0.0


def test_samples_are_not_mutated() -> None:
    from halo_pipeline.verifiers import VerifyResult, register_verifier

    @register_verifier("mutator_for_test")
    def mutator(settings, sample):  # type: ignore[no-untyped-def]
        sample["tests"].append("boom")
        return VerifyResult(1.0, True)

    sample = {"completion": "x", "tests": ["a"]}
    result = build_verifier("mutator_for_test").verify(sample)
    assert result.reward == 1.0 and sample["tests"] == ["a"]  # the verifier changed its own copy only


def test_llm_judge_scores_and_reports_unparseable_replies() -> None:
    from halo_pipeline.verifiers.judge import parse_score

    assert parse_score("Score: 7", 10) == 0.7
    assert parse_score("**Rating:** 4 / 5", 10) == 0.8
    assert parse_score("9", 10) == 0.9
    assert parse_score("I like it", 10) is None
    assert parse_score("Score: 12", 10) is None
    # a real local judge (the tiny model writes no score): an error with the reply, not a silent zero
    r = run("llm_judge", {"prompt": "2+2?", "completion": "4"}, model="tiny", max_tokens=8)
    assert r.error == "the judge's reply has no score" and "reply" in r.details


def test_reward_model_verifier(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from halo_pipeline.runtimes.catalog import resolve

    tiny = resolve("tiny")
    rm = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1)
    rm.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(tiny).save_pretrained(tmp_path / "rm")
    a = run("reward_model", {"prompt": "hi", "completion": "hello there"}, model=str(tmp_path / "rm"))
    b = run("reward_model", {"prompt": "hi", "completion": "hello there"}, model=str(tmp_path / "rm"))
    c = run("reward_model", {"prompt": "hi", "completion": "zzz zzz zzz"}, model=str(tmp_path / "rm"))
    assert 0 < a.reward < 1 and a.reward == b.reward and a.reward != c.reward
    assert check_spec({"name": "reward_model", "model": str(tmp_path)})  # not a model directory


CODE_RECIPE = """
defaults:
  - verifier: python_tests
  - _self_
name: code
steps:
  synthesize:
    with: {source: humaneval, limit: 2, model: tiny, verifier: '${verifier}'}
"""


def test_validation_gates_code_execution_and_the_manifest_records_it(project: Path) -> None:
    recipe = write(project / "recipes/code.yaml", CODE_RECIPE)
    refused = cli("validate", str(recipe), cwd=project)
    assert refused.returncode == 2
    assert "runs model-written code" in refused.stderr and "allow_code_execution: true" in refused.stderr
    allowed = cli("validate", str(recipe), "verifier.allow_code_execution=true", cwd=project)
    assert allowed.returncode == 0, allowed.stderr

    from halo_pipeline.engine.config import compose
    from halo_pipeline.engine.plan import build_plan
    from halo_pipeline.orchestration.flow import code_execution as recorded  # what the manifest records

    plan = build_plan(compose(recipe, ["verifier.allow_code_execution=true"]))
    facts = recorded(plan)
    assert facts["enabled"] and facts["steps"] == ["synthesize"] and facts["isolation"] in ("bubblewrap", "rlimits")
    assert recorded(build_plan(compose(recipe, ["verifier=python_syntax"]))) == {"enabled": False}


def test_cli_runs_code_verifiers_only_when_allowed(project: Path) -> None:
    sample = {"prompt": "def f():\n", "completion": "    return 1\n", "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}
    samples = write(project / "s.jsonl", json.dumps(sample) + "\n")
    refused = cli("verifiers", "run", "python_tests", "--input", str(samples), cwd=project)
    assert refused.returncode == 2 and "--allow-code-execution" in refused.stderr
    ok = cli("verifiers", "run", "python_tests", "--input", str(samples), "--allow-code-execution", cwd=project)
    assert ok.returncode == 0 and "mean reward 1.000" in ok.stdout and "isolation:" in ok.stdout
