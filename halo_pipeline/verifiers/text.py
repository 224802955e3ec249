"""Format and reference verifiers: json_schema, json_structure, json_fields, numeric, bleu, rouge, chrf.

None of them run model-written code. Reference metrics use maintained libraries (sacrebleu,
rouge-score) rather than hand-written scores.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, Literal

from pydantic import Field

from halo_pipeline.verifiers import VerifierSettings, VerifyResult, register_verifier
from halo_pipeline.verifiers.code import extract_code


def _json_value(text: str) -> tuple[Any, str | None]:
    """The completion's JSON: the whole text, a fenced block, or the first {...}/[...] span."""
    candidates = [text.strip(), extract_code(text, ("json",)).strip()]
    match = re.search(r"[\[{].*[\]}]", text, re.DOTALL)
    if match:
        candidates.append(match.group(0))
    last = "empty completion"
    for candidate in candidates:
        if not candidate:
            continue
        try:
            return json.loads(candidate), None
        except json.JSONDecodeError as exc:
            last = f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    return None, last


class JsonSchemaSettings(VerifierSettings):
    json_schema: dict[str, Any] | None = Field(
        None, description="JSON Schema every completion must satisfy (default: the sample's `schema`)."
    )
    schema_field: str = Field("schema", description="Sample field holding a per-sample schema.")


def _check_schema(settings: JsonSchemaSettings) -> list[str]:
    if settings.json_schema is None:
        return []
    import jsonschema

    try:
        jsonschema.validators.validator_for(settings.json_schema).check_schema(settings.json_schema)
    except jsonschema.SchemaError as exc:
        return [f"json_schema is not a valid JSON Schema: {exc.message}"]
    return []


