"""The train step really trains: every algorithm takes optimizer steps on the tiny model, the
weights change, the artifact loads; recipe params reach TRL/peft; a killed run resumes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from halo_pipeline.engine.step import Artifact
from helpers import REFERENCE, VARIED_REWARD, read_jsonl, run_kind, write_jsonl

REWARD = VARIED_REWARD


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Artifact]:
    root = tmp_path_factory.mktemp("data")
    sft = write_jsonl(
        root / "sft.jsonl",
        [{"id": f"r{i}", "prompt": f"What is {i}+{i}?", "completion": f"{2 * i}", "reference": REFERENCE} for i in range(8)],
    )
    pref = write_jsonl(
        root / "pref.jsonl", [{"id": f"p{i}", "prompt": f"What is {i}+{i}?", "chosen": f"{2 * i}", "rejected": "no idea"} for i in range(8)]
    )
    verified = write_jsonl(  # a verifier's samples, both kinds: KTO's desirable and undesirable
        root / "verified.jsonl",
        [
            {"id": f"v{i}", "prompt": f"What is {i}+{i}?", "completion": f"{2 * i}" if i % 2 else "no idea", "verified": bool(i % 2)}
            for i in range(8)
        ],
    )
    return {
        "sft": Artifact("sft_dataset", sft),
        "preference": Artifact("preference_dataset", pref),
        "verified": Artifact("sft_dataset", verified),
    }


MLX = {"name": "mlx", "engine": "mlx", "device": "default", "dtype": "float16"}
ALGORITHMS = {
    "sft": ({"name": "sft", "batch_size": 2}, "sft"),
    "dpo": ({"name": "dpo", "batch_size": 2, "learning_rate": 1e-3}, "preference"),
    "rm": ({"name": "rm", "batch_size": 2, "learning_rate": 1e-3}, "preference"),
    "orpo": ({"name": "orpo", "batch_size": 2, "learning_rate": 1e-3}, "preference"),
    "simpo": ({"name": "simpo", "batch_size": 2, "learning_rate": 1e-3}, "preference"),
    "kto": ({"name": "kto", "batch_size": 2, "learning_rate": 1e-3}, "verified"),
    "grpo": (
        {"name": "grpo", "batch_size": 4, "num_generations": 4, "max_completion_length": 8, "learning_rate": 1e-3, "temperature": 2.0},
        "sft",
    ),
    "raft": (
        {"name": "raft", "cycles": 2, "samples_per_prompt": 2, "reward_threshold": 0.1, "max_completion_length": 8, "temperature": 2.0},
        "sft",
    ),
}


def train(tmp: Path, datasets: dict[str, Artifact], algo: str, **params: object) -> tuple[dict, Path]:
    node, data = ALGORITHMS[algo]
    full = {"model": "tiny", "algorithm": node, "max_steps": 2, "save_every": 1, **params}
    if algo in ("grpo", "raft"):
        full.setdefault("verifier", REWARD)
    outputs, _ = run_kind("train", full, {"dataset": datasets[data]}, tmp)
    return json.loads((tmp / "training_summary.json").read_text()), outputs["model"]


def check_reward_model_adapter(model_dir: Path, provenance: dict) -> None:
    import torch
    from peft import AutoPeftModelForSequenceClassification
    from safetensors import safe_open
    from transformers import AutoTokenizer

    from halo_pipeline.verifiers import build_verifier

    assert provenance["kind"] == "adapter" and provenance["task"] == "reward_model"
    assert json.loads((model_dir / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    with safe_open(str(model_dir / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any(".score." in key for key in keys), keys  # the trained head travels with the adapter
    assert not (model_dir / "model.safetensors").exists()  # not the whole model
    sample = {"prompt": "hi", "completion": "ok"}
    reward = build_verifier({"name": "reward_model", "model": str(model_dir)}).verify(sample)
    assert 0 < reward.reward < 1 and reward.error is None
    # the same score as PEFT's own unmerged load of the adapter (a head left behind would be drawn at random there)
    unmerged = AutoPeftModelForSequenceClassification.from_pretrained(model_dir, num_labels=1).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False) if tokenizer.chat_template else "hi\nok"
    with torch.no_grad():
        score = float(unmerged(**tokenizer(text, return_tensors="pt")).logits[0, 0])
    assert abs(score - reward.details["score"]) < 1e-3, (score, reward.details)
    moved = model_dir.parent / "rm_on_another_base"  # an adapter whose base changed since: an error, not a score
    shutil.copytree(model_dir, moved)
    (moved / "halo_provenance.json").write_text(json.dumps({**provenance, "base_fingerprint": {"model": "other"}}))
    other = build_verifier({"name": "reward_model", "model": str(moved)}).verify(sample)
    assert other.reward == 0 and "is not the one it was trained on" in str(other.error), other


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_each_algorithm_trains_with_lora_and_the_adapter_loads(algo: str, tmp_path: Path, datasets: dict[str, Artifact]) -> None:
    summary, model_dir = train(tmp_path, datasets, algo)
    assert summary["weights_changed"] is True, summary
    assert summary["steps"] >= 2 and summary["final_loss"] is not None
    if algo != "raft":  # raft keeps its cycles
        saved = sorted(p.name for p in (tmp_path / ".scratch/checkpoints").glob("checkpoint-*"))
        assert saved == ["checkpoint-1"], saved  # save_every 1, and none at the last step: the model is saved instead
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows and all("step" in r for r in rows)
    assert (tmp_path / "curves.png").stat().st_size > 1000
    provenance = json.loads((model_dir / "halo_provenance.json").read_text())
    assert provenance["base"]["name"] == "tiny" and provenance["algorithm"]["name"] == algo
    if algo == "rm":  # the adapter and its score head: the reward_model verifier merges them into the base it records
        check_reward_model_adapter(model_dir, provenance)
    else:
        from peft import AutoPeftModelForCausalLM

        loaded = AutoPeftModelForCausalLM.from_pretrained(model_dir)
        assert any("lora" in n for n, _ in loaded.named_parameters())
    if algo == "grpo":
        assert any("reward" in r for r in rows)
        stds = [r["reward_std"] for r in rows if "reward_std" in r]
        assert stds and all(std > 0 for std in stds), rows  # every group had signal: an update happened
    if algo == "raft":
        assert summary["reward_by_cycle"] and all(0 <= r <= 1 for r in summary["reward_by_cycle"])


@pytest.mark.parametrize("algo", ["grpo", "raft"])
def test_init_continues_a_warm_up_adapter(algo: str, tmp_path: Path, datasets: dict[str, Artifact]) -> None:
    from safetensors.torch import load_file

    _, warm = train(tmp_path / "warmup", datasets, "sft", lora_r=8)
    node, data = ALGORITHMS[algo]
    params = {"model": "tiny", "algorithm": node, "max_steps": 2, "verifier": REWARD, "lora_r": 4}
    outputs, _ = run_kind("train", params, {"dataset": datasets[data], "init": Artifact("adapter", warm)}, tmp_path / "rl")
    # the warm-up's adapter trained on: its rank, not this step's lora_r, and its weights as the start
    assert json.loads((outputs["model"] / "adapter_config.json").read_text())["r"] == 8
    start, end = load_file(warm / "adapter_model.safetensors"), load_file(outputs["model"] / "adapter_model.safetensors")
    assert start.keys() == end.keys()
    lora_b = [k for k in start if "lora_B" in k]
    assert lora_b and all(start[k].abs().sum() > 0 for k in lora_b)  # a new adapter's B starts at zero
    summary = json.loads((tmp_path / "rl" / "training_summary.json").read_text())
    assert summary["trainable_params"] == sum(t.numel() for t in start.values())


def test_mlx_grpo_continues_an_mlx_warm_up_adapter(tmp_path: Path, datasets: dict[str, Artifact]) -> None:
    """grpo_code's warm-up then GRPO, both on backend=mlx: GRPO trains the warm-up's adapter (its rank, its weights)."""
    from safetensors.numpy import load_file

    _, warm = train(tmp_path / "warmup", datasets, "sft", backend=MLX, lora_r=8, seed=1)
    node, data = ALGORITHMS["grpo"]
    params = {"model": "tiny", "backend": MLX, "algorithm": node, "max_steps": 2, "verifier": REWARD, "lora_r": 4, "seed": 0}
    outputs, _ = run_kind("train", params, {"dataset": datasets[data], "init": Artifact("adapter", warm)}, tmp_path / "rl")
    assert json.loads((outputs["model"] / "adapter_config.json").read_text())["lora_parameters"]["rank"] == 8
    summary = json.loads((tmp_path / "rl" / "training_summary.json").read_text())
    assert summary["weights_changed"] is True and summary["steps"] == 2
    start, end = load_file(warm / "adapters.safetensors"), load_file(outputs["model"] / "adapters.safetensors")
    assert start.keys() == end.keys()
    for name in (
        k for k in start if k.endswith("lora_a")
    ):  # A starts random: a fresh A (another seed) is as far from these as they are from 0
        a, b = start[name].astype("float32"), end[name].astype("float32")
        assert float(np.abs(b - a).sum()) < 0.5 * float(np.abs(a).sum()), name  # a fresh one: ~1.1x apart


def test_an_adapter_from_the_other_kind_of_backend_is_refused(tmp_path: Path, datasets: dict[str, Artifact]) -> None:
    node, data = ALGORITHMS["grpo"]
    params = {"model": "tiny", "algorithm": node, "max_steps": 1, "verifier": REWARD}
    mlx_made, peft_made = tmp_path / "mlx", tmp_path / "peft"
    mlx_made.mkdir()
    (mlx_made / "adapters.safetensors").write_bytes(b"")
    peft_made.mkdir()
    (peft_made / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is an MLX adapter .* backend=cpu does not continue: .*backend: \$\{backend\}"):
        run_kind("train", params, {"dataset": datasets[data], "init": Artifact("adapter", mlx_made)}, tmp_path / "a")
    with pytest.raises(ValueError, match=r"is a PEFT adapter .* backend=mlx does not continue"):
        run_kind("train", {**params, "backend": MLX}, {"dataset": datasets[data], "init": Artifact("adapter", peft_made)}, tmp_path / "b")


def test_init_from_another_base_model_is_refused(tmp_path: Path, datasets: dict[str, Artifact]) -> None:
    import shutil

    _, warm = train(tmp_path / "warmup", datasets, "sft")
    other = shutil.copytree(warm, tmp_path / "other")
    provenance = json.loads((other / "halo_provenance.json").read_text())
    (other / "halo_provenance.json").write_text(json.dumps({**provenance, "base_fingerprint": {"sha256": "0" * 64}}))
    params = {"model": "tiny", "algorithm": ALGORITHMS["sft"][0], "max_steps": 1}
    with pytest.raises(ValueError, match="another base model"):
        run_kind("train", params, {"dataset": datasets["sft"], "init": Artifact("adapter", other)}, tmp_path / "sft")
    with pytest.raises(ValueError, match="adapter=none"):
        run_kind("train", {**params, "adapter": "none"}, {"dataset": datasets["sft"], "init": Artifact("adapter", warm)}, tmp_path / "full")


@pytest.mark.parametrize("algo", ["sft", "dpo"])
def test_full_fine_tuning_writes_a_model(algo: str, tmp_path: Path, datasets: dict[str, Artifact]) -> None:
    from transformers import AutoModelForCausalLM

    summary, model_dir = train(tmp_path, datasets, algo, adapter="none")
    assert summary["weights_changed"] and summary["trainable_params"] > 90_000
    assert AutoModelForCausalLM.from_pretrained(model_dir).num_parameters() > 90_000


@pytest.mark.parametrize("adapter", ["dora", "rslora", "pissa"])
def test_adapter_variants_train(adapter: str, tmp_path: Path, datasets: dict[str, Artifact]) -> None:
    summary, model_dir = train(tmp_path, datasets, "sft", adapter=adapter)
    config = json.loads((model_dir / "adapter_config.json").read_text())
    assert summary["weights_changed"]
    assert config["use_dora"] is (adapter == "dora") and config["use_rslora"] is (adapter == "rslora")


def test_raft_never_trains_on_zero_reward(tmp_path: Path, datasets: dict[str, Artifact]) -> None:
    summary, _ = train(tmp_path, datasets, "raft", verifier={"name": "regex_format", "pattern": "^NEVER$"})
    assert summary["steps"] == 0 and summary["weights_changed"] is False


def test_mlx_sft_trains_the_tiny_model(tmp_path: Path, datasets: dict[str, Artifact]) -> None:
    summary, model_dir = train(tmp_path, datasets, "sft", backend=MLX, max_steps=3)
    assert summary["weights_changed"] and summary["steps"] == 3 and summary["final_loss"] is not None
    assert (model_dir / "adapters.safetensors").is_file() and (model_dir / "adapter_config.json").is_file()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize("algo", ["dpo", "grpo", "orpo"])
def test_mlx_preference_and_rl_algorithms_train_the_tiny_model(algo: str, tmp_path: Path, datasets: dict[str, Artifact]) -> None:
    """mlx-lm-lora's trainers on backend=mlx: the adapter's weights move, it is mlx-lm's own adapter (merge
    fuses it), and GRPO's rewards are the recipe's verifier's."""
    summary, model_dir = train(tmp_path, datasets, algo, backend=MLX, max_steps=2)
    assert summary["weights_changed"] is True and summary["steps"] == 2 and summary["final_loss"] is not None, summary
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert json.loads((model_dir / "halo_provenance.json").read_text())["format"] == "mlx"
    if algo == "grpo":  # chrF against the reference: the verifier's reward, logged under its name
        assert all(0 <= r["rewards/verifier_chrf/mean"] <= 1 and "reward" in r for r in rows), rows
        assert 0 <= summary["mean_reward"] <= 1
    else:
        assert all("rewards/accuracies" in r for r in rows), rows
    # merge fuses it with mlx-lm (as it does the sft path's adapter), and the fused model loads in transformers
    from transformers import AutoModelForCausalLM

    outputs, _ = run_kind("merge", {"model": "tiny"}, {"adapter": Artifact("adapter", model_dir)}, tmp_path / "merge")
    assert json.loads((outputs["model"] / "halo_merge.json").read_text())["method"] == "mlx_lm fuse"
    assert AutoModelForCausalLM.from_pretrained(outputs["model"]).num_parameters() > 90_000


