"""Validation reports every problem at once, with file:line, key path and a hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import FAKE_RECIPE, cli, write
from halo_pipeline.engine.config import compose
from halo_pipeline.engine.errors import RecipeError
from halo_pipeline.engine.plan import build_plan


def problems(recipe: Path, *overrides: str) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        build_plan(compose(recipe, list(overrides)))
    return info.value


def test_valid_recipe_builds_a_plan(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    plan = build_plan(compose(recipe, ["algorithm=dpo"]))
    assert list(plan.steps) == ["make", "copy", "report"]
    assert plan.steps["copy"].params.suffix == "-dpo"  # type: ignore[attr-defined]
    assert plan.steps["copy"].output_types == {"dataset": "sft_dataset"}
    assert plan.composed.choices == {"backend": "cpu", "algorithm": "dpo"}


def test_all_problems_reported_at_once_with_lines_and_hints(project: Path) -> None:
    recipe = write(
        project / "recipes/bad.yaml",
        """
        defaults:
          - backend: cpu
          - _self_
        name: bad
        steps:
          make:
            uses: fake_steps:make
            with: {n: -1, txt: hi}
          copy:
            uses: fake_steps:copy
            inputs: {dataset: mak.dataset}
          other:
            uses: fake_steps:copy
            inputs: {dataset: make.datset}
          typo:
            uses: dedupp
          report:
            uses: fake_steps:sft_only
            inputs: {dataset: pairs.pairs}
          pairs:
            uses: fake_steps:prefs
        """,
    )
    err = problems(recipe)
    text = err.format()
    assert len(err.issues) == 6, text
    by_key = {i.key: i for i in err.issues}
    assert by_key["steps.make.with.n"].line == 8
    assert "greater than or equal to 1" in by_key["steps.make.with.n"].message
    assert by_key["steps.make.with.txt"].message == "unknown param 'txt'"
    assert by_key["steps.make.with.txt"].hint == "did you mean 'text'?"
    assert by_key["steps.copy.inputs.dataset"].message == "reference to missing step 'mak'"
    assert by_key["steps.copy.inputs.dataset"].hint == "did you mean 'make'?"
    assert by_key["steps.copy.inputs.dataset"].line == 11
    assert "has no output 'datset'" in by_key["steps.other.inputs.dataset"].message
    assert by_key["steps.other.inputs.dataset"].hint == "did you mean 'dataset'?"
    assert "unknown step kind 'dedupp'" in by_key["steps.typo.uses"].message
    assert by_key["steps.typo.uses"].hint == "did you mean 'dedup'?"
    mismatch = by_key["steps.report.inputs.dataset"]
    assert "'pairs.pairs' is a preference_dataset" in mismatch.message and "takes sft_dataset" in mismatch.message
    assert f"{recipe}:8:" in text and "hint:" in text


def test_unknown_group_option_lists_the_available_ones(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE.replace("algorithm: sft", "algorithm: sftt"))
    err = problems(recipe)
    (issue,) = err.issues
    assert issue.line == 4 and issue.file == str(recipe)
    assert "unknown option 'sftt' for group 'algorithm'" in issue.message
    shipped = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "algorithm").glob("*.yaml"))
    assert f"(available: {', '.join(shipped)})" in issue.message
    assert issue.hint and issue.hint.startswith("did you mean 'sft'?")


def test_unknown_group_option_on_the_command_line(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    (issue,) = problems(recipe, "backend=cudaa").issues
    assert issue.file is None and "unknown option 'cudaa' for group 'backend'" in issue.message
    assert issue.hint and "did you mean 'cuda'?" in issue.hint


def test_override_values_are_blamed_on_the_command_line(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    (issue,) = problems(recipe, "steps.make.with.n=zero").issues
    assert issue.file is None and issue.key == "steps.make.with.n"
    assert "from override `steps.make.with.n=zero`" in issue.message


def test_overriding_a_key_the_recipe_lacks_suggests_plus(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    (issue,) = problems(recipe, "steps.copy.with.sufix=x").issues
    assert "cannot override 'steps.copy.with.sufix'" in issue.message
    assert issue.hint and "did you mean 'suffix'?" in issue.hint and "+steps.copy.with.sufix=VALUE" in issue.hint


def test_adding_a_key_the_recipe_already_sets_says_drop_the_plus(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    (issue,) = problems(recipe, "+steps.make.with.n=3").issues
    assert "already sets it" in issue.message and issue.hint == "drop the '+': steps.make.with.n=VALUE"


def test_cycle_is_reported(project: Path) -> None:
    recipe = write(
        project / "recipes/cycle.yaml",
        """
        name: cycle
        steps:
          a: {uses: "fake_steps:copy", inputs: {dataset: b.dataset}}
          b: {uses: "fake_steps:copy", inputs: {dataset: a.dataset}}
        """,
    )
    (issue,) = problems(recipe).issues
    assert "cycle: a -> b -> a" in issue.message


def test_duplicate_step_id_and_unreadable_yaml(project: Path) -> None:
    dup = write(
        project / "recipes/dup.yaml",
        """
        name: dup
        steps:
          a: {uses: "fake_steps:make"}
          a: {uses: "fake_steps:make"}
        """,
    )
    (issue,) = problems(dup).issues
    assert issue.line == 4 and "duplicate step id 'a' (first written on line 3)" in issue.message
    broken = write(project / "recipes/broken.yaml", "name: x\nsteps:\n  a: {uses: [unclosed\n")
    (issue,) = problems(broken).issues
    assert issue.message.startswith("unreadable YAML") and issue.line is not None


def test_missing_input_and_needs(project: Path) -> None:
    recipe = write(
        project / "recipes/missing.yaml",
        """
        name: missing
        steps:
          copy: {uses: "fake_steps:copy", needs: [nope]}
        """,
    )
    err = problems(recipe)
    messages = sorted(i.message for i in err.issues)
    assert messages == ["missing input 'dataset' (sft_dataset or preference_dataset)", "needs unknown step 'nope'"]


def test_file_inputs_are_relative_to_the_recipe(project: Path) -> None:
    write(project / "recipes/data/rows.jsonl", '{"id": "1", "prompt": "p", "completion": "c"}\n')
    recipe = write(
        project / "recipes/files.yaml",
        """
        name: files
        steps:
          copy: {uses: "fake_steps:copy", inputs: {dataset: "file:data/rows.jsonl"}}
          other: {uses: "fake_steps:copy", inputs: {dataset: "file:data/missing.jsonl"}}
        """,
    )
    (issue,) = problems(recipe).issues
    assert issue.key == "steps.other.inputs.dataset" and "file not found" in issue.message


def test_cli_validate_exits_2_and_leaves_no_run_dir(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    ok = cli("validate", str(recipe), cwd=project)
    assert ok.returncode == 0, ok.stderr
    assert "3 steps" in ok.stdout
    bad = cli("run", str(recipe), "steps.make.with.n=0", cwd=project)
    assert bad.returncode == 2
    assert "steps.make.with.n" in bad.stderr and "greater than or equal to 1" in bad.stderr
    assert not (project / "outputs" / "fake").exists()


def test_validate_imports_no_heavy_library(project: Path) -> None:
    code = (
        "import sys; from halo_pipeline.cli import main; "
        f"rc = main(['validate', *{[str(p) for p in sorted(Path(__file__).parents[2].glob('recipes/*.yaml'))]!r}]); "
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'prefect', 'llama_cpp', 'mlx', 'lm_eval') if m in sys.modules]; "
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def test_verifiers_list_and_run(project: Path) -> None:
    listing = cli("verifiers", cwd=project)
    assert listing.returncode == 0 and "python_syntax" in listing.stdout and "pattern" in listing.stdout
    samples = write(project / "s.jsonl", '{"completion": "def f():\\n    return 1"}\n{"completion": "def f(:"}\n')
    out = project / "r.jsonl"
    res = cli("verifiers", "run", "python_syntax", "--input", str(samples), "--output", str(out), "--set", "with_prompt=false", cwd=project)
    assert res.returncode == 0, res.stderr
    assert "2 samples, mean reward 0.500, passed 1/2" in res.stdout
    import json

    assert [json.loads(line)["reward"] for line in out.read_text().splitlines()] == [1.0, 0.0]
    bad = cli("verifiers", "run", "pyton_syntax", "--input", str(samples), cwd=project)
    assert bad.returncode == 2 and "did you mean 'python_syntax'" in bad.stderr


def test_yaml_alias_bomb_is_refused_before_it_expands(project: Path) -> None:
    """A 300-byte recipe whose nested aliases expand to millions of values is refused, not expanded."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 7)]
    recipe = write(project / "recipes/bomb.yaml", "\n".join([*lines, "name: bomb", "steps: {}"]) + "\n")
    import resource
    import subprocess
    import sys

    code = f"from halo_pipeline.cli import main; import sys; sys.exit(main(['validate', {str(recipe)!r}]))"
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "expands to more than 100,000 values through its aliases" in out.stderr, out.stderr
    assert "bomb.yaml:1" in out.stderr and "hint:" in out.stderr
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far, this one included
    assert after <= max(before, 300 * 1024), f"validate used {after / 1024:.0f} MB: the aliases were expanded"