@register_verifier("json_schema", JsonSchemaSettings, check=_check_schema)
def json_schema(settings: JsonSchemaSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """1.0 when the completion is JSON valid against the schema; partial credit 0.5 x (1 - errors/checked
    keywords) for JSON that breaks some rules; 0 for text that is not JSON."""
    import jsonschema

    schema = settings.json_schema or sample.get(settings.schema_field)
    if isinstance(schema, str):
        schema = json.loads(schema)
    if not isinstance(schema, Mapping):
        return VerifyResult(0.0, False, {}, f"no schema: set json_schema or give samples a `{settings.schema_field}` field")
    value, error = _json_value(str(sample.get("completion", "")))
    if error:
        return VerifyResult(0.0, False, {"reason": error})
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
    if not errors:
        return VerifyResult(1.0, True, {"valid": True})
    rules = max(1, sum(1 for _ in _keywords(schema)))
    messages = [f"{'/'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors[:5]]
    return VerifyResult(0.5 * max(0.0, 1 - len(errors) / rules), False, {"valid": False, "errors": messages})


def _keywords(schema: Any) -> Any:
    if isinstance(schema, Mapping):
        for key, value in schema.items():
            if key not in ("description", "title", "$schema", "$id", "examples", "default"):
                yield key
            yield from _keywords(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _keywords(item)


class JsonStructureSettings(VerifierSettings):
    required_keys: list[str] = Field(default_factory=list, description="Keys the top-level object must have (dotted paths reach inside).")
    root: Literal["any", "object", "array"] = Field("object", description="Required type of the top-level value.")


@register_verifier("json_structure", JsonStructureSettings)
def json_structure(settings: JsonStructureSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """Graduated: 0.5 for parseable JSON of the right root type, plus 0.5 x the fraction of required keys present
    (1.0 when there are none to check)."""
    value, error = _json_value(str(sample.get("completion", "")))
    if error:
        return VerifyResult(0.0, False, {"reason": error})
    kind = "object" if isinstance(value, dict) else "array" if isinstance(value, list) else "scalar"
    if settings.root != "any" and kind != settings.root:
        return VerifyResult(0.25, False, {"reason": f"top level is a {kind}, expected {settings.root}"})
    if not settings.required_keys:
        return VerifyResult(1.0, True, {"root": kind})
    missing = [k for k in settings.required_keys if not _has_path(value, k.split("."))]
    reward = 0.5 + 0.5 * (1 - len(missing) / len(settings.required_keys))
    return VerifyResult(reward, not missing, {"missing": missing})


def _has_path(value: Any, path: list[str]) -> bool:
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return False
        value = value[part]
    return True


class JsonFieldsSettings(VerifierSettings):
    answer_field: str = Field("reference", description="Sample field holding the reference record (JSON text or an object).")
    json_schema: dict[str, Any] | None = Field(
        None, description="A JSON Schema the record must also satisfy (default: none; the reference's fields are the check)."
    )


def _check_fields_schema(settings: JsonFieldsSettings) -> list[str]:
    return _check_schema(JsonSchemaSettings(name="json_schema", json_schema=settings.json_schema))


@register_verifier("json_fields", JsonFieldsSettings, check=_check_fields_schema)
def json_fields(settings: JsonFieldsSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """Field-level accuracy of a JSON record against the reference record, graduated: the share of the reference's
    fields (leaves, nested objects walked: `ship_to.city`) the completion has with an equal value, less credit for
    each field the reference does not have (correct / (reference fields + extra fields)). Passed only for the exact
    record — every field right, none missing or extra — valid against `json_schema` when one is set. Strings compare
    after trimming; numbers by value (2 == 2.0), never as strings ("2" != 2). Details: the fields wrong, missing and
    extra, and per-sample `metrics` (valid_json, field_accuracy) that probe averages beside pass@1 (the exact records)."""
    reference = sample.get(settings.answer_field)
    if isinstance(reference, str):
        try:
            reference = json.loads(reference)
        except json.JSONDecodeError:
            return VerifyResult(0.0, False, {}, f"the sample's `{settings.answer_field}` is not JSON")
    if not isinstance(reference, Mapping):
        return VerifyResult(0.0, False, {}, f"no reference record: give samples a `{settings.answer_field}` object")
    want = dict(_leaves(reference))
    value, error = _json_value(str(sample.get("completion", "")))
    if error or not isinstance(value, Mapping):
        reason = error or f"the JSON is a {type(value).__name__}, not an object"
        return VerifyResult(0.0, False, {"reason": reason, "metrics": {"valid_json": 0.0, "field_accuracy": 0.0}})
    got = dict(_leaves(value))
    right = [k for k in want if k in got and _same(got[k], want[k])]
    wrong = sorted(k for k in want if k in got and k not in right)
    missing = sorted(k for k in want if k not in got)
    extra = sorted(k for k in got if k not in want)
    accuracy = len(right) / max(1, len(want) + len(extra))
    schema_errors: list[str] = []
    if settings.json_schema is not None:
        import jsonschema

        validator = jsonschema.validators.validator_for(settings.json_schema)(settings.json_schema)
        schema_errors = [e.message for e in validator.iter_errors(value)][:3]
    exact = not (wrong or missing or extra or schema_errors)
    details = {
        "wrong": wrong, "missing": missing, "extra": extra, **({"schema_errors": schema_errors} if schema_errors else {}),
        "metrics": {"valid_json": 1.0, "field_accuracy": round(accuracy, 6)},
    }  # fmt: skip
    return VerifyResult(1.0 if exact else min(accuracy, 0.99), exact, details)


def _leaves(value: Mapping[str, Any], prefix: str = "") -> Any:
    for key, item in value.items():
        path = f"{prefix}{key}"
        if isinstance(item, Mapping) and item:
            yield from _leaves(item, path + ".")
        else:
            yield path, item


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, int | float) and isinstance(got, int | float):
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(want, str) and isinstance(got, str):
        return got.strip() == want.strip()
    return bool(got == want)


class NumericSettings(VerifierSettings):
    answer_field: str = Field("answer", description="Sample field holding the reference answer.")
    rel_tol: float = Field(1e-6, ge=0, description="Relative tolerance.")
    abs_tol: float = Field(1e-9, ge=0, description="Absolute tolerance.")


NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+"


def parse_number(text: str) -> float | None:
    """The final answer in a math completion: \\boxed{...}, then `answer is/####/=`, then the last number;
    handles 1,234 / fractions 3/4 / percentages / LaTeX \\frac{a}{b}."""
    text = str(text)
    boxed = re.findall(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}", text)
    for scope in ([boxed[-1]] if boxed else []) + _answer_spans(text) + [text]:
        value = _last_number(scope)
        if value is not None:
            return value
    return None


def _answer_spans(text: str) -> list[str]:
    match = re.search(r"(?:####|final answer(?: is)?:?|answer(?: is)?:?)\s*([^\n]*)", text, re.IGNORECASE)
    return [match.group(1)] if match else []


def _last_number(text: str) -> float | None:
    frac = re.findall(r"\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}", text)
    if frac:
        num, den = frac[-1]
        return float(Fraction(int(num), int(den))) if int(den) else None
    found = re.findall(rf"({NUMBER})\s*/\s*({NUMBER})|({NUMBER})\s*(%)?", text)
    if not found:
        return None
    num, den, single, percent = found[-1]
    try:
        if num:
            d = float(den.replace(",", ""))
            return float(num.replace(",", "")) / d if d else None
        value = float(single.replace(",", ""))
    except ValueError:
        return None
    return value / 100 if percent else value


@register_verifier("numeric", NumericSettings)
def numeric(settings: NumericSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """1.0 when the completion's final number equals the reference within tolerance, else 0; an error when
    either has no number."""
    if settings.answer_field not in sample:
        return VerifyResult(0.0, False, {}, f"sample has no '{settings.answer_field}' field")
    want = parse_number(str(sample[settings.answer_field]))
    if want is None:
        return VerifyResult(0.0, False, {}, f"reference '{sample[settings.answer_field]}' has no number")
    got = parse_number(str(sample.get("completion", "")))
    if got is None:
        return VerifyResult(0.0, False, {"expected": want, "reason": "no number in the completion"})
    ok = math.isclose(got, want, rel_tol=settings.rel_tol, abs_tol=settings.abs_tol)
    return VerifyResult(1.0 if ok else 0.0, ok, {"got": got, "expected": want})


class ReferenceSettings(VerifierSettings):
    reference_field: str = Field("reference", description="Sample field with the reference text (a string or a list of strings).")
    pass_threshold: float = Field(0.5, ge=0, le=1, description="Score at or above which a sample counts as passed.")


def _references(settings: ReferenceSettings, sample: Mapping[str, Any]) -> list[str] | None:
    refs = sample.get(settings.reference_field, sample.get("answer"))
    if refs is None:
        return None
    return [str(r) for r in refs] if isinstance(refs, list) else [str(refs)]


def _no_reference(settings: ReferenceSettings) -> VerifyResult:
    return VerifyResult(0.0, False, {}, f"sample has no '{settings.reference_field}' field")


def _sacrebleu(settings: ReferenceSettings, sample: Mapping[str, Any], metric: Literal["bleu", "chrf"]) -> VerifyResult:
    import sacrebleu

    refs = _references(settings, sample)
    if refs is None:
        return _no_reference(settings)
    scorer = sacrebleu.sentence_bleu if metric == "bleu" else sacrebleu.sentence_chrf
    score = scorer(str(sample.get("completion", "")), refs).score / 100
    return VerifyResult(score, True, {metric: round(score * 100, 2)})


@register_verifier("bleu", ReferenceSettings)
def bleu(settings: ReferenceSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """sacrebleu sentence BLEU against the reference(s), scaled to [0, 1] (graduated)."""
    return _sacrebleu(settings, sample, "bleu")


@register_verifier("chrf", ReferenceSettings)
def chrf(settings: ReferenceSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """sacrebleu sentence chrF against the reference(s), scaled to [0, 1] (graduated)."""
    return _sacrebleu(settings, sample, "chrf")


class RougeSettings(ReferenceSettings):
    rouge_type: Literal["rouge1", "rouge2", "rougeL", "rougeLsum"] = Field("rougeL", description="ROUGE variant (F-measure).")


@register_verifier("rouge", RougeSettings)
def rouge(settings: RougeSettings, sample: Mapping[str, Any]) -> VerifyResult:
    """rouge-score F-measure (best over references), in [0, 1] (graduated)."""
    from rouge_score import rouge_scorer

    refs = _references(settings, sample)
    if refs is None:
        return _no_reference(settings)
    scorer = rouge_scorer.RougeScorer([settings.rouge_type], use_stemmer=True)
    completion = str(sample.get("completion", ""))
    score = max(scorer.score(ref, completion)[settings.rouge_type].fmeasure for ref in refs)
    return VerifyResult(score, True, {settings.rouge_type: round(score, 4)})
