"""merge, convert and verify on the tiny model: real PEFT merges, real llama.cpp / mlx-lm / transformers exports."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import cli
from halo_pipeline.engine.cache import digest
from halo_pipeline.engine.step import Artifact
from halo_pipeline.export.converting import convert
from halo_pipeline.export.drift import verify
from halo_pipeline.export.formats import pairs
from halo_pipeline.export.merging import bake, combine
from halo_pipeline.runtimes.catalog import build_tiny
from halo_pipeline.runtimes.formats import export_info
from helpers import run_kind

PAIRS = pairs()
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


@pytest.fixture(scope="module")
def tiny() -> Path:
    return build_tiny()


@pytest.fixture(scope="module")
def adapters(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three LoRA adapters with random (non-zero) A and B, so every merge has something to merge."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = []
    for i in range(3):
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_pretrained(tiny)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        path = tmp_path_factory.mktemp("adapters") / f"a{i}"
        get_peft_model(model, config).save_pretrained(path)
        out.append(path)
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / ("adapter_model.safetensors" if (path / "adapter_model.safetensors").is_file() else "model.safetensors"))


def test_bake_merges_the_adapter_into_the_base_in_its_dtype(tiny: Path, adapters: list[Path], tmp_path: Path) -> None:
    bake(tiny, adapters[0], tmp_path / "merged")
    merged, base, lora = _weights(tmp_path / "merged"), load_file(tiny / "model.safetensors"), _weights(adapters[0])
    key = "model.layers.0.self_attn.q_proj"
    a, b = lora[f"base_model.model.{key}.lora_A.weight"], lora[f"base_model.model.{key}.lora_B.weight"]
    expected = base[f"{key}.weight"] + (8 / 4) * b @ a  # W + (alpha / r) B A
    assert torch.allclose(merged[f"{key}.weight"], expected, atol=1e-5)
    assert merged[f"{key}.weight"].dtype == torch.float32 and not any("lora" in k for k in merged)
    assert all((tmp_path / "merged" / f).is_file() for f in TOKENIZER_FILES)
    provenance = json.loads((tmp_path / "merged" / "halo_merge.json").read_text())
    # the adapter is recorded by content, not by path: the same merge is the same bytes wherever its inputs live
    assert provenance["adapters"] == [digest(adapters[0])] and provenance["method"] == "merge_and_unload"
    bake(tiny, adapters[0], tmp_path / "bf16", dtype="bf16")  # the requested dtype, not an fp32 blow-up
    assert _weights(tmp_path / "bf16")[f"{key}.weight"].dtype == torch.bfloat16


def test_linear_combine_matches_a_hand_computation(tiny: Path, adapters: list[Path], tmp_path: Path) -> None:
    weights = [0.5, 0.3, 0.2]
    combine(tiny, adapters, weights, tmp_path / "linear", method="linear")
    got = _weights(tmp_path / "linear")
    key = "base_model.model.model.layers.1.self_attn.v_proj"
    loras = [_weights(a) for a in adapters]
    scaling = 8 / 4
    # peft's linear combination: A = sum sqrt(w s) A_i, B = sum sqrt(w s) B_i
    want_a = sum(math.sqrt(w * scaling) * lo[f"{key}.lora_A.weight"] for w, lo in zip(weights, loras, strict=True))
    want_b = sum(math.sqrt(w * scaling) * lo[f"{key}.lora_B.weight"] for w, lo in zip(weights, loras, strict=True))
    assert torch.allclose(got[f"{key}.lora_A.weight"], want_a, atol=1e-6)
    assert torch.allclose(got[f"{key}.lora_B.weight"], want_b, atol=1e-6)


@pytest.mark.parametrize("method", ["ties", "dare_linear", "dare_ties", "magnitude_prune"])
def test_each_combine_method_and_its_density_reach_peft(method: str, tiny: Path, adapters: list[Path], tmp_path: Path) -> None:
    from peft import AutoPeftModelForCausalLM

    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    sparse = combine(tiny, adapters, [0.4, 0.4, 0.2], tmp_path / "sparse", method=method, density=0.2)
    combine(tiny, adapters, [0.4, 0.4, 0.2], tmp_path / "dense", method=method, density=0.9)
    assert sparse["method"] == method and sparse["density"] == 0.2
    zeros = [(_weights(tmp_path / d)[key] == 0).float().mean().item() for d in ("sparse", "dense")]
    assert zeros[0] > zeros[1]  # a lower density prunes more of each task tensor
    model = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "sparse")  # a loadable adapter on its base
    assert model.peft_config["default"].r == 4


def test_combine_then_bake_writes_a_model(tiny: Path, adapters: list[Path], tmp_path: Path) -> None:
    combine(tiny, adapters[:2], [0.7, 0.3], tmp_path / "m", bake_after_merge=True)
    assert export_info(tmp_path / "m")["format"] == "hf" and not (tmp_path / "m" / "adapter_config.json").exists()
    with pytest.raises(ValueError, match="one weight per adapter"):
        combine(tiny, adapters, [1.0], tmp_path / "bad")


@pytest.mark.parametrize(("fmt", "quant"), PAIRS)
def test_every_format_and_quant_loads_in_its_runtime_and_matches_the_source(fmt: str, quant: str, tiny: Path, tmp_path: Path) -> None:
    record = convert(tiny, fmt, quant, tmp_path / "out")
    assert record["format"] == fmt and record["quant"] == quant and record["converter"] and len(record["source_digest"]) == 64
    report = verify(tiny, tmp_path / "out", tmp_path / "report")  # loads the export in llama_cpp / mlx_lm / transformers
    assert report["runtimes"]["export"] == {"gguf": "llama-cpp-python", "mlx": "mlx-lm", "hf": "transformers"}[fmt]
    assert report["passed"], report["checks"]
    assert all(len(g["export"]) == 16 for g in report["greedy"])  # it generates
    assert (tmp_path / "report" / "verify.png").stat().st_size > 1000


def test_gguf_round_trips_to_hf_and_keeps_its_lineage(tiny: Path, tmp_path: Path) -> None:
    convert(tiny, "gguf", "q8", tmp_path / "gguf")
    record = convert(tmp_path / "gguf", "hf", "fp32", tmp_path / "back")
    assert record["source_format"] == "gguf" and record["verify_quant"] == "q8"  # judged as lossy as its q8 origin
    report = verify(tiny, tmp_path / "back", tmp_path / "report")
    assert report["quant"] == "q8" and report["passed"], report["checks"]
    assert report["metrics"]["chat_template_preserved"] == 1.0


def _broken_copy(tiny: Path, dest: Path) -> Path:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.zero_()  # one tensor lost in export
    model.save_pretrained(dest)
    for f in TOKENIZER_FILES:
        shutil.copy2(tiny / f, dest / f)
    return dest


def test_verify_fails_an_export_with_a_zeroed_tensor_as_broken_not_as_quantization_cost(tiny: Path, tmp_path: Path) -> None:
    """The export was made from a copy with one tensor zeroed: its drift is not what q8 costs, and no budget accepts it."""
    convert(_broken_copy(tiny, tmp_path / "broken"), "gguf", "q8", tmp_path / "gguf")
    report = verify(
        tiny,
        tmp_path / "gguf",
        tmp_path / "report",
        overrides={"kl_mean": 100.0, "top1_agreement": 0.0, "ppl_ratio": 1e9, "first_token_match": 0.0},
    )
    assert report["verdict"] == "broken" and not report["passed"] and not report["integrity"]["ok"]
    tensors = next(c for c in report["integrity"]["checks"] if c["check"] == "tensors")
    assert not tensors["ok"] and "model.layers.1.mlp.down_proj.weight" in tensors["evidence"]
    # the conversion path itself is sound (an fp32 export of the real source matches it): only this export's weights are not
    assert next(c for c in report["integrity"]["checks"] if c["check"] == "fp32 reference")["ok"]
    assert report["cost"]["ok"] and "larger" not in report["cost"]  # a generous budget does not turn a broken export into a pass


@pytest.mark.parametrize("quant", ["q8", "q4"])
def test_a_sound_quantized_export_passes_integrity_with_every_tensor_within_its_bound(quant: str, tiny: Path, tmp_path: Path) -> None:
    convert(tiny, "gguf", quant, tmp_path / "gguf")
    report = verify(tiny, tmp_path / "gguf", tmp_path / "report")
    assert report["integrity"]["ok"] and report["verdict"] == "ok", report["integrity"]["checks"]
    tensors = report["integrity"]["tensors"]
    assert tensors["compared"] == 20 and all(0 < t["error"] <= t["bound"] for t in tensors["tensors"] if t["type"] != "F32")
    assert {c["check"]: c["ok"] for c in report["integrity"]["checks"]} == {
        "tensors": True, "tokenizer": True, "chat template": True, "fp32 reference": True,
    }  # fmt: skip
    saved = json.loads((tmp_path / "report" / "verify.json").read_text())
    assert saved["verdict"] == "ok" and saved["cost"]["quant"] == quant and saved["integrity"]["ok"]


def test_a_budget_tighter_than_the_cost_fails_as_cost_naming_the_setting_and_a_larger_quant(tiny: Path, tmp_path: Path) -> None:
    convert(tiny, "gguf", "q4", tmp_path / "gguf")
    measured = verify(tiny, tmp_path / "gguf", tmp_path / "r0")["metrics"]["kl_mean"]
    tight = measured / 2  # tighter than what q4 costs the tiny model, looser than what q8 costs it (about 10x less)
    report = verify(tiny, tmp_path / "gguf", tmp_path / "r1", overrides={"kl_mean": tight})
    assert report["verdict"] == "cost" and report["integrity"]["ok"] and not report["passed"]
    assert report["cost"]["accept"]["kl_mean"] >= measured  # the bound that accepts the cost, rounded the accepting way
    assert [(c["quant"], c["ok"]) for c in report["cost"]["larger"]] == [("q8", True)]  # measured, not guessed
    assert report["cost"]["cheapest_within_budget"] == "q8"
    # the step says the same in recipe terms, and fails differently from a broken export
    from halo_pipeline.tasks.verify import ExportBroken, OverBudget

    inputs = {"source": Artifact("model", tiny), "exported": Artifact("model", tmp_path / "gguf")}
    with pytest.raises(OverBudget) as failed:
        run_kind("verify", {"thresholds": {"kl_mean": tight}}, inputs, tmp_path / "step")
    assert not isinstance(failed.value, ExportBroken)
    message = str(failed.value)
    accept = report["cost"]["accept"]["kl_mean"]
    assert f"steps.verify.with.thresholds.kl_mean={accept:g}" in message and "quant=q8" in message and "sound" in message


def test_a_recipe_set_budget_is_honoured(tiny: Path, tmp_path: Path) -> None:
    convert(tiny, "gguf", "q4", tmp_path / "gguf")
    inputs = {"source": Artifact("model", tiny), "exported": Artifact("model", tmp_path / "gguf")}
    strict = verify(tiny, tmp_path / "gguf", tmp_path / "r", overrides={"top1_agreement": 0.999})  # q4 never agrees on every token
    assert strict["verdict"] == "cost" and {r["metric"]: r["from"] for r in strict["checks"]}["top1_agreement"] == "recipe"
    accept = strict["cost"]["accept"]["top1_agreement"]
    outputs, _ = run_kind("verify", {"thresholds": {"top1_agreement": accept}}, inputs, tmp_path / "step")  # the named setting passes
    saved = json.loads((outputs["report"] / "verify.json").read_text())
    assert saved["verdict"] == "ok" and {r["metric"]: r["rule"] for r in saved["checks"]}["top1_agreement"] == f">= {accept:g}"


def test_budgets_come_from_the_quant_the_format_and_the_model_family() -> None:
    from halo_pipeline.engine.groups import quant
    from halo_pipeline.export.drift import accepting, budget_for

    gemma = quant("q8").families["gemma3"]
    assert budget_for("q8", family="gemma3")["kl_mean"] == ("<=", gemma["kl_mean"], "q8 gemma3")
    assert budget_for("q8", family="llama")["kl_mean"] == ("<=", quant("q8").thresholds["kl_mean"], "conf/quant/q8.yaml")
    assert budget_for("q8", {"kl_mean": 0.05}, family="gemma3")["kl_mean"] == ("<=", 0.05, "recipe")
    assert budget_for("q4", fmt="mlx")["kl_mean"][2] == "q4 mlx"
    # the measurement of Gemma 3 270M at Q8_0 is within its family's budget, not within the SmolLM2-sized default
    assert gemma["kl_mean"] >= 0.037 and gemma["top1_agreement"] <= 0.90 and 1 / gemma["ppl_ratio"] <= 0.905
    assert accepting("kl_mean", 0.0371) == 0.038 and accepting("top1_agreement", 0.9049) == 0.9 and accepting("ppl_ratio", 0.905) == 1.2


def test_verify_fails_an_export_with_a_wrong_tokenizer(tiny: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    convert(tiny, "hf", "fp32", tmp_path / "hf")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False)
    tok.train_from_iterator(["a completely different corpus of words " * 50, "zebra yak xylophone " * 30], trainer=trainer)
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    report = verify(tiny, tmp_path / "hf", tmp_path / "report")
    assert not report["passed"] and report["metrics"]["tokenizer_parity"] < 1.0


def test_convert_verify_and_merge_commands(tiny: Path, adapters: list[Path], tmp_path: Path) -> None:
    listing = cli("convert", "--list")
    assert listing.returncode == 0 and "Q4_K_M" in listing.stdout and "4-bit, group 64" in listing.stdout
    bad = cli("convert", "--source", "tiny", "--format", "hf", "--quant", "q4", "--output", str(tmp_path / "x"))
    assert bad.returncode == 2 and "supports: fp16, bf16, fp32" in bad.stderr and not (tmp_path / "x").exists()
    merged = cli("merge", "--mode", "bake", "--base", "tiny", "--adapter", str(adapters[0]), "--output", str(tmp_path / "merged"))
    assert merged.returncode == 0, merged.stderr
    ok = cli(
        "convert", "--source", str(tmp_path / "merged"), "--format", "gguf", "--quant", "q8", "--output", str(tmp_path / "g"), "--verify"
    )
    assert ok.returncode == 0 and "kl_mean" in ok.stdout, ok.stdout + ok.stderr
    convert(_broken_copy(tiny, tmp_path / "broken"), "gguf", "fp16", tmp_path / "bg")
    before = sorted(p.name for p in (tmp_path / "bg").iterdir())
    failed = cli("verify", "--source", "tiny", "--exported", str(tmp_path / "bg"), cwd=tmp_path)
    assert failed.returncode == 1 and "BROKEN" in failed.stdout and "the export is broken" in failed.stdout
    assert "model.layers.1.mlp.down_proj.weight" in failed.stdout  # the evidence, not only the verdict
    # the report goes beside, never into the export it was given (which may be a cache entry)
    assert sorted(p.name for p in (tmp_path / "bg").iterdir()) == before and (tmp_path / "verify-bg" / "verify.json").is_file()
    combined = cli(
        "merge", "--mode", "combine", "--base", "tiny", "--adapters", ",".join(map(str, adapters)),
        "--weights", "0.5,0.3,0.2", "--method", "ties", "--output", str(tmp_path / "c"),
    )  # fmt: skip
    assert combined.returncode == 0 and json.loads((tmp_path / "c" / "halo_merge.json").read_text())["weights"] == [0.5, 0.3, 0.2]


def test_mlx_adapter_fuses_through_mlx_lm(tiny: Path, tmp_path: Path) -> None:
    from test_train import train

    rows = [{"id": str(i), "prompt": "Say hello.", "completion": "Hello! How can I help you today?"} for i in range(8)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    backend = {"name": "mlx", "engine": "mlx", "device": "default", "dtype": "float16"}
    _, adapter = train(tmp_path / "train", {"sft": Artifact("sft_dataset", data)}, "sft", backend=backend, max_steps=2)
    outputs, _ = run_kind("merge", {"model": "tiny"}, {"adapter": Artifact("adapter", adapter)}, tmp_path / "merge")
    fused = outputs["model"]
    assert json.loads((fused / "halo_merge.json").read_text())["method"] == "mlx_lm fuse"
    report = verify(tiny, fused, tmp_path / "report", quant="q4")  # trained weights differ, but it loads and runs
    assert report["runtimes"]["export"] == "transformers" and len(report["greedy"][0]["export"]) == 16


def test_convert_to_a_gguf_file_name_writes_one_gguf_file(tiny: Path, tmp_path: Path) -> None:
    """`--output model.gguf` writes the file llama.cpp opens (as its own converter's --outfile does), record beside it."""
    out = tmp_path / "exports" / "tiny-q8.gguf"
    res = cli("convert", "--source", "tiny", "--format", "gguf", "--quant", "q8", "--output", str(out), "--verify", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    beside = ["tiny-q8.gguf", "tiny-q8.gguf.halo_export.json", "verify-tiny-q8.gguf"]  # the report beside the file it describes
    assert out.is_file() and sorted(p.name for p in out.parent.iterdir()) == beside
    from llama_cpp import Llama

    llm = Llama(str(out), n_ctx=64, verbose=False)
    assert llm.n_vocab() > 0
    from halo_pipeline.runtimes.formats import export_info

    assert export_info(out)["quant"] == "q8" and (out.parent / "verify-tiny-q8.gguf" / "verify.json").is_file()
    assert not (tmp_path / "verify-tiny-q8.gguf").exists()


def test_a_conversion_reports_its_own_peak_memory_not_the_pipelines(tiny: Path, tmp_path: Path) -> None:
    """A converter is a child process: its ru_maxrss holds the peak of the process that started it (the kernel
    carries the pre-exec high-water mark over), so a 135M model once reported 5 GB. The figure is its own VmHWM."""
    import resource
    import subprocess
    import sys

    held = bytearray(768 * 2**20)  # the pipeline process holding much more than any tiny conversion needs
    held[::4096] = b"\1" * len(held[::4096])
    parent_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    code = "import resource; from halo_pipeline.export.memory import own_peak_rss_mb as p; print(p(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    own, inherited = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert inherited >= 768 and own < 200, (own, inherited)  # what ru_maxrss would have reported, and the child's own
    for fmt in ("gguf", "hf"):
        record = convert(tiny, fmt, "fp32" if fmt == "hf" else "q8", tmp_path / fmt)
        assert 0 < record["peak_rss_mb"] < parent_mb - 100, (fmt, record["peak_rss_mb"], parent_mb)  # inherited: >= parent_mb
    del held
