"""convert: a model to GGUF, MLX or HF at one quant from a single vocabulary.

| quant | gguf | mlx | hf |
|---|---|---|---|
| q4 | Q4_K_M | 4-bit, group 64 | - |
| q8 | Q8_0 | 8-bit, group 64 | - |
| fp16 / bf16 / fp32 | F16 / BF16 / F32 | that dtype | that dtype |

GGUF uses llama.cpp's own `convert_hf_to_gguf.py` and quantizer at the installed llama-cpp-python's
version; MLX uses `mlx_lm.convert`; a GGUF source converts back to HF (dequantized). The output
directory records format, quant, source digest and converter version in `halo_export.json`.
"""

from __future__ import annotations

import shutil
from typing import Any, Literal

from pydantic import Field, model_validator

from halo_pipeline.engine.step import Artifact, Params, RunContext, step


class ConvertParams(Params):
    format: Literal["gguf", "mlx", "hf"] = Field("gguf", description="Target format.")
    quant: str = Field(
        "q8", description="Target quant: a `conf/quant/<name>.yaml` (q4, q8, fp16, bf16, fp32 ship); usually `${quant.name}`."
    )

    @model_validator(mode="after")
    def _supported(self) -> ConvertParams:
        from halo_pipeline.export.formats import pair_problem

        if problem := pair_problem(self.format, self.quant):
            raise ValueError(problem)
        return self


@step(
    inputs={"model": "model"},
    outputs={"model": "model"},
    version="1",
    libraries=("torch", "transformers", "llama-cpp-python", "mlx-lm"),
)
def run(params: ConvertParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    from halo_pipeline.export.converting import convert

    out = ctx.path("model")
    work = ctx.path("work")
    record = convert(inputs["model"].path, params.format, params.quant, out, work=work)
    if (work / "convert.log").is_file():
        shutil.move(work / "convert.log", ctx.path("convert.log"))
    shutil.rmtree(work)
    ctx.meta["model"] = {k: record[k] for k in ("format", "quant", "source_digest", "converter")}
    ctx.metrics.update({"seconds": record["seconds"], "peak_rss_mb": record.get("peak_rss_mb")})
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    ctx.summary(f"{params.format} {params.quant}: {size_mb:.1f} MB in {record['seconds']} s ({record['converter']})")
    for note in record.get("notes", []):
        ctx.summary(f"note: {note}")
    return {"model": out}
