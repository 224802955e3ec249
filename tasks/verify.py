"""verify: prove an export computes what its source computes, or fail the step.

Source and export load in their own runtimes (transformers, llama-cpp-python, mlx-lm) and are
compared on a fixed text set: mean per-token KL divergence of next-token distributions, top-1
agreement, perplexity ratio, greedy exact match and first-token match on fixed prompts, tokenizer
parity on tricky strings, and the chat template. Thresholds are per quant (the export's lineage),
overridable with `thresholds`; a breach fails the step with a table, so nothing downstream ships.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from halo_pipeline.engine.step import Artifact, Params, RunContext, step


class VerifyParams(Params):
    quant: str | None = Field(None, description="Thresholds to apply (default: the export's own quant lineage).")
    thresholds: dict[str, float] = Field(default_factory=dict, description="metric -> bound, overriding the quant's defaults.")


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
    """The export's numbers broke a threshold."""


@step(
    inputs={"source": "model", "exported": "model"},
    outputs={"report": "report"},
    version="1",
    libraries=("torch", "transformers", "llama-cpp-python", "mlx-lm"),
    check=check,
)
def run(params: VerifyParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    from halo_pipeline.export.drift import table, verify
    from halo_pipeline.training.metrics import inline_image

    report_dir = ctx.path("report")
    report = verify(inputs["source"].path, inputs["exported"].path, report_dir, params.quant, params.thresholds)
    m = report["metrics"]
    ctx.metrics.update({k: round(v, 6) for k, v in m.items()})
    ctx.metrics["passed"] = report["passed"]
    checks = table(report["checks"])
    ctx.summary(
        f"{report['format']} {report['quant']} vs source ({report['runtimes']['export']} vs {report['runtimes']['source']}):\n\n{checks}"
    )
    ctx.summary(inline_image(report_dir / "verify.png"))
    if not report["passed"]:
        (ctx.run_dir / f"{ctx.step_id}.verify.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
        raise ExportDrifted(f"the export drifted from its source; downstream steps will not run:\n{checks}")
    return {"report": report_dir}
