"""One word per idea: what runs a model is a runtime named by its format (hf, gguf, mlx, endpoint) in every step
and command. The old spellings (`engine: transformers|llama_cpp|api|torch`, eval's `api_model`, serve's
`--engine`) still read for one release, and each says its new spelling at validation with file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import pytest

from conftest import cli, write
from halo_pipeline.engine import registry

RECIPE = """\
name: old-words
steps:
  synthesize:
    with: {source: records:train, limit: 2, model: tiny, engine: transformers}
  eval:
    with: {tasks: [halo_capitals], engine: api, base_url: "http://127.0.0.1:9/v1/chat/completions", api_model: m}
  serve:
    inputs: {model: file:model}
    with: {engine: torch}
"""


def test_every_step_names_what_runs_a_model_by_its_format() -> None:
    for kind in ("synthesize", "eval", "serve"):
        fields = registry.get(kind).params.model_fields
        assert "engine" not in fields, kind
        assert set(get_args(fields["runtime"].annotation)) <= {"auto", "hf", "gguf", "mlx", "endpoint"}, kind


def test_old_spellings_read_as_the_new_ones_and_validation_names_the_new_spelling(project: Path) -> None:
    (project / "recipes" / "model").mkdir(parents=True)
    write(project / "recipes" / "model" / "config.json", "{}")
    write(project / "recipes" / "old.yaml", RECIPE)
    res = cli("plan", "recipes/old.yaml", "--format", "json", cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    plan: dict[str, Any] = json.loads(res.stdout)
    assert plan["synthesize"]["params"]["runtime"] == "hf"
    assert plan["eval"]["params"]["runtime"] == "endpoint" and plan["eval"]["params"]["endpoint_model"] == "m"
    assert plan["serve"]["params"]["runtime"] == "hf"
    res = cli("validate", "recipes/old.yaml", cwd=project)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    for old, new, line in (
        ("engine: transformers", "runtime: hf", 4),
        ("engine: api", "runtime: endpoint", 6),
        ("api_model: m", "endpoint_model: m", 6),
        ("engine: torch", "runtime: hf", 9),
    ):
        assert f"`{old}` is the old spelling" in out and f"write `{new}`" in out, (old, out)
        assert f"old.yaml:{line}" in out, (old, out)


def test_an_old_and_a_new_spelling_together_are_refused(project: Path) -> None:
    write(project / "recipes" / "both.yaml", RECIPE.replace("engine: transformers", "engine: transformers, runtime: gguf"))
    res = cli("validate", "recipes/both.yaml", cwd=project)
    assert res.returncode == 2 and "`engine` is the old spelling of `runtime`: give only `runtime`" in res.stdout + res.stderr


@pytest.mark.parametrize(("flags", "warning"), [(["--engine", "torch"], "write --runtime hf"), (["--runtime", "hf"], None)])
def test_serve_takes_runtime_and_the_old_engine_flag_with_a_warning(flags: list[str], warning: str | None) -> None:
    res = cli("serve", "--model", "tiny", *flags, "--check")
    assert res.returncode == 0 and "preflight ok" in res.stdout, res.stdout + res.stderr
    assert "runtime" in res.stdout and " hf" in res.stdout
    assert (warning in res.stderr) if warning else "warning" not in res.stderr


@pytest.mark.parametrize("old", [["--engine", "gguf"], ["--backend", "gguf"]])
def test_serve_refuses_an_old_and_a_new_spelling_that_disagree(old: list[str]) -> None:
    res = cli("serve", "--model", "tiny", *old, "--runtime", "hf", "--check")
    assert res.returncode == 2 and "give --runtime alone" in res.stdout + res.stderr


@pytest.mark.parametrize(
    ("kind", "params", "error"),
    [
        ("synthesize", {"runtime": "endpoint"}, "runtime: endpoint needs base_url"),
        ("synthesize", {"runtime": "gguf", "base_url": "http://127.0.0.1:9/v1"}, "base_url is for runtime: endpoint"),
        ("eval", {"runtime": "endpoint"}, "runtime: endpoint needs base_url"),
        ("eval", {"runtime": "hf", "base_url": "http://127.0.0.1:9/v1/chat/completions"}, "base_url is for runtime: endpoint"),
    ],
)
def test_an_endpoint_is_a_base_url_and_a_base_url_is_an_endpoint(kind: str, params: dict[str, Any], error: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=error):
        registry.get(kind).params.model_validate(params)
    if "base_url" in params:  # left at auto, a base_url means the endpoint
        auto = registry.get(kind).params.model_validate({**params, "runtime": "auto"})
        assert auto.runtime == "endpoint"
