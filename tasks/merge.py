"""merge: bake a trained adapter into its base model, or combine several adapters into one.

`mode: bake` (default) runs PEFT's `merge_and_unload` on the base loaded in its own dtype (or `dtype`)
and writes a standard HF directory with tokenizer, chat template, generation config and
`halo_merge.json` (base, adapters, method). An MLX adapter (backend=mlx training) is fused by mlx-lm.
`mode: combine` merges the connected adapters (`adapter`, `adapter_2`, ... `adapter_8`) with peft's
`add_weighted_adapter` (`method`: linear, ties, dare_linear, dare_ties, magnitude_prune; `weights`,
`density`) into one adapter, or into a merged model with `bake_after_merge: true`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from halo_pipeline.engine.groups import ModelRef
from halo_pipeline.engine.step import Artifact, Params, RunContext, TypeByParam, step

EXTRA_INPUTS = tuple(f"adapter_{i}" for i in range(2, 9))


class MergeParams(Params):
    model: ModelRef = Field(
        default_factory=lambda: ModelRef.model_validate("tiny"), description="The adapters' base model; usually `${model}`."
    )
    mode: Literal["bake", "combine"] = Field("bake", description="bake: one adapter into the base; combine: N adapters into one.")
    method: Literal["linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"] = Field(
        "dare_ties", description="combine: peft's combination_type."
    )
    weights: list[float] | None = Field(None, description="combine: one weight per connected adapter (default: equal).")
    density: float | None = Field(
        None, gt=0, le=1, description="combine: fraction of weights kept by ties/dare/magnitude_prune (peft default 0.5)."
    )
    majority_sign_method: Literal["total", "frequency"] = Field(
        "total", description="combine with ties/dare_ties: how the sign is elected."
    )
    bake_after_merge: bool = Field(False, description="combine: bake the combined adapter into the base (output: model).")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="Dtype the base is loaded and saved in (auto: the base's own)."
    )
    seed: int = Field(0, description="combine with dare_linear/dare_ties: seed of the random drop masks (same seed, same merge).")

    @model_validator(mode="after")
    def _consistent(self) -> MergeParams:
        if self.mode == "bake" and (self.weights or self.bake_after_merge):
            raise ValueError("weights and bake_after_merge belong to mode: combine")
        if self.method == "linear" and self.density is not None:
            raise ValueError("density does nothing with method: linear (ties, dare_*, magnitude_prune use it)")
        return self

    @property
    def output_kind(self) -> str:
        return "adapter" if self.mode == "combine" and not self.bake_after_merge else "model"


def check(params: MergeParams) -> list[Any]:
    from halo_pipeline.runtimes.catalog import check_reference

    return [("model", p) for p in check_reference(params.model)]


def fingerprint(params: MergeParams) -> dict[str, Any]:
    from halo_pipeline.runtimes.catalog import fingerprint as model_fingerprint

    return {"base": model_fingerprint(params.model)}


@step(
    inputs={"adapter": "adapter", **{name: "adapter" for name in EXTRA_INPUTS}},
    optional_inputs=EXTRA_INPUTS,
    outputs={"model": TypeByParam("output_kind", {"model": "model", "adapter": "adapter"})},
    version="1",
    libraries=("torch", "transformers", "peft", "mlx-lm"),
    check=check,
    fingerprint=fingerprint,
)
def run(params: MergeParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    from halo_pipeline.export.merging import bake, combine
    from halo_pipeline.runtimes.catalog import resolve

    base = resolve(params.model)
    adapters = [inputs[name].path for name in ("adapter", *EXTRA_INPUTS) if name in inputs]
    out = ctx.path("model")
    if params.mode == "bake":
        if len(adapters) > 1:
            raise ValueError(f"mode: bake takes one adapter, {len(adapters)} are connected; use mode: combine")
        provenance = bake(base, adapters[0], out, params.dtype)
    else:
        if len(adapters) < 2:
            raise ValueError("mode: combine needs at least two adapters: connect adapter and adapter_2 (..adapter_8)")
        weights = params.weights or [1.0 / len(adapters)] * len(adapters)
        provenance = combine(
            base, adapters, weights, out, params.method, params.density, params.majority_sign_method, params.bake_after_merge, params.dtype,
            params.seed,
        )  # fmt: skip
    ctx.meta["model"] = {"format": "hf", "base": base.name, "merge": provenance}
    ctx.summary(
        f"{params.mode}: {len(adapters)} adapter(s) -> {params.output_kind} ({provenance.get('method')}, {provenance.get('dtype', 'mlx')})"
    )
    return {"model": out}