def test_a_uses_path_to_nothing_is_a_reported_problem(project: Path) -> None:
    recipe = write(
        project / "recipes/paths.yaml",
        """
        name: paths
        steps:
          missing:
            uses: fake_steps:no_such_step
          not_a_step:
            uses: fake_steps:MakeParams
          make:
            uses: fake_steps:make
            with: {n: 0}
        """,
    )
    by_key = {i.key: i for i in problems(recipe).issues}
    assert "'fake_steps' has no 'no_such_step'" in by_key["steps.missing.uses"].message
    assert "its step kinds: " in by_key["steps.missing.uses"].message and "make" in by_key["steps.missing.uses"].message
    assert "is not a step kind" in by_key["steps.not_a_step.uses"].message
    assert "steps.make.with.n" in by_key  # reported with the others
    res = cli("validate", str(recipe), cwd=project)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "no_such_step" in res.stderr


def test_a_composition_error_is_reported_with_the_other_problems(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE.replace("algorithm: sft", "algorithm: sftt").replace("{n: 4}", "{n: -4}"))
    from halo_pipeline.engine.plan import plan_recipe

    for overrides in ([], ["backend=cudaa"], ["steps.make.with.nn=3"], ["bad override=="]):
        with pytest.raises(RecipeError) as err:
            plan_recipe(recipe, overrides)
        messages = [i.message for i in err.value.issues]
        assert any("unknown option 'sftt' for group 'algorithm'" in m for m in messages), messages
        assert any("greater than or equal to 1" in m for m in messages), messages  # found by composing around it
        if overrides:
            assert len(messages) == 3, messages  # the override's own problem too


