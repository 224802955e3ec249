"""Every dataset reference is parsed once, typed, and an unknown split is a validate-time error at its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import cli, write
from halo_pipeline.data import refs, sources
from halo_pipeline.engine.config import compose
from halo_pipeline.engine.errors import RecipeError
from halo_pipeline.engine.plan import build_plan


@pytest.mark.parametrize(
    ("spec", "kind", "fields"),
    [
        ("humaneval", "builtin", {"builtin": "humaneval", "split": None}),
        ("humaneval:test", "builtin", {"builtin": "humaneval", "split": "test"}),
        ("hf:org/qa", "hf", {"hf_id": "org/qa", "config": None, "split": None}),
        ("hf:org/qa:test", "hf", {"hf_id": "org/qa", "config": None, "split": "test"}),
        ("hf:openai/gsm8k:main", "hf", {"hf_id": "openai/gsm8k", "config": "main", "split": None}),  # `main` shares letters with `train`
        ("hf:org/qa:default:train[2:5]", "hf", {"config": "default", "split": "train[2:5]"}),
        ("hf:org/qa:train[:10]", "hf", {"config": None, "split": "train[:10]"}),
        ("hf:org/qa::tset", "hf", {"config": None, "split": "tset"}),  # explicitly a split: the cache decides
        ("hf:org/qa:tset:", "hf", {"config": "tset", "split": None}),  # explicitly a config
        ("file:data/qa.jsonl", "file", {"path": Path("/r/data/qa.jsonl")}),
        ("data/qa.jsonl", "file", {"path": Path("/r/data/qa.jsonl")}),
    ],
)
def test_every_form_parses_to_one_typed_reference(spec: str, kind: str, fields: dict[str, object]) -> None:
    ref = refs.parse(spec, Path("/r"))
    assert ref.kind == kind and ref.spec == spec
    assert {k: getattr(ref, k) for k in fields} == fields


@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        ("humaneval:tset", "did you mean 'humaneval:test'?"),
        ("humaneval:trian", "did you mean 'humaneval:train'?"),
        ("humaneval:validation", "write humaneval, humaneval:train, humaneval:test"),
        ("hf:org/qa:tset", "did you mean 'hf:org/qa:test'?"),
        ("humanevl:test", "did you mean 'humaneval:test'?"),
        ("hf:", "write hf:<id>[:<config>][:<split>]"),
    ],
)
def test_an_unknown_split_or_form_is_an_error_with_its_fix(spec: str, hint: str) -> None:
    with pytest.raises(refs.RefError) as info:
        refs.parse(spec)
    assert info.value.hint is not None and info.value.hint.startswith(hint)


def test_held_out_splits_and_allowed_forms() -> None:
    assert refs.parse("humaneval:test").held_out and refs.parse("hf:org/qa:validation[:5]").held_out
    assert not refs.parse("humaneval:train").held_out and not refs.parse("humaneval").held_out
    with pytest.raises(refs.RefError, match="is a file, which this field does not take"):
        refs.parse("file:x.jsonl", allow=("builtin", "hf"))
    with pytest.raises(refs.RefError, match="unknown dataset 'mbpp'"):
        refs.parse("mbpp", paths=False)
    with pytest.raises(sources.SourceError, match="did you mean"):  # sources parse through the same parser
        sources.parse("hf:org/qa:tset")
    assert sources.parse("hf:org/qa:test") == refs.parse("hf:org/qa:test")


def test_a_misspelt_split_is_a_validate_time_error_at_its_key(project: Path) -> None:
    """`source: humaneval:tset` once validated and yielded all 164 problems, held-out ones included."""
    recipe = write(
        project / "recipes/typo.yaml",
        """
        defaults:
          - backend: cpu
          - model: tiny
          - verifier: python_syntax
          - _self_
        name: typo
        steps:
          synthesize:
            with: {source: humaneval:tset, model: "${model}", verifier: "${verifier}", output: prompts}
          probe:
            uses: probe
            inputs: {candidate: file:model}
            with:
              source: humaneval:tset
              model: ${model}
              verifier: ${verifier}
        """,
    )
    (project / "recipes/model").mkdir()
    with pytest.raises(RecipeError) as info:
        build_plan(compose(recipe, []))
    by_key = {i.key: i for i in info.value.issues}
    for key, line in (("steps.synthesize.with.source", 9), ("steps.probe.with.source", 14)):
        issue = by_key[key]
        assert issue.file is not None and issue.file.endswith("typo.yaml") and issue.line == line, issue.format()
        assert "humaneval has no split 'tset'" in issue.message and issue.hint == "did you mean 'humaneval:test'?", issue.format()
    done = cli("validate", str(recipe), cwd=project)  # the command line: exit 2, nothing runs
    assert done.returncode == 2 and "typo.yaml:9:12: steps.synthesize.with.source" in done.stderr
    assert "hint: did you mean 'humaneval:test'?" in done.stderr and not (project / "outputs").exists()


def test_train_and_probe_params_take_the_same_references() -> None:
    from pydantic import ValidationError

    from halo_pipeline.tasks.probe import ProbeParams
    from halo_pipeline.tasks.train import TrainParams

    with pytest.raises(ValidationError) as info:
        TrainParams.model_validate({"probe_source": "humaneval:tset"})
    (error,) = info.value.errors()
    assert error["loc"] == ("probe_source",) and error["ctx"]["error"].hint == "did you mean 'humaneval:test'?"
    assert TrainParams.model_validate({"probe_source": "hf:org/qa:test"}).probe_source == "hf:org/qa:test"
    probe = ProbeParams.model_validate({"source": "humaneval:test", "tasks_file": "hf:org/qa::dev", "verifier": "python_syntax"})
    assert probe.ref("source") == refs.parse("humaneval:test") and probe.ref("tasks_file").split == "dev"  # type: ignore[union-attr]
    with pytest.raises(ValidationError, match="is a file, which this field does not take"):
        ProbeParams.model_validate({"source": "file:tasks.jsonl", "verifier": "python_syntax"})
