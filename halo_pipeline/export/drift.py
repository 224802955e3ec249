"""verify: does an export compute what its source computes? Numbers on a fixed text set, against thresholds.

Source and export each run in their own runtime. On the source's token ids for every text we compare
next-token distributions (mean per-token KL(source || export), top-1 agreement, perplexity ratio);
on fixed prompts we compare greedy continuations (exact match, first token); on tricky strings we
compare tokenizers (same ids); and the chat template must survive. Thresholds are per quant.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from halo_pipeline.runtimes import Runtime

# The fixed text set (documented in docs/export.md): prose, code, structured data, numbers, chat and
# several scripts, so a broken tokenizer, embedding row or attention layer shows somewhere.
TEXTS = {
    "prose": "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks were striking thirteen.",
    "code": "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\nprint(fibonacci(10))\n",
    "json": '{"name": "halo", "version": 2, "tags": ["train", "eval"], "ratio": 0.75, "ok": true}',
    "numbers": "1 + 1 = 2, 12 * 12 = 144, 3.14159 is close to pi, and 2^10 = 1024.",
    "chat": "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n",
    "multilingual": "Grüße aus München! Voilà, ça marche. Привет, мир. 你好，世界。",
}
PROMPTS = [
    "def add(a, b):\n",
    "The capital of France is",
    "Write a function that adds two numbers.",
    "Say hello.",
]
TOKENIZER_CASES = [
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\n\nand   runs",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment",
    "naïve café, Straße, 東京, עברית",
    "emoji 🦙🚀 and combined 👩‍💻 and flags 🇫🇷",
    "<|im_start|>user\nhi<|im_end|>",
    "12345678901234567890 3.14e-10 0xFF",
    "",
]
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]
GREEDY_TOKENS = 16

# How each metric is judged; the bounds come from the quant group (conf/quant/<name>.yaml `thresholds`,
# and per format `formats.<fmt>.thresholds`): convert, verify and the docs read the same table.
OPS = {"kl_mean": "<=", "top1_agreement": ">=", "ppl_ratio": "within", "first_token_match": ">=", "greedy_exact_match": ">="}
ALWAYS = {"tokenizer_parity": (">=", 1.0), "chat_template_preserved": (">=", 1.0)}


def thresholds_for(quant: str, overrides: dict[str, float] | None = None, fmt: str | None = None) -> dict[str, tuple[str, float]]:
    from halo_pipeline.engine.groups import quant as quant_group

    q = quant_group(quant)
    bounds = {**q.thresholds, **(q.formats[fmt].thresholds if fmt in q.formats else {})}  # type: ignore[index]
    rules = {metric: (OPS[metric], bound) for metric, bound in bounds.items()} | ALWAYS
    for metric, bound in (overrides or {}).items():
        if metric not in rules and metric not in OPS:
            raise ValueError(f"unknown verify metric '{metric}'; metrics: {', '.join(sorted({*rules, *OPS}))}")
        rules[metric] = (rules.get(metric, (OPS.get(metric, ">="), 0.0))[0], float(bound))
    return rules


def measure(source: Runtime, export: Runtime) -> dict[str, Any]:
    per_text: dict[str, dict[str, float]] = {}
    kls: list[float] = []
    agree: list[float] = []
    nll_src: list[float] = []
    nll_exp: list[float] = []
    for name, text in TEXTS.items():
        ids = source.tokenize(text)
        p, q = source.logprobs(ids), export.logprobs(ids)
        vocab = min(p.shape[1], q.shape[1])  # exports may pad the vocabulary; padded rows carry no mass
        p, q = p[:, :vocab], q[:, :vocab]
        kl = (np.exp(p) * (p - q)).sum(axis=1)
        top1 = (p.argmax(axis=1) == q.argmax(axis=1)).astype(float)
        targets = np.array(ids[1:])
        rows = np.arange(len(ids) - 1)
        nll_src += list(-p[rows, targets])
        nll_exp += list(-q[rows, targets])
        kls += list(kl)
        agree += list(top1)
        per_text[name] = {"kl_mean": float(kl.mean()), "top1_agreement": float(top1.mean()), "tokens": len(ids)}
    greedy: list[dict[str, Any]] = []
    for prompt in PROMPTS:
        rendered = source.render_chat([{"role": "user", "content": prompt}]) or prompt
        ids = source.tokenize(rendered)
        a, b = source.greedy(ids, GREEDY_TOKENS), export.greedy(ids, GREEDY_TOKENS)
        greedy.append({"prompt": prompt, "source": a, "export": b, "exact": a == b, "first": a[:1] == b[:1]})
    tokenizer: list[dict[str, Any]] = [{"text": t, "same": source.tokenize(t) == export.tokenize(t)} for t in TOKENIZER_CASES]
    template_src, template_exp = source.chat_template(), export.chat_template()
    chat_same = (template_src or "").strip() == (template_exp or "").strip()
    if chat_same and template_src:  # the same template must also render the same conversation
        chat_same = source.render_chat(CHAT) == export.render_chat(CHAT)
    metrics = {
        "kl_mean": float(np.mean(kls)),
        "kl_max": float(np.max(kls)),
        "top1_agreement": float(np.mean(agree)),
        "ppl_source": math.exp(float(np.mean(nll_src))),
        "ppl_export": math.exp(float(np.mean(nll_exp))),
        "greedy_exact_match": sum(g["exact"] for g in greedy) / len(greedy),
        "first_token_match": sum(g["first"] for g in greedy) / len(greedy),
        "tokenizer_parity": sum(t["same"] for t in tokenizer) / len(tokenizer),
        "chat_template_preserved": 1.0 if chat_same else 0.0,
    }
    metrics["ppl_ratio"] = metrics["ppl_export"] / metrics["ppl_source"]
    return {
        "metrics": metrics,
        "per_text": per_text,
        "greedy": greedy,
        "tokenizer": tokenizer,
        "chat_template": {"source": template_src, "export": template_exp},
    }


def judge(metrics: dict[str, float], rules: dict[str, tuple[str, float]]) -> list[dict[str, Any]]:
    rows = []
    for metric, (op, bound) in rules.items():
        value = metrics[metric]
        if op == "within":  # a ratio off either way means the export computes something else
            ok, rule = 1 / bound <= value <= bound, f"in [{1 / bound:.3g}, {bound:g}]"
        else:
            ok, rule = (value <= bound if op == "<=" else value >= bound), f"{op} {bound:g}"
        rows.append({"metric": metric, "value": value, "rule": rule, "ok": bool(ok)})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| metric | value | threshold | |", "|---|---|---|---|"]
    lines += [f"| {r['metric']} | {r['value']:.4g} | {r['rule']} | {'ok' if r['ok'] else 'FAIL'} |" for r in rows]
    return "\n".join(lines)


def plot(per_text: dict[str, dict[str, float]], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 2.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    names = list(per_text)
    ax.bar(names, [per_text[n]["kl_mean"] for n in names], color="#4c72b0")
    ax.set_ylabel("mean KL (nats/token)")
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def verify(
    source: Path, exported: Path, report_dir: Path, quant: str | None = None, overrides: dict[str, float] | None = None
) -> dict[str, Any]:
    """Load both, measure, judge against the quant's thresholds; writes verify.json + verify.png into report_dir."""
    import json

    from halo_pipeline import runtimes
    from halo_pipeline.runtimes.formats import export_info

    info = export_info(exported)
    quant = quant or info.get("verify_quant") or info.get("quant") or "fp32"
    rules = thresholds_for(quant, overrides, info["format"])
    # each in its own runtime and its own dtype: a bf16 export is compared as bf16, not upcast
    src_rt, exp_rt = runtimes.load(source, n_ctx=512, dtype="auto"), runtimes.load(exported, n_ctx=512, dtype="auto")
    found = measure(src_rt, exp_rt)
    rows = judge(found["metrics"], rules)
    report = {  # content only (no paths, no times): the same source and export give the same bytes
        "format": info["format"],
        "quant": quant,
        "runtimes": {"source": src_rt.name, "export": exp_rt.name},
        "passed": all(r["ok"] for r in rows),
        "checks": rows,
        **found,
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "verify.json").write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    plot(found["per_text"], report_dir / "verify.png", f"{info['format']} {quant} vs source: KL per text")
    return report