def test_what_mlx_cannot_train_is_a_validate_time_error() -> None:
    from halo_pipeline.tasks import train as train_kind

    def problems(algorithm: dict[str, object], **params: object) -> dict[str, str]:
        node = {"model": "tiny", "backend": MLX, "algorithm": algorithm, "verifier": REWARD, **params}
        return dict(train_kind.check(train_kind.TrainParams.model_validate(node)))

    for algo in ("kto", "simpo", "rm", "raft"):
        message = problems({"name": algo})["algorithm"]
        assert "backend=mlx trains sft, dpo, orpo, grpo" in message and f"algorithm={algo} needs a torch backend" in message
    for algo in ("sft", "dpo", "orpo", "grpo"):
        assert problems({"name": algo}) == {}
    assert "sigmoid, hinge, ipo" in problems({"name": "dpo", "loss_type": "robust"})["algorithm.loss_type"]
    grpo = problems({"name": "grpo", "scale_rewards": "batch", "mask_truncated_completions": True, "num_iterations": 2}, grad_accum=2)
    assert {"algorithm.scale_rewards", "algorithm.mask_truncated_completions", "algorithm.num_iterations", "algorithm.loss_type"} <= set(
        grpo
    )
    assert "adapter lora or dora" in problems({"name": "dpo"}, adapter="rslora")["adapter"]


