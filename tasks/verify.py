"""verify: is the export broken, and what does quantization cost this model? Two verdicts, or the step fails.

Source and export load in their own runtimes (transformers, llama-cpp-python, mlx-lm) and are
compared on a fixed text set: mean per-token KL divergence of next-token distributions, top-1
agreement, perplexity ratio, greedy exact match and first-token match on fixed prompts, tokenizer
parity on tricky strings, and the chat template. **Integrity** is strict: every tensor within its
type's error bound of the source's, the tokenizer, the template, and an unquantized export of the same
source in the same format matching the source. **Cost** is the drift against the quant's budget for
this model family (conf/quant), overridable with `thresholds`. A broken export and an export over its
budget fail the step with different messages — the latter naming the setting that accepts the cost
and the cheapest larger quant within its budget — so nothing downstream ships either way.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from halo_pipeline.engine.step import Artifact, Params, RunContext, step


class VerifyParams(Params):
    quant: str | None = Field(None, description="Budget to apply (default: the export's own quant lineage).")
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="The cost budget, metric -> bound (kl_mean, top1_agreement, ppl_ratio, first_token_match, "
        "greedy_exact_match), overriding the quant's defaults for this model family.",
    )


def check(params: VerifyParams) -> list[str]:
    from halo_pipeline.engine.groups import quant_names
    from halo_pipeline.export.drift import thresholds_for

    problems = []
    if params.quant is not None and params.quant not in quant_names():
        problems.append(f"unknown quant '{params.quant}'; quants: {', '.join(quant_names())}")
    try:
        thresholds_for(params.quant or "fp32", params.thresholds)
    except ValueError as exc:
        problems.append(str(exc))
    return problems


class ExportDrifted(RuntimeError):
    """The export failed verify: broken, or over its quantization budget."""


class ExportBroken(ExportDrifted):
    """The export does not hold what its source holds (a tensor, the tokenizer, the template, the conversion path)."""


class OverBudget(ExportDrifted):
    """The export is sound, but quantization costs this model more than the budget allows."""


@step(
    inputs={"source": "model", "exported": "model"},
    outputs={"report": "report"},
    version="2",
    libraries=("torch", "transformers", "llama-cpp-python", "mlx-lm", "gguf"),
    check=check,
)
def run(params: VerifyParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    import shutil

    from halo_pipeline.export.drift import explain, integrity_table, table, verify
    from halo_pipeline.training.metrics import inline_image

    report_dir = ctx.path("report")
    work = ctx.path("work")
    try:
        report = verify(inputs["source"].path, inputs["exported"].path, report_dir, params.quant, params.thresholds, work=work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    m = report["metrics"]
    ctx.metrics.update({k: round(v, 6) for k, v in m.items()})
    ctx.metrics.update(passed=report["passed"], integrity_ok=report["integrity"]["ok"], cost_ok=report["cost"]["ok"])
    what = f"{report['format']} {report['quant']} vs source ({report['runtimes']['export']} vs {report['runtimes']['source']})"
    ctx.summary(f"{what}: **{report['verdict']}**\n\nIs the export broken?\n\n{integrity_table(report['integrity']['checks'])}")
    ctx.summary(f"What does quantization cost this model ({report['family']})?\n\n{table(report['checks'])}")
    ctx.summary(inline_image(report_dir / "verify.png"))
    if not report["passed"]:
        (ctx.run_dir / f"{ctx.step_id}.verify.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
        message = explain(report, lambda metric, bound: f"steps.{ctx.step_id}.with.thresholds.{metric}={bound:g}")
        error = ExportBroken if report["verdict"] == "broken" else OverBudget
        raise error(f"{message}\ndownstream steps will not run")
    return {"report": report_dir}
