"""`halo-pipeline verifiers`: list verifiers with their settings, or score a JSONL of samples outside any recipe."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from halo_pipeline.cli import common
from halo_pipeline.engine.errors import Issue, RecipeError


def list_verifiers(console: Any) -> int:
    from rich.table import Table

    from halo_pipeline.verifiers import registry
    from halo_pipeline.views.reference import _type_name

    table = Table(box=None, pad_edge=False)
    for col in ("verifier", "what it rewards", "settings"):
        table.add_column(col, overflow="fold")
    for name, reg in sorted(registry().items()):
        settings = [
            f"{f}: {_type_name(field.annotation)}"
            + (" (required)" if field.is_required() else f" = {field.get_default(call_default_factory=True)!r}")
            for f, field in reg.settings.model_fields.items()
            if f != "name"
        ]
        doc = " ".join(reg.doc.split()) + (" [runs code: sandboxed, needs allow_code_execution]" if reg.executes_code else "")
        table.add_row(name, doc, "\n".join(settings))
    console.print(table)
    return 0


def run_verifier(
    name: str, input_path: Path, output: Path | None, sets: list[str], console: Any, allow_code: bool = False, sandbox: str | None = None
) -> int:
    from halo_pipeline.verifiers import UnknownVerifier, build_verifier, lookup, problems

    spec: dict[str, Any] = {"name": name}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise RecipeError([Issue(f"--set takes KEY=VALUE, got '{item}'")])
        spec[key] = yaml.safe_load(value)
    from halo_pipeline.engine.registry import importable, search_path_hint

    importable(Path.cwd())  # `my_pkg.verifiers:fn` from the working directory, as for a recipe's `uses:`
    try:
        fields = lookup(str(spec["name"])).settings.model_fields
        if allow_code and "allow_code_execution" in fields:
            spec["allow_code_execution"] = True
        if sandbox and "sandbox" in fields:
            spec["sandbox"] = sandbox  # e.g. rlimits: the explicit opt-down when bubblewrap is unavailable
        verifier = build_verifier(spec)
    except UnknownVerifier as exc:
        raise RecipeError([Issue(str(exc), hint="halo-pipeline verifiers lists them")]) from None
    except ImportError as exc:
        raise RecipeError([Issue(f"cannot import the verifier '{spec['name']}' ({exc})", hint=search_path_hint())]) from None
    if verifier.reg.executes_code and not verifier.executes_code:
        raise RecipeError(
            [Issue(f"verifier '{verifier.name}' runs the completions as code, which is off by default", hint="add --allow-code-execution")]
        )
    if found := problems(verifier):
        raise RecipeError([Issue(p) for p in found])
    if not input_path.is_file():
        raise RecipeError([Issue(f"input file '{input_path}' does not exist", hint="--input takes a JSONL file of samples")])
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
    if verifier.executes_code:
        import halo_pipeline.sandbox as sandboxing

        facts = sandboxing.describe(getattr(verifier.settings, "sandbox", None))
        console.print(f"isolation: {facts['isolation']}" + (f" [yellow]warning: {facts['warning']}[/yellow]" if facts["warning"] else ""))
    for sample, r in list(zip(samples, results, strict=True))[:5]:
        if r.error:
            console.print(f"  {sample.get('id', sample.get('task_id', '?'))}: {r.error}")
    return 0


def add_parser(sub: Any) -> None:
    vf = sub.add_parser("verifiers", help="list verifiers, or score a JSONL of samples with one (verifiers run NAME --input F)")
    vf.add_argument("action", nargs="?", choices=["ls", "run"], default="ls")
    vf.add_argument("name", nargs="?")
    vf.add_argument("--input", help="JSONL of samples: prompt, completion and the task's fields")
    vf.add_argument("--output", help="write each sample with its reward, passed, details and error")
    vf.add_argument("--set", action="append", metavar="KEY=VALUE", help="a verifier setting (repeatable)")
    vf.add_argument("--allow-code-execution", action="store_true", help="let code verifiers run the completions (sandboxed)")
    vf.add_argument(
        "--sandbox",
        choices=["bubblewrap", "rlimits"],
        help="isolation for code verifiers: bubblewrap (default, required) or rlimits (explicitly weaker: no file-system or network isolation)",
    )
    vf.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "run":
        if not args.name or not args.input:
            raise RecipeError(
                [
                    Issue(
                        "verifiers run needs NAME and --input samples.jsonl",
                        hint="halo-pipeline verifiers run python_syntax --input s.jsonl",
                    )
                ]
            )
        output = Path(args.output) if args.output else None
        return run_verifier(args.name, Path(args.input), output, args.set or [], common.console(), args.allow_code_execution, args.sandbox)
    return list_verifiers(common.console())