def test_every_recipe_param_reaches_trl_and_peft(tmp_path: Path) -> None:
    from halo_pipeline.tasks import train as train_kind
    from halo_pipeline.training.algorithms import trainer_config
    from halo_pipeline.training.configs import peft_config

    base = {"model": "tiny", "max_steps": 7, "grad_accum": 2, "seed": 11, "max_length": 123, "lr_scheduler": "cosine", "warmup_ratio": 0.1}
    base |= {"weight_decay": 0.01, "max_grad_norm": 0.5, "save_every": 3, "logging_steps": 2, "lora_r": 4, "lora_alpha": 8}
    base |= {"lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"], "adapter": "rslora"}
    dpo = train_kind.TrainParams.model_validate(
        {
            **base,
            "algorithm": {
                "name": "dpo",
                "learning_rate": 3e-5,
                "epochs": 2,
                "batch_size": 3,
                "beta": 0.3,
                "loss_type": "robust",
                "label_smoothing": 0.2,
            },
        }
    )
    c = trainer_config(dpo, tmp_path)
    assert (c.learning_rate, c.num_train_epochs, c.per_device_train_batch_size, c.beta, c.loss_type, c.label_smoothing) == (
        3e-5,
        2,
        3,
        0.3,
        ["robust"],
        0.2,
    )
    assert (c.max_steps, c.gradient_accumulation_steps, c.seed, c.max_length, c.lr_scheduler_type.value, c.warmup_steps) == (
        7,
        2,
        11,
        123,
        "cosine",
        0.1,
    )
    assert (c.weight_decay, c.max_grad_norm, c.save_steps, c.logging_steps, c.use_cpu, c.report_to) == (0.01, 0.5, 3, 2, True, [])
    lora = peft_config(dpo)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, set(lora.target_modules), lora.use_rslora) == (
        4,
        8,
        0.05,
        {"q_proj", "v_proj"},
        True,
    )
    rpo = train_kind.TrainParams.model_validate({**base, "algorithm": {"name": "dpo", "loss_type": "rpo", "rpo_alpha": 0.5}})
    assert (trainer_config(rpo, tmp_path).loss_type, trainer_config(rpo, tmp_path).loss_weights) == (["sigmoid", "sft"], [1.0, 0.5])
    grpo_node = {"name": "grpo", "batch_size": 6, "num_generations": 3, "beta": 0.07, "epsilon": 0.3, "temperature": 0.7}
    grpo_node |= {"max_completion_length": 17, "scale_rewards": "batch", "reward_scale": 2.0}
    g = trainer_config(train_kind.TrainParams.model_validate({**base, "algorithm": grpo_node}), tmp_path)
    assert (g.num_generations, g.beta, g.epsilon, g.temperature, g.max_completion_length, g.scale_rewards, g.reward_weights) == (
        3, 0.07, 0.3, 0.7, 17, "batch", [2.0],
    )  # fmt: skip
    sft = trainer_config(
        train_kind.TrainParams.model_validate({**base, "algorithm": {"name": "sft", "completion_only_loss": False}}), tmp_path
    )
    assert sft.completion_only_loss is False and sft.max_length == 123
    rm = trainer_config(
        train_kind.TrainParams.model_validate({**base, "algorithm": {"name": "rm", "center_rewards_coefficient": 0.01}}), tmp_path
    )
    assert rm.center_rewards_coefficient == 0.01
    assert peft_config(train_kind.TrainParams.model_validate({**base, "adapter": "pissa"})).init_lora_weights == "pissa_niter_4"
    assert peft_config(train_kind.TrainParams.model_validate({**base, "adapter": "none"})) is None
    # (TrainingArguments refuses bf16 without a GPU, so the CUDA mapping is checked before it)
    from halo_pipeline.engine.groups import Backend
    from halo_pipeline.training.configs import device_args

    cuda = Backend(name="cuda", device="cuda", dtype="bfloat16")
    assert device_args(cuda) == {"use_cpu": False, "bf16": True, "fp16": False}


