"""verify: is an export broken, and what does quantization cost this model? Two verdicts on a fixed text set.

Source and export each run in their own runtime. On the source's token ids for every text we compare
next-token distributions (mean per-token KL(source || export), top-1 agreement, perplexity ratio);
on fixed prompts we compare greedy continuations (exact match, first token); on tricky strings we
compare tokenizers (same ids); and the chat template must survive.

**Integrity** (is the export broken?) is judged strictly: every tensor against the source's within its
storage type's own error bound (`integrity.py`), tokenizer parity, the chat template, and an unquantized
(fp32) export of the same source in the same format, which must compute what the source computes — so
the conversion path (names, layouts, norms, RoPE, metadata) is proven apart from the rounding.
**Cost** (what does quantization cost this model?) is the drift measured against a budget per quant
(`conf/quant/<name>.yaml`: `thresholds`, per format `formats.<fmt>.thresholds`, per model family
`families.<model_type>`), which a recipe may set (`thresholds`). An export over its budget names the
settings that accept the cost and the cheapest larger quant that stays within its own budget.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable
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
# per format `formats.<fmt>.thresholds`, per model family `families.<family>`): convert, verify and the docs
# read the same table.
OPS = {"kl_mean": "<=", "top1_agreement": ">=", "ppl_ratio": "within", "first_token_match": ">=", "greedy_exact_match": ">="}
ALWAYS = {"tokenizer_parity": (">=", 1.0), "chat_template_preserved": (">=", 1.0)}  # integrity, not cost
REFERENCE = "fp32"  # the unquantized export that proves the conversion path


def family_of(path: Path) -> str | None:
    """The model family budgets are kept for: config.json's model_type (without `_text`), or a GGUF's architecture."""
    from halo_pipeline.runtimes.formats import gguf_file

    gguf = gguf_file(path)
    if gguf is not None:
        from gguf import GGUFReader

        field = GGUFReader(gguf).fields.get("general.architecture")
        return None if field is None else bytes(field.parts[field.data[0]]).decode()
    config = path / "config.json"
    if config.is_file():
        model_type = json.loads(config.read_text()).get("model_type")
        return str(model_type).removesuffix("_text") if model_type else None
    return None


def _looser(op: str, a: float, b: float) -> float:
    return min(a, b) if op == ">=" else max(a, b)


def thresholds_for(
    quant: str, overrides: dict[str, float] | None = None, fmt: str | None = None, family: str | None = None
) -> dict[str, tuple[str, float]]:
    """metric -> (op, bound): the quant's cost budget for this format and family, the recipe's overrides, the integrity rules."""
    return {m: (op, bound) for m, (op, bound, _) in budget_for(quant, overrides, fmt, family).items()}


def budget_for(
    quant: str, overrides: dict[str, float] | None = None, fmt: str | None = None, family: str | None = None
) -> dict[str, tuple[str, float, str]]:
    """metric -> (op, bound, where the bound comes from). Where a format and a family both set a metric, the looser holds."""
    from halo_pipeline.engine.groups import quant as quant_group

    q = quant_group(quant)
    rules: dict[str, tuple[str, float, str]] = {m: (OPS[m], b, f"conf/quant/{quant}.yaml") for m, b in q.thresholds.items()}
    if fmt in q.formats:
        rules |= {m: (OPS[m], b, f"{quant} {fmt}") for m, b in q.formats[fmt].thresholds.items()}
    for m, b in q.families.get(family or "", {}).items():
        if m not in rules or _looser(OPS[m], rules[m][1], b) == b:
            rules[m] = (OPS[m], b, f"{quant} {family}")
    rules |= {m: (op, b, "integrity") for m, (op, b) in ALWAYS.items()}
    for metric, bound in (overrides or {}).items():
        if metric not in rules and metric not in OPS:
            raise ValueError(f"unknown verify metric '{metric}'; metrics: {', '.join(sorted({*rules, *OPS}))}")
        rules[metric] = (rules.get(metric, (OPS.get(metric, ">="), 0.0, ""))[0], float(bound), "recipe")
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


def judge(metrics: dict[str, float], rules: dict[str, tuple[str, float]] | dict[str, tuple[str, float, str]]) -> list[dict[str, Any]]:
    rows = []
    for metric, (op, bound, *origin) in rules.items():
        value = metrics[metric]
        if op == "within":  # a ratio off either way means the export computes something else
            ok, rule = 1 / bound <= value <= bound, f"in [{1 / bound:.3g}, {bound:g}]"
        else:
            ok, rule = (value <= bound if op == "<=" else value >= bound), f"{op} {bound:g}"
        rows.append({"metric": metric, "value": value, "rule": rule, "ok": bool(ok), **({"from": origin[0]} if origin else {})})
    return rows


def accepting(metric: str, value: float) -> float:
    """The bound that accepts a measured value, at two significant digits (rounded the accepting way)."""
    op = OPS.get(metric, ">=")
    if op == "within":
        value = max(value, 1 / value) if value > 0 else math.inf
    if value <= 0 or not math.isfinite(value):
        return value
    step = 10 ** (math.floor(math.log10(value)) - 1)
    return round((math.floor(value / step) if op == ">=" else math.ceil(value / step)) * step, 12)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| metric | value | budget | from | |", "|---|---|---|---|---|"]
    lines += [f"| {r['metric']} | {r['value']:.4g} | {r['rule']} | {r.get('from', '')} | {'ok' if r['ok'] else 'FAIL'} |" for r in rows]
    return "\n".join(lines)


def integrity_table(checks: list[dict[str, Any]]) -> str:
    lines = ["| integrity check | | evidence |", "|---|---|---|"]
    lines += [f"| {c['check']} | {_mark(c['ok'])} | {c['evidence']} |" for c in checks]
    return "\n".join(lines)


def explain(
    report: dict[str, Any], setting: Callable[[str, float], str], switch: Callable[[str], str] = "quant={}".format, tables: bool = True
) -> str:
    """What a failed verify means and what to do, in words: `setting(metric, bound)` spells a budget override,
    `switch(quant)` an export at another quant; `tables=False` where the tables were shown already."""
    if report["verdict"] == "broken":
        return (
            "the export is broken (not quantization cost): it does not hold what its source holds, so its drift "
            "numbers say nothing about the quant; fix the conversion or its input"
            + (":\n" + integrity_table(report["integrity"]["checks"]) if tables else "")
        )
    cost = report["cost"]
    lines = [
        f"quantization costs this model ({cost['family'] or 'unknown family'}) more than the {cost['quant']} budget allows; "
        "the export itself is sound (tensors, tokenizer, chat template and an unquantized export all check out)" + (":" if tables else ""),
        *([table(cost["checks"])] if tables else []),
        "to accept this cost: " + " ".join(setting(m, b) for m, b in cost["accept"].items()),
    ]
    if cost.get("cheapest_within_budget"):
        cheapest = cost["cheapest_within_budget"]
        lines.append(f"or export at {cheapest}, the cheapest larger quant within its budget here ({switch(cheapest)})")
    elif cost.get("larger"):
        lines.append("no larger quant measured within its budget: " + ", ".join(c["quant"] for c in cost["larger"]))
    return "\n".join(lines)


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else "ok" if ok else "BROKEN"


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
    source: Path,
    exported: Path,
    report_dir: Path,
    quant: str | None = None,
    overrides: dict[str, float] | None = None,
    work: Path | None = None,
) -> dict[str, Any]:
    """Load both, measure, and give two verdicts: integrity (is the export broken?) and cost (within the quant's
    budget for this model?). Writes verify.json + verify.png into report_dir; conversions it needs go to `work`."""
    from halo_pipeline import runtimes
    from halo_pipeline.runtimes.formats import export_info

    info = export_info(exported)
    fmt = info["format"]
    quant = quant or info.get("verify_quant") or info.get("quant") or "fp32"
    family = family_of(source)
    budget = budget_for(quant, overrides, fmt, family)
    scratch = work is None
    work = work or Path(tempfile.mkdtemp(prefix="halo-verify-"))
    try:
        # each in its own runtime and its own dtype: a bf16 export is compared as bf16, not upcast
        src_rt = runtimes.load(source, n_ctx=512, dtype="auto")
        exp_rt = runtimes.load(exported, n_ctx=512, dtype="auto")
        found = measure(src_rt, exp_rt)
        exp_name = exp_rt.name
        del exp_rt
        lineage = info.get("verify_quant") or info.get("quant") or "fp32"
        reference = _reference(source, fmt, lineage, found, src_rt, work)
        # tensors are held to their own storage type's bound, and to an earlier lossy step's (a Q8_0 GGUF turned into HF)
        earlier = lineage if lineage != info.get("quant") else "fp32"
        integrity = _integrity(source, exported, fmt, earlier, found, budget, reference)
        cost_rows = judge(found["metrics"], {m: r for m, r in budget.items() if r[2] != "integrity"})
        cost: dict[str, Any] = {
            "ok": all(r["ok"] for r in cost_rows),
            "quant": quant,
            "family": family,
            "checks": cost_rows,
            "accept": {r["metric"]: accepting(r["metric"], r["value"]) for r in cost_rows if not r["ok"]},
        }
        if integrity["ok"] and not cost["ok"]:
            cost["larger"] = _larger(source, fmt, quant, family, overrides, src_rt, reference, work)
            cost["cheapest_within_budget"] = next((c["quant"] for c in cost["larger"] if c["ok"]), None)
    finally:
        if scratch:
            shutil.rmtree(work, ignore_errors=True)
    verdict = "broken" if not integrity["ok"] else "ok" if cost["ok"] else "cost"
    report = {  # content only (no paths, no times): the same source and export give the same bytes
        "format": fmt,
        "quant": quant,
        "family": family,
        "runtimes": {"source": src_rt.name, "export": exp_name},
        "verdict": verdict,
        "passed": verdict == "ok",
        "integrity": integrity,
        "cost": cost,
        "checks": cost_rows,
        **found,
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "verify.json").write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    plot(found["per_text"], report_dir / "verify.png", f"{fmt} {quant} vs source: KL per text")
    return report


def _reference(source: Path, fmt: str, lineage: str, found: dict[str, Any], src_rt: Runtime, work: Path) -> dict[str, Any]:
    """The source exported unquantized in the same format, measured against the source (the export itself when it is one)."""
    from halo_pipeline import runtimes
    from halo_pipeline.export.converting import convert

    if lineage == REFERENCE:
        return {"quant": REFERENCE, "itself": True, "metrics": found["metrics"]}
    target = work / f"reference-{REFERENCE}"
    try:
        if not target.exists():
            convert(source, fmt, REFERENCE, target)
        ref_rt = runtimes.load(target, n_ctx=512, dtype="auto")
    except Exception as exc:  # a source that cannot be converted again (e.g. GGUF -> GGUF): no reference
        return {"quant": REFERENCE, "itself": False, "metrics": None, "reason": f"{type(exc).__name__}: {str(exc)[:300]}"}
    measured = measure(src_rt, ref_rt)
    return {"quant": REFERENCE, "itself": False, "metrics": measured["metrics"], "path": target}


def _integrity(
    source: Path,
    exported: Path,
    fmt: str,
    lineage: str,
    found: dict[str, Any],
    budget: dict[str, tuple[str, float, str]],
    reference: dict[str, Any],
) -> dict[str, Any]:
    from halo_pipeline.export.integrity import check_tensors

    checks: list[dict[str, Any]] = []
    tensors = check_tensors(source, exported, fmt, lineage)
    if tensors["ok"] is None:
        checks.append({"check": "tensors", "ok": None, "evidence": tensors["reason"]})
    elif tensors["failed"]:
        bad = tensors["failed"][0]
        what = (
            bad["how"]
            if bad["error"] is None
            else f"relative error {_short(bad['error'])} > {_short(bad['bound'])} ({bad['type']} bound; {bad['how']})"
        )
        more = f" and {len(tensors['failed']) - 1} more" if len(tensors["failed"]) > 1 else ""
        checks.append({"check": "tensors", "ok": False, "evidence": f"{bad['tensor']}: {what}{more}"})
    else:
        w = tensors["worst"]
        checks.append(
            {
                "check": "tensors",
                "ok": True,
                "evidence": f"{tensors['compared']} tensors within their types' bounds; closest: {w['tensor']} {_short(w['error'])} of {_short(w['bound'])} ({w['type']})",
            }
        )
    m = found["metrics"]
    parity_bound, template_bound = budget["tokenizer_parity"][1], budget["chat_template_preserved"][1]
    failed_cases = [t["text"] for t in found["tokenizer"] if not t["same"]]
    checks.append(
        {
            "check": "tokenizer",
            "ok": m["tokenizer_parity"] >= parity_bound,
            "evidence": f"{sum(t['same'] for t in found['tokenizer'])}/{len(found['tokenizer'])} strings tokenize the same"
            + (f"; first different: {failed_cases[0]!r}" if failed_cases else ""),
        }
    )
    checks.append(
        {
            "check": "chat template",
            "ok": m["chat_template_preserved"] >= template_bound,
            "evidence": "same template, same rendering"
            if m["chat_template_preserved"]
            else "the export's chat template differs or renders differently",
        }
    )
    if reference["metrics"] is None:
        checks.append(
            {"check": f"{REFERENCE} reference", "ok": None, "evidence": f"no unquantized export to compare: {reference['reason']}"}
        )
    else:
        rows = judge(reference["metrics"], {k: v for k, v in thresholds_for(REFERENCE).items() if k in OPS})
        failed = [r for r in rows if not r["ok"]]
        what = "the export itself" if reference["itself"] else f"{fmt} {REFERENCE} export of the source"
        r = reference["metrics"]
        evidence = f"{what}: KL {r['kl_mean']:.2g}, top-1 {r['top1_agreement']:.3g}, ppl ratio {r['ppl_ratio']:.4g}"
        if failed:
            evidence += " — " + ", ".join(f"{x['metric']} {x['value']:.3g} not {x['rule']}" for x in failed)
        checks.append({"check": f"{REFERENCE} reference", "ok": not failed, "evidence": evidence})
    return {
        "ok": all(c["ok"] is not False for c in checks),
        "checks": checks,
        "tensors": {k: v for k, v in tensors.items() if k != "failed"},
        "reference": {k: v for k, v in reference.items() if k != "path"},
    }


def _larger(
    source: Path,
    fmt: str,
    quant: str,
    family: str | None,
    overrides: dict[str, float] | None,
    src_rt: Runtime,
    reference: dict[str, Any],
    work: Path,
) -> list[dict[str, Any]]:
    """Measure the next larger quants in the same format, cheapest first, until one stays within its budget
    (its own defaults for this format and family, and whatever bounds the recipe set)."""
    from halo_pipeline import runtimes
    from halo_pipeline.engine.groups import ladder
    from halo_pipeline.engine.groups import quant as quant_group
    from halo_pipeline.export.converting import convert
    from halo_pipeline.export.formats import pairs

    bits = quant_group(quant).bits
    tried: list[dict[str, Any]] = []
    for candidate in [q for q in ladder() if quant_group(q).bits > bits and (fmt, q) in pairs()]:
        if candidate == REFERENCE and reference["metrics"] is not None:
            metrics = reference["metrics"]
        else:
            try:
                target = work / f"larger-{candidate}"
                convert(source, fmt, candidate, target)
                metrics = measure(src_rt, runtimes.load(target, n_ctx=512, dtype="auto"))["metrics"]
            except Exception as exc:
                tried.append({"quant": candidate, "ok": False, "reason": f"{type(exc).__name__}: {str(exc)[:300]}"})
                break
            finally:
                shutil.rmtree(work / f"larger-{candidate}", ignore_errors=True)
        rows = judge(metrics, {m: r for m, r in budget_for(candidate, overrides, fmt, family).items() if r[2] != "integrity"})
        tried.append({"quant": candidate, "ok": all(r["ok"] for r in rows), "checks": rows})
        if tried[-1]["ok"]:
            break
    return tried


def _short(x: float) -> str:
    """Two significant digits, never a long run of decimals (0.0057, 5.7e-04): evidence is read, not parsed."""
    return f"{x:.2g}" if x == 0 or abs(x) >= 1e-3 else f"{x:.1e}"