def test_group_nodes_are_typed_and_reported_at_the_exact_key(project: Path) -> None:
    """backend, model and verifier nodes are validated with the recipe: a bad key inside one is reported there."""
    import shutil

    from conftest import REPO

    shutil.copytree(REPO / "recipes", project / "recipes", dirs_exist_ok=True)
    from halo_pipeline.engine.plan import plan_recipe

    overrides = ["+steps.train.with.backend.devize=cuda", "+steps.probe.with.verifier.timeout_s=-1", "model=tiny"]
    with pytest.raises(RecipeError) as err:
        plan_recipe(project / "recipes/quickstart.yaml", overrides)
    by_key = {i.key: i for i in err.value.issues}
    assert "unknown param 'devize'" in by_key["steps.train.with.backend.devize"].message
    assert by_key["steps.train.with.backend.devize"].hint == "did you mean 'device'?"
    assert "greater than 0" in by_key["steps.probe.with.verifier.timeout_s"].message


def test_the_quant_table_lives_in_the_quant_group() -> None:
    """conf/quant/<name>.yaml says what each quant becomes per format and its drift bounds; convert and verify read it."""
    from halo_pipeline.engine.groups import quant
    from halo_pipeline.export.drift import thresholds_for
    from halo_pipeline.export.formats import pair_problem, spec, table_rows

    assert spec("gguf", "q4").gguf_type == "Q4_K_M" and spec("mlx", "q8").q_bits == 8
    assert "does not support quant 'q4'" in (pair_problem("hf", "q4") or "")
    assert ("gguf", "q8", "GGUF Q8_0 (~8.5 bits/weight)") in table_rows()
    assert thresholds_for("q4", fmt="mlx")["kl_mean"] == ("<=", quant("q4").formats["mlx"].thresholds["kl_mean"])
    assert thresholds_for("q8")["ppl_ratio"] == ("within", quant("q8").thresholds["ppl_ratio"])


def test_a_recipe_without_a_name_is_a_reported_problem(project: Path) -> None:
    nameless = "\n".join(line for line in FAKE_RECIPE.splitlines() if not line.startswith("name:"))
    recipe = write(project / "recipes/nameless.yaml", nameless)
    res = cli("validate", str(recipe), cwd=project)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "the recipe has no name" in res.stderr and "name: my-recipe" in res.stderr and str(recipe) in res.stderr