def test_preference_and_labelled_algorithms_get_their_trl_configs(tmp_path: Path) -> None:
    """orpo -> ORPOConfig, simpo -> CPOConfig(loss_type="simpo", cpo_alpha 0 by default), kto -> KTOConfig: each field gets through."""
    from halo_pipeline.tasks import train as train_kind
    from halo_pipeline.training.algorithms import trainer_config

    def config(node: dict) -> object:
        return trainer_config(train_kind.TrainParams.model_validate({"model": "tiny", "max_length": 99, "algorithm": node}), tmp_path)

    orpo = config({"name": "orpo", "beta": 0.25, "learning_rate": 1e-5})
    assert (type(orpo).__name__, orpo.beta, orpo.learning_rate, orpo.max_length) == ("ORPOConfig", 0.25, 1e-5, 99)
    simpo = config({"name": "simpo"})
    assert (type(simpo).__name__, simpo.loss_type, simpo.cpo_alpha, simpo.beta, simpo.simpo_gamma) == ("CPOConfig", "simpo", 0.0, 2.0, 1.0)
    cpo_simpo = config({"name": "simpo", "beta": 2.5, "simpo_gamma": 1.4, "cpo_alpha": 0.05, "label_smoothing": 0.1})
    assert (cpo_simpo.beta, cpo_simpo.simpo_gamma, cpo_simpo.cpo_alpha, cpo_simpo.label_smoothing) == (2.5, 1.4, 0.05, 0.1)
    kto = config({"name": "kto", "beta": 0.2, "desirable_weight": 1.5, "undesirable_weight": 0.5})
    assert (type(kto).__name__, kto.beta, kto.desirable_weight, kto.undesirable_weight, kto.max_length) == ("KTOConfig", 0.2, 1.5, 0.5, 99)
    assert all(c.use_cpu and not c.bf16 and not c.gradient_checkpointing for c in (orpo, simpo, kto))  # not their TRL defaults


