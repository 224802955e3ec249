"""`halo-pipeline verifiers`: list verifiers with their settings, or score a JSONL of samples outside any recipe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from halo_pipeline.errors import Issue, RecipeError
from halo_pipeline.verifiers import UnknownVerifier, build_verifier, registry


def list_verifiers(console: Any) -> int:
    from rich.table import Table

    from halo_pipeline.docs import _type_name

    table = Table(box=None, pad_edge=False)
    for col in ("verifier", "what it rewards", "settings"):
        table.add_column(col, overflow="fold")
    for name, reg in sorted(registry().items()):
        settings = [
            f"{f}: {_type_name(field.annotation)} = {field.get_default(call_default_factory=True)!r}"
            for f, field in reg.settings.model_fields.items()
            if f != "name"
        ]
        table.add_row(name, reg.doc.splitlines()[0] if reg.doc else "", "\n".join(settings))
    console.print(table)
    return 0


def run_verifier(name: str, input_path: Path, output: Path | None, sets: list[str], console: Any) -> int:
    spec: dict[str, Any] = {"name": name}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise RecipeError([Issue(f"--set takes KEY=VALUE, got '{item}'")])
        spec[key] = yaml.safe_load(value)
    try:
        verifier = build_verifier(spec)
    except UnknownVerifier as exc:
        raise RecipeError([Issue(str(exc), hint="halo-pipeline verifiers lists them")]) from None
    samples = []
    for lineno, line in enumerate(input_path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                samples.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise RecipeError([Issue(f"not valid JSON: {exc.msg}", file=str(input_path), line=lineno, col=exc.colno)]) from None
    results = verifier.verify_batch(samples)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            for sample, r in zip(samples, results, strict=True):
                f.write(json.dumps({**sample, "reward": r.reward, "passed": r.passed, "details": r.details, "error": r.error}) + "\n")
    n = len(results)
    passed = sum(r.passed for r in results)
    errors = sum(r.error is not None for r in results)
    mean = sum(r.reward for r in results) / n if n else 0.0
    console.print(f"{verifier.name}: {n} samples, mean reward {mean:.3f}, passed {passed}/{n}, errors {errors}")
    return 0
