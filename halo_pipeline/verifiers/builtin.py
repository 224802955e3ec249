"""Simple built-in verifiers (no model-written code runs): python_syntax, regex_format, exact_match."""

from __future__ import annotations

import ast
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from halo_pipeline.verifiers import VerifierSettings, VerifyResult, register_verifier


def _code(text: str) -> str:
    from halo_pipeline.verifiers.code import extract_code

    return extract_code(text, ("python", "py"))


class PythonSyntaxSettings(VerifierSettings):
    with_prompt: bool = Field(True, description="Parse prompt + completion (HumanEval completions continue the prompt).")


@register_verifier("python_syntax", PythonSyntaxSettings)
def python_syntax(settings: PythonSyntaxSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """Reward 1 when the completion parses as Python (nothing is executed); 0 otherwise or when empty."""
    completion = _code(str(sample.get("completion", "")))
    if not completion.strip():
        return VerifyResult(0.0, False, {"reason": "empty"})
    candidates = [completion]
    if settings.with_prompt and sample.get("prompt"):
        candidates.insert(0, str(sample["prompt"]) + completion)
    for source in candidates:
        try:
            ast.parse(source)
            return VerifyResult(1.0, True, {"parsed": "prompt+completion" if source is not completion else "completion"})
        except (SyntaxError, ValueError):
            continue
    return VerifyResult(0.0, False, {"reason": "syntax error"})


class RegexSettings(VerifierSettings):
    pattern: str = Field(..., description="Regular expression the completion must match (re.search).")
    fullmatch: bool = Field(False, description="Require the whole completion to match.")


@register_verifier("regex_format", RegexSettings)
def regex_format(settings: RegexSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """Reward 1 when the completion matches `pattern`, else 0."""
    text = str(sample.get("completion", ""))
    ok = bool(re.fullmatch(settings.pattern, text, re.DOTALL) if settings.fullmatch else re.search(settings.pattern, text))
    return VerifyResult(1.0 if ok else 0.0, ok)


class ExactMatchSettings(VerifierSettings):
    answer_field: str = Field("answer", description="Sample field holding the reference answer.")
    normalize: bool = Field(True, description="Compare case-, whitespace- and Unicode-insensitively.")


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


@register_verifier("exact_match", ExactMatchSettings)
def exact_match(settings: ExactMatchSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """Reward 1 when the completion equals the reference answer, else 0; an error when there is no answer."""
    if settings.answer_field not in sample:
        return VerifyResult(0.0, False, {}, f"sample has no '{settings.answer_field}' field")
    got, want = str(sample.get("completion", "")), str(sample[settings.answer_field])
    ok = _norm(got) == _norm(want) if settings.normalize else got == want
    return VerifyResult(1.0 if ok else 0.0, ok)