@pytest.mark.parametrize(
    "options",
    [
        {"loss_type": "grpo"},
        {"loss_type": "bnpo"},
        {"loss_type": "dr_grpo"},
        {"loss_type": "dapo", "epsilon_high": 0.28, "mask_truncated_completions": True},  # DAPO
        {"importance_sampling_level": "sequence"},  # GSPO
        {"num_iterations": 3},
    ],
)
def test_each_grpo_variant_reaches_trls_grpo_config(options: dict, tmp_path: Path) -> None:
    from halo_pipeline.tasks import train as train_kind
    from halo_pipeline.training.algorithms import trainer_config

    params = train_kind.TrainParams.model_validate({"model": "tiny", "algorithm": {"name": "grpo", **options}, "verifier": REWARD})
    config = trainer_config(params, tmp_path)
    assert {key: getattr(config, key) for key in options} == options
    default = trainer_config(train_kind.TrainParams.model_validate({"model": "tiny", "algorithm": {"name": "grpo"}}), tmp_path)
    assert (default.loss_type, default.importance_sampling_level, default.num_iterations) == ("dapo", "token", 1)  # TRL's defaults


def test_gspo_with_several_iterations_trains(tmp_path: Path, datasets: dict[str, Artifact]) -> None:
    node = {**ALGORITHMS["grpo"][0], "importance_sampling_level": "sequence", "num_iterations": 2}
    outputs, _ = run_kind(
        "train", {"model": "tiny", "algorithm": node, "max_steps": 2, "verifier": REWARD}, {"dataset": datasets["sft"]}, tmp_path
    )
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert summary["weights_changed"] and summary["steps"] == 2 and (outputs["model"] / "adapter_config.json").is_file()


