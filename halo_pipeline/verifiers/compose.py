"""Composite verifiers: `all_of` (every part must pass) and `weighted` (a weighted mean of parts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, model_validator

from halo_pipeline.verifiers import Verifier, VerifierSettings, VerifyResult, build_verifier, register_verifier


class CompositeSettings(VerifierSettings):
    verifiers: list[str | dict[str, Any]] = Field(..., min_length=1, description="Parts: names or {name: ..., settings} mappings.")
    allow_code_execution: bool = Field(False, description="Passed to parts that run code (unless a part sets it itself).")

    def parts(self) -> list[Verifier]:
        built = []
        for spec in self.verifiers:
            data = {"name": spec} if isinstance(spec, str) else dict(spec)
            verifier = build_verifier(data)
            if verifier.reg.executes_code and "allow_code_execution" not in data:
                verifier = build_verifier({**data, "allow_code_execution": self.allow_code_execution})
            built.append(verifier)
        return built


class WeightedSettings(CompositeSettings):
    weights: list[float] | None = Field(None, description="One weight per part (default: equal).")

    @model_validator(mode="after")
    def _weights_match(self) -> WeightedSettings:
        if self.weights is not None and (len(self.weights) != len(self.verifiers) or sum(self.weights) <= 0 or min(self.weights) < 0):
            raise ValueError(f"weights needs {len(self.verifiers)} non-negative numbers with a positive sum, one per part")
        return self


def _run_parts(settings: CompositeSettings, sample: Mapping[str, Any]) -> list[tuple[Verifier, VerifyResult]]:
    return [(v, v.verify(sample)) for v in settings.parts()]


def _details(results: list[tuple[Verifier, VerifyResult]]) -> dict[str, Any]:
    return {"parts": [{"verifier": v.name, "reward": r.reward, "passed": r.passed, "error": r.error} for v, r in results]}


@register_verifier("all_of", CompositeSettings)
def all_of(settings: CompositeSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """Passes only when every part passes; reward = the lowest part reward (graduated: a near miss keeps its partial credit)."""
    results = _run_parts(settings, sample)
    errors = [f"{v.name}: {r.error}" for v, r in results if r.error]
    return VerifyResult(min(r.reward for _, r in results), all(r.passed for _, r in results), _details(results), "; ".join(errors) or None)


@register_verifier("weighted", WeightedSettings)
def weighted(settings: WeightedSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """Weighted mean of the parts' rewards (equal weights by default); passes when the mean reaches pass_threshold."""
    results = _run_parts(settings, sample)
    weights = settings.weights or [1.0] * len(results)
    reward = sum(w * r.reward for w, (_, r) in zip(weights, results, strict=True)) / sum(weights)
    errors = [f"{v.name}: {r.error}" for v, r in results if r.error]
    return VerifyResult(reward, reward >= settings.pass_threshold, _details(results), "; ".join(errors) or None)
