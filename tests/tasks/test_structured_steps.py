"""Structured outputs in the steps: `response_format` on synthesize, probe and serve's smoke test, on every runtime.

The tiny model never writes valid JSON by itself (asserted beside each constrained run), so every valid record
below is the constraint's doing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from conftest import cli, write
from halo_pipeline.data.records import SCHEMA
from halo_pipeline.runtimes.constraints import ResponseFormat
from helpers import read_jsonl, run_kind, write_jsonl

SMALL = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "n": {"type": "integer"}},
    "required": ["name", "n"],
    "additionalProperties": False,
}
PROMPTS = [{"id": f"p{i}", "prompt": p} for i, p in enumerate(["Say hello.", "Write a record.", "What is two plus two?"])]


def _valid(text: str, schema: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def test_synthesize_with_a_schema_writes_only_valid_records(tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    from halo_pipeline.engine.step import Artifact

    base = {"model": "tiny", "samples_per_prompt": 3, "max_new_tokens": 80, "temperature": 1.0, "keep_unverified": True}
    inputs = {"prompts": Artifact("prompts", prompts)}
    free, _ = run_kind("synthesize", base, inputs, tmp_path / "free")
    assert not any(_valid(r["completion"], SMALL) for r in read_jsonl(free["dataset"]))  # the model alone: never
    constrained = {**base, "response_format": {"type": "json_schema", "schema": SMALL}}
    out, ctx = run_kind("synthesize", constrained, inputs, tmp_path / "constrained")
    rows = read_jsonl(out["dataset"])
    assert len(rows) == 9 and all(_valid(r["completion"], SMALL) for r in rows)
    assert len({r["completion"] for r in rows}) > 1  # sampling still samples, within the grammar


def test_synthesize_regex_and_choice_on_the_gguf_teacher(tmp_path: Path) -> None:
    from halo_pipeline.engine.step import Artifact
    from halo_pipeline.export.converting import convert
    from halo_pipeline.runtimes.catalog import build_tiny
    from halo_pipeline.runtimes.formats import gguf_file

    gguf = tmp_path / "tiny-gguf"
    convert(build_tiny(), "gguf", "fp32", gguf)
    prompts = {"prompts": Artifact("prompts", write_jsonl(tmp_path / "prompts.jsonl", PROMPTS))}
    base = {"model": str(gguf_file(gguf)), "runtime": "gguf", "samples_per_prompt": 2, "max_new_tokens": 24, "keep_unverified": True}
    out, _ = run_kind(
        "synthesize", {**base, "response_format": {"type": "regex", "pattern": "[A-Z][a-z]{2,6} [0-9]{1,3}"}}, prompts, tmp_path / "r"
    )
    assert all(re.fullmatch("[A-Z][a-z]{2,6} [0-9]{1,3}", r["completion"]) for r in read_jsonl(out["dataset"]))
    out, _ = run_kind(
        "synthesize", {**base, "response_format": {"type": "choice", "choices": ["yes", "no", "maybe"]}}, prompts, tmp_path / "c"
    )
    assert {r["completion"] for r in read_jsonl(out["dataset"])} <= {"yes", "no", "maybe"}


def test_every_runtime_follows_a_json_schema(tmp_path: Path) -> None:
    from halo_pipeline.export.converting import convert
    from halo_pipeline.runtimes import Sampling, load, to_messages
    from halo_pipeline.runtimes.catalog import build_tiny
    from halo_pipeline.runtimes.mlx import MLXRuntime

    gguf = tmp_path / "gguf"
    convert(build_tiny(), "gguf", "fp32", gguf)
    order = ResponseFormat.model_validate({"type": "json_schema", "schema": SCHEMA})
    chats = [to_messages("Extract the order: Ada Berg bought 2 chairs.", None), to_messages("Hi", None)]
    for runtime in (load(build_tiny()), load(gguf), MLXRuntime(build_tiny())):
        texts, tokens = runtime.generate(chats, Sampling(2, 1.0, 0.95, 400, 0), response_format=order)
        assert tokens > 0 and all(_valid(t, SCHEMA) for group in texts for t in group), (runtime.name, texts)


def test_an_endpoint_teacher_sends_the_constraint_and_gets_valid_records() -> None:
    from halo_pipeline.runtimes import Sampling, to_messages
    from halo_pipeline.runtimes.catalog import build_tiny
    from halo_pipeline.runtimes.endpoint import Endpoint
    from halo_pipeline.serving.launch import Running

    with Running(build_tiny()) as server:
        endpoint = Endpoint(server.url, server.model_id, None)
        texts, _ = endpoint.generate(
            [to_messages("Hi", None)],
            Sampling(2, 0.8, 0.95, 80, 0),
            response_format=ResponseFormat(type="json_schema", **{"schema": SMALL}),
        )
        assert all(_valid(t, SMALL) for t in texts[0])
        texts, _ = endpoint.generate(
            [to_messages("Hi", None)], Sampling(1, 0.8, 0.95, 8, 0), response_format=ResponseFormat(type="regex", pattern="[0-9]{3}")
        )
        assert re.fullmatch("[0-9]{3}", texts[0][0])
        endpoint.close()


def test_probe_generates_under_the_same_constraint_for_both_sides(tmp_path: Path) -> None:
    tasks = write_jsonl(
        tmp_path / "tasks.jsonl",
        [{"id": f"t{i}", "prompt": f"Record {i}", "reference": json.dumps({"name": "x", "n": i})} for i in range(6)],
    )
    params = {
        "model": "tiny", "tasks_file": str(tasks), "max_new_tokens": 60, "verifier": {"name": "json_fields"},
        "response_format": {"type": "json_schema", "schema": SMALL}, "max_regression": {},
    }  # fmt: skip
    from halo_pipeline.engine.step import Artifact
    from halo_pipeline.runtimes.catalog import build_tiny

    out, _ = run_kind("probe", params, {"candidate": Artifact("model", build_tiny())}, tmp_path / "p")
    report = json.loads((Path(out["report"]) / "probe.json").read_text())
    for side in ("baseline", "candidate"):  # every record parses: the constraint held on both sides
        assert report[side]["valid_json"] == 1.0 and set(report["per_task"][side]["valid_json"]) == {f"t{i}" for i in range(6)}


def test_validation_reads_a_schema_file_beside_the_recipe_and_names_what_is_wrong(project: Path) -> None:
    write(project / "recipes" / "schemas" / "small.json", json.dumps(SMALL))
    recipe = """
    name: s
    steps:
      synthesize:
        with: {source: records:train, limit: 2, model: tiny, response_format: {type: json_schema, schema: schemas/small.json}}
    """
    write(project / "recipes" / "ok.yaml", recipe)
    res = cli("plan", "recipes/ok.yaml", "--format", "json", cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    settings = json.loads(res.stdout)["synthesize"]["params"]["response_format"]
    assert settings["schema_file"] == "schemas/small.json" and settings.get("schema", settings.get("json_schema_")) == SMALL
    write(project / "recipes" / "missing.yaml", recipe.replace("schemas/small.json", "schemas/nope.json"))
    res = cli("validate", "recipes/missing.yaml", cwd=project)
    assert res.returncode != 0 and "response_format" in res.stdout + res.stderr and "nope.json" in res.stdout + res.stderr
    write(
        project / "recipes" / "regex.yaml",
        recipe.replace("{type: json_schema, schema: schemas/small.json}", "{type: regex, pattern: '[a-'}"),
    )
    res = cli("validate", "recipes/regex.yaml", cwd=project)
    assert res.returncode != 0 and "response_format" in res.stdout + res.stderr
    write(project / "recipes" / "mixed.yaml", recipe.replace("schema: schemas/small.json", "pattern: abc"))
    res = cli("validate", "recipes/mixed.yaml", cwd=project)
    assert res.returncode != 0 and "type json_schema needs schema or json_schema" in res.stdout + res.stderr


def test_the_json_schema_verifier_reads_the_same_schema_file(project: Path) -> None:
    write(project / "recipes" / "schemas" / "small.json", json.dumps(SMALL))
    recipe = """
    name: s
    steps:
      synthesize:
        with:
          source: records:train
          limit: 2
          model: tiny
          response_format: {type: json_schema, schema: schemas/small.json}
          verifier: {name: json_schema, json_schema: schemas/small.json}
    """
    write(project / "recipes" / "ok.yaml", recipe)
    res = cli("plan", "recipes/ok.yaml", "--format", "json", cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["synthesize"]["params"]["verifier"]["json_schema"] == SMALL  # the schema, not its path
    write(project / "recipes" / "missing.yaml", recipe.replace("json_schema: schemas/small.json", "json_schema: schemas/nope.json"))
    res = cli("validate", "recipes/missing.yaml", cwd=project)
    out = res.stdout + res.stderr
    assert res.returncode == 2 and "json_schema: schema file" in out and "nope.json" in out and "relative to the recipe" in out, out


@pytest.mark.parametrize("bad", [{"type": "regex"}, {"type": "choice", "choices": ["a"], "pattern": "x"}, {"type": "xml"}])
def test_a_response_format_that_cannot_be_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ResponseFormat.model_validate(bad)


def test_eval_generates_under_a_constraint_on_every_engine(tmp_path: Path) -> None:
    from halo_pipeline.engine.step import Artifact
    from halo_pipeline.export.converting import convert
    from halo_pipeline.runtimes.catalog import build_tiny
    from halo_pipeline.serving.launch import Running

    word = "[A-Z][a-z]{2,9}"
    base = {"tasks": ["halo_capitals"], "limit": 4}

    def answers(params: dict[str, Any], inputs: dict[str, Any], name: str) -> list[str]:
        out, _ = run_kind("eval", {**base, **params}, inputs, tmp_path / name)
        assert "exact_match" in json.loads((out["report"] / "eval.json").read_text())["halo_capitals"]
        return [r["resps"][0][0] if isinstance(r["resps"][0], list) else r["resps"][0] for r in read_jsonl(out["report"] / "samples.jsonl")]

    tiny = {"model": Artifact("model", build_tiny())}
    assert not all(re.fullmatch(word, a) for a in answers({}, tiny, "free"))  # the model alone writes no such word
    constrained = {"response_format": {"type": "regex", "pattern": word}}
    gguf = tmp_path / "gguf"
    convert(build_tiny(), "gguf", "fp32", gguf)
    for name, inputs in (("hf", tiny), ("gguf", {"model": Artifact("model", gguf)})):
        got = answers(constrained, inputs, name)
        assert len(got) == 4 and all(re.fullmatch(word, a) for a in got), (name, got)
    with Running(build_tiny()) as server:  # an endpoint gets the constraint with each request (vLLM's guided_regex)
        got = answers({**constrained, "base_url": f"{server.url}/chat/completions"}, {}, "api")
    assert len(got) == 4 and all(re.fullmatch(word, a) for a in got), got