def test_one_name_everywhere_each_algorithm_module_has_its_yaml() -> None:
    """training/algorithms/<name>.py is conf/algorithm/<name>.yaml is `name: <name>`; each YAML validates against its module."""
    import yaml

    from halo_pipeline.training import algorithms

    conf = Path(__file__).resolve().parents[2] / "conf" / "algorithm"
    assert sorted(algorithms.NAMES) == sorted(p.stem for p in conf.glob("*.yaml"))
    for name in algorithms.NAMES:
        settings = algorithms.parse(yaml.safe_load((conf / f"{name}.yaml").read_text()))
        assert settings.name == name and type(settings) is algorithms.get(name).settings


@pytest.mark.parametrize(
    ("recipe", "algo", "given", "needed"),
    [
        ("quickstart.yaml", "orpo", "sft_dataset", "preference_dataset"),
        ("quickstart.yaml", "simpo", "sft_dataset", "preference_dataset"),
        ("dpo_preference.yaml", "kto", "preference_dataset", "sft_dataset"),
    ],
)
def test_the_wrong_data_for_an_algorithm_is_a_validate_time_error(recipe: str, algo: str, given: str, needed: str) -> None:
    from halo_pipeline.engine.errors import RecipeError
    from halo_pipeline.engine.plan import plan_recipe

    with pytest.raises(RecipeError) as err:
        plan_recipe(str(Path(__file__).resolve().parents[2] / "recipes" / recipe), ["model=tiny", f"algorithm={algo}"])
    (issue,) = err.value.issues
    assert issue.key == "steps.train.inputs.dataset"
    assert f"is a {given}, but 'train' input 'dataset' takes {needed}" in issue.message


def test_kto_labels_come_from_label_verified_or_reward() -> None:
    from halo_pipeline.training.data import labelled_rows

    rows = [
        {"prompt": "p", "completion": "a", "label": False, "verified": True},
        {"prompt": "p", "completion": "b", "verified": True, "reward": 0.0},
        {"prompt": "p", "completion": "c", "reward": 0.7},
        {"prompt": "p", "completion": "d", "reward": 0.2},
    ]
    assert [r["label"] for r in labelled_rows(rows, False, None, 0.5)] == [False, True, True, False]
    assert labelled_rows(rows[2:3], True, "sys", 0.5)[0]["completion"] == [{"role": "assistant", "content": "c"}]
    with pytest.raises(ValueError, match=r"row 2 \(x\) has no `label`, `verified` or `reward`"):
        labelled_rows([rows[0], {"id": "x", "prompt": "p", "completion": "e"}], False, None, 0.5)
    with pytest.raises(ValueError, match="batch_size"):  # KTO's KL term needs a batch of at least 2
        from halo_pipeline.tasks import train as train_kind

        train_kind.TrainParams.model_validate({"algorithm": {"name": "kto", "batch_size": 1}})


