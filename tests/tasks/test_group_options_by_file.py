"""A quant and a backend are files: a project that adds `conf/quant/<name>.yaml` and `conf/backend/<name>.yaml`
runs them end to end on the tiny model, with no code changed (docs/architecture.md, "Where to add things")."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import cli, write
from helpers import write_jsonl

QA = [{"id": f"r{i}", "prompt": f"What is {i}+{i}?", "completion": f"It is {2 * i}."} for i in range(4)]

# Q5_0 is a type no shipped quant uses: the converter learns it from this file alone
NEW_QUANT = """
name: q5
description: 5-bit weights (GGUF Q5_0)
formats:
  gguf: {gguf_type: Q5_0, bits: 5.5}
thresholds: {kl_mean: 0.2, top1_agreement: 0.8, ppl_ratio: 1.2, first_token_match: 0.5}
"""
NEW_BACKEND = """
name: cpu_eager
engine: torch
device: cpu
dtype: float32
attention: eager
"""
RECIPE = """
defaults:
  - backend: cpu_eager
  - quant: q5
  - _self_
name: by-file
seed: 0
steps:
  train:
    inputs: {dataset: file:qa.jsonl}
    with: {model: tiny, backend: "${backend}", adapter: none, algorithm: {name: sft, batch_size: 2}, max_steps: 1}
  convert:
    inputs: {model: train.model}
    with: {format: gguf, quant: "${quant.name}"}
"""


def test_a_quant_and_a_backend_added_by_file_run_end_to_end(project: Path) -> None:
    from gguf import GGUFReader

    from halo_pipeline.engine.execute import execute, step_calls
    from halo_pipeline.engine.groups import quant, quant_names
    from halo_pipeline.engine.plan import plan_recipe
    from halo_pipeline.export.formats import pairs

    write(project / "conf/quant/q5.yaml", NEW_QUANT)
    write(project / "conf/backend/cpu_eager.yaml", NEW_BACKEND)
    write_jsonl(project / "recipes/qa.jsonl", QA)
    recipe = write(project / "recipes/r.yaml", RECIPE)

    assert quant_names() == ["q4", "q5", "q8", "fp16", "bf16", "fp32"]  # fewest bits first, the new one in its place
    assert ("gguf", "q5") in pairs() and ("mlx", "q5") not in pairs()
    assert quant("q4").bound > quant("q5").bound > quant("q8").bound  # Q5_0's own error bound, from its type

    plan = plan_recipe(str(recipe), [])
    backend = plan.steps["train"].params.backend  # type: ignore[attr-defined]
    assert (backend.name, backend.device, backend.attention, backend.is_cpu) == ("cpu_eager", "cpu", "eager", True)
    calls = step_calls(plan, project / "outputs/run")
    trained = execute(calls["train"], {})
    converted = execute(calls["convert"], {"train": trained})

    out = Path(converted.outputs["model"].path)
    (gguf_file,) = out.glob("*.gguf")
    types = {t.tensor_type.name for t in GGUFReader(str(gguf_file)).tensors}
    assert "Q5_0" in types, types
    assert converted.outputs["model"].meta["quant"] == "q5"


def test_the_cli_lists_a_quant_added_by_file(project: Path) -> None:
    write(project / "conf/quant/q5.yaml", NEW_QUANT)
    listed = cli("convert", "--list", cwd=project)
    assert listed.returncode == 0 and "GGUF Q5_0" in listed.stdout, listed.stdout + listed.stderr
    assert "{q4,q5,q8,fp16,bf16,fp32}" in cli("convert", "--help", cwd=project).stdout


def test_a_quant_file_whose_name_is_not_its_file_name_is_refused(project: Path) -> None:
    from halo_pipeline.engine.groups import quant

    write(project / "conf/quant/q6.yaml", NEW_QUANT)  # says `name: q5`
    with pytest.raises(ValueError, match="a quant's name is its file's name"):
        quant("q6")