KILL_SCRIPT = """
import sys
from pathlib import Path
sys.path[:0] = [{tests!r}, {tasks!r}]
from helpers import run_kind
from halo_pipeline.engine.step import Artifact
params = {{"model": "tiny", "algorithm": {{"name": "sft", "batch_size": 1, "learning_rate": 1e-3}}, "max_steps": 40, "save_every": 3}}
run_kind("train", params, {{"dataset": Artifact("sft_dataset", Path({data!r}))}}, Path({out!r}))
"""


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path: Path, datasets: dict[str, Artifact]) -> None:
    out = tmp_path / "work"
    tests = Path(__file__).resolve().parents[1]
    script = KILL_SCRIPT.format(tests=str(tests), tasks=str(tests / "tasks"), data=str(datasets["sft"].path), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    checkpoints = out / ".scratch" / "checkpoints"  # the step's scratch area: kept for the resume, gone once committed
    while time.time() < deadline and not list(checkpoints.glob("checkpoint-9/halo_complete.json")):
        assert proc.poll() is None, proc.stderr.read()[-2000:]  # type: ignore[union-attr]
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert list(checkpoints.glob("checkpoint-*")), "no checkpoint before the kill"
    assert not (out / "training_summary.json").exists(), "finished before it could be killed"
    from halo_pipeline.training.trl_runner import last_checkpoint

    # a torn newest checkpoint (a kill during its write: no completion marker) is passed over for the one before
    newest = max(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    (newest / "halo_complete.json").unlink(missing_ok=True)
    (newest / "trainer_state.json").write_text('{"global_step": ')
    resume_from = last_checkpoint(checkpoints)
    assert resume_from is not None and resume_from != newest
    params = {"model": "tiny", "algorithm": {"name": "sft", "batch_size": 1, "learning_rate": 1e-3}, "max_steps": 40, "save_every": 3}
    run_kind("train", params, {"dataset": datasets["sft"]}, out)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["resumed_from"] == resume_from.name and summary["steps"] == 40
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl")]
    assert steps == list(range(1, 41)), steps  # no step logged twice, none missing


@pytest.mark.slow
def test_sft_lora_lowers_smollm2_training_loss(tmp_path: Path) -> None:
    rows = [
        {"id": f"r{i}", "prompt": f"Say the secret word number {i}.", "completion": f"The secret word is banana-{i}."} for i in range(16)
    ]
    data = Artifact("sft_dataset", write_jsonl(tmp_path / "d.jsonl", rows))
    params = {"model": "smollm2-135m-instruct", "algorithm": {"name": "sft", "batch_size": 4, "learning_rate": 1e-3}, "max_steps": 12}
    run_kind("train", params, {"dataset": data}, tmp_path / "out")
    losses = [r["loss"] for r in read_jsonl(tmp_path / "out" / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < 0.7 * losses[0], losses


def test_probe_every_logs_held_out_scores_with_the_curves(tmp_path: Path, datasets: dict[str, Artifact]) -> None:
    probe = {"probe_every": 1, "probe_limit": 2, "probe_max_new_tokens": 8, "probe_verifier": "python_syntax"}
    train(tmp_path, datasets, "sft", **probe)
    probes = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "probe/pass@1" in r]
    assert [r["step"] for r in probes] == [0, 1, 2]  # before training, then every step
    assert all(0 <= r["probe/pass@1"] <= 1 and 0 <= r["probe/mean_reward"] <= 1 for r in probes)


def test_probe_every_is_checked_at_validation() -> None:
    from halo_pipeline.tasks import train as train_kind

    rm = train_kind.TrainParams.model_validate({"algorithm": {"name": "rm"}, "probe_every": 5, "probe_verifier": "python_syntax"})
    assert any("probe_every" in p for p in train_kind.check(rm))
    unscored = train_kind.TrainParams.model_validate({"algorithm": {"name": "sft"}, "probe_every": 5})
    assert any("probe_verifier" in p for p in train_kind.check(unscored))


RAFT_SCRIPT = """
import sys
from pathlib import Path
sys.path[:0] = [{tests!r}, {tasks!r}]
from helpers import run_kind
from halo_pipeline.engine.step import Artifact
run_kind("train", {params!r}, {{"dataset": Artifact("sft_dataset", Path({data!r}))}}, Path({out!r}))
"""


def test_a_killed_raft_run_resumes_after_its_last_complete_cycle(tmp_path: Path, datasets: dict[str, Artifact]) -> None:
    out = tmp_path / "work"
    tests = Path(__file__).resolve().parents[1]
    node = {**ALGORITHMS["raft"][0], "cycles": 4}
    params = {"model": "tiny", "algorithm": node, "max_steps": 2, "save_every": 1, "verifier": REWARD}
    script = RAFT_SCRIPT.format(tests=str(tests), tasks=str(tests / "tasks"), params=params, data=str(datasets["sft"].path), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    state = out / ".scratch" / "raft"
    while time.time() < deadline and not list(state.glob("cycle-2/state.json")):
        assert proc.poll() is None, proc.stderr.read()[-2000:]  # type: ignore[union-attr]
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not (out / "training_summary.json").exists(), "finished before it could be killed"
    done = max(int(p.name.split("-")[1]) for p in state.glob("cycle-*"))
    run_kind("train", params, {"dataset": datasets["sft"]}, out)
    summary = json.loads((out / "training_summary.json").read_text())
    assert len(summary["reward_by_cycle"]) == 4 and summary["weights_changed"] is True
    cycles = [r["cycle"] for r in read_jsonl(out / "metrics.jsonl") if "cycle" in r]
    assert cycles == [0, 1, 2, 3], cycles  # the cycles before the kill are not run (or logged) twice
    assert done >= 2


def test_the_quickstart_with_kto_trains_on_its_own_passed_and_failed_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run recipes/quickstart.yaml algorithm=kto model=tiny`: the failed samples reach KTO past score (docs/training.md)."""
    from halo_pipeline.engine.execute import execute, step_calls
    from halo_pipeline.engine.plan import plan_recipe

    monkeypatch.setenv("HALO_PIPELINE_CACHE", str(tmp_path / "cache"))
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"
    plan = plan_recipe(str(recipe), ["model=tiny", "algorithm=kto", "steps.train.with.max_steps=2"])
    calls, done = step_calls(plan, tmp_path / "run"), {}
    for sid in ("synthesize", "dedup", "score", "train"):
        done[sid] = execute(calls[sid], done)
    assert done["train"].state == "ran" and done["train"].metrics["weights_changed"] is True
    (checks,) = {p.resolve() for p in tmp_path.rglob("data_checks.json")}
    (note,) = [n for n in json.loads(checks.read_text())["notes"] if "desirable" in n]
    desirable, undesirable = (int(w) for w in note.split() if w.isdigit())
    rows = json.loads(checks.read_text())["stats"]["rows"]
    assert undesirable >= 1 and desirable + undesirable == rows, note  # the tiny model's code fails python_syntax: few pass, if any


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_mlx_weights_moved_is_read_from_the_adapter_file_without_mlx(tmp_path: Path, dtype: str) -> None:
    """The pipeline process tells whether training moved the LoRA B matrices from the safetensors bytes alone."""
    import mlx.core as mx

    from halo_pipeline.training.mlx import _mlx_changed

    kind = getattr(mx, dtype)
    still = {"l.lora_a": mx.ones((4, 2), dtype=kind), "l.lora_b": mx.zeros((2, 4), dtype=kind)}
    moved = {**still, "m.lora_b": mx.zeros((2, 4), dtype=kind).at[1, 2].add(1e-3)}
    mx.save_safetensors(str(tmp_path / "still.safetensors"), still)
    mx.save_safetensors(str(tmp_path / "moved.safetensors"), moved)
    assert not _mlx_changed(tmp_path / "still.safetensors") and _mlx_changed(tmp_path / "moved.safetensors")


def test_a_reward_model_is_its_own_artifact_type_which_steps_that_generate_refuse_at_validate_time(tmp_path: Path) -> None:
    from halo_pipeline.engine.config import compose
    from halo_pipeline.engine.errors import RecipeError
    from halo_pipeline.engine.plan import build_plan

    recipe = tmp_path / "rm.yaml"
    recipe.write_text(
        """
defaults: [{backend: cpu}, {algorithm: rm}, {verifier: python_syntax}, {model: tiny}, _self_]
name: rm
steps:
  synthesize:
    with:
      source: humaneval:train
      limit: 4
      model: ${model}
      verifier: ${verifier}
      output: preference
  train:
    inputs: {dataset: synthesize.dataset}
    with:
      model: ${model}
      algorithm: ${algorithm}
  eval:
    inputs: {model: train.model}
"""
    )
    with pytest.raises(RecipeError) as info:
        build_plan(compose(recipe, []))
    (issue,) = [i for i in info.value.issues if i.key == "steps.eval.inputs.model"]
    assert "is a reward_model" in issue.message, info.value.format()
