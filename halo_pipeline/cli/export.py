"""`halo-pipeline merge | convert | verify`: the export steps as standalone commands (same code as the steps)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from halo_pipeline.engine.errors import Issue, RecipeError


def _model_path(ref: str, flag: str) -> Path:
    """A local model path as given, else a catalog name / GGUF resolved like a recipe's `model`."""
    from halo_pipeline.runtimes.catalog import ModelNotFound, check_reference, resolve
    from halo_pipeline.runtimes.formats import export_info

    path = Path(ref).expanduser()
    if path.exists() and export_info(path)["format"] != "unknown":
        return path
    if problems := check_reference(ref):
        raise RecipeError(
            [Issue(f"{flag} {ref}: {p}", hint=f"{flag} takes a model directory, a .gguf file or a catalog name") for p in problems]
        )
    try:
        return resolve(ref)
    except ModelNotFound as exc:
        raise RecipeError([Issue(f"{flag} {ref}: {exc}")]) from None


def _fresh_output(out: str) -> Path:
    path = Path(out)
    if path.exists() and any(path.iterdir() if path.is_dir() else [path]):
        raise RecipeError([Issue(f"--output {out} exists and is not empty", hint="choose a new directory; nothing is overwritten")])
    return path


def cmd_merge(args: argparse.Namespace, console: Any) -> int:
    from halo_pipeline.export.merging import bake, combine

    base = _model_path(args.base, "--base")
    out = _fresh_output(args.output)
    if args.mode == "bake":
        if not args.adapter:
            raise RecipeError(
                [Issue("merge --mode bake needs --adapter", hint="halo-pipeline merge --mode bake --base M --adapter A --output OUT")]
            )
        provenance = bake(base, Path(args.adapter), out, args.dtype)
    else:
        adapters = [Path(a) for a in (args.adapters or "").split(",") if a]
        if len(adapters) < 2:
            raise RecipeError([Issue("merge --mode combine needs --adapters a,b[,c...] (two or more)")])
        weights = [float(w) for w in args.weights.split(",")] if args.weights else [1.0 / len(adapters)] * len(adapters)
        try:
            provenance = combine(
                base,
                adapters,
                weights,
                out,
                args.method,
                args.density,
                bake_after_merge=args.bake_after_merge,
                dtype=args.dtype,
                seed=args.seed,
            )
        except ValueError as exc:
            raise RecipeError([Issue(str(exc))]) from None
    console.print(f"merged ({provenance['method']}) -> {out}")
    return 0


def cmd_convert(args: argparse.Namespace, console: Any) -> int:
    from halo_pipeline.export.formats import pair_problem, table_rows

    if args.list:
        from rich.table import Table

        table = Table("format", "quant", "becomes", box=None, pad_edge=False)
        for row in table_rows():
            table.add_row(*row)
        console.print(table)
        return 0
    missing = [f for f in ("source", "format", "quant", "output") if not getattr(args, f)]
    if missing:
        raise RecipeError(
            [
                Issue(
                    f"convert needs --{', --'.join(missing)}", hint="halo-pipeline convert --source M --format gguf --quant q8 --output OUT"
                )
            ]
        )
    if problem := pair_problem(args.format, args.quant):
        raise RecipeError([Issue(problem, hint="halo-pipeline convert --list shows every pair")])
    from halo_pipeline.export.converting import convert

    source = _model_path(args.source, "--source")
    out = _fresh_output(args.output)
    single_file = args.format == "gguf" and out.suffix == ".gguf"  # like llama.cpp's --outfile: one file, not a directory
    with console.status(f"converting to {args.format} {args.quant}..."):
        if single_file:
            record = convert_to_file(source, args.quant, out)
        else:
            record = convert(source, args.format, args.quant, out)
    console.print(f"{args.format} {args.quant} -> {out} in {record['seconds']} s ({record['converter']})")
    for note in record.get("notes", []):
        console.print(f"[yellow]note:[/yellow] {note}")
    if args.verify:
        # the report goes beside what it describes: in the export this command wrote, or next to its one file
        return _verify(source, out, _fresh_report_dir(out, out.parent) if single_file else out / "verify", None, {}, console)
    return 0


def convert_to_file(source: Path, quant: str, out: Path) -> dict[str, Any]:
    """A single GGUF file at `out`, its export record beside it (`<out>.halo_export.json`)."""
    import shutil
    import tempfile

    from halo_pipeline.export.converting import convert
    from halo_pipeline.runtimes.formats import EXPORT_FILE, gguf_file

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        record = convert(source, "gguf", quant, Path(tmp) / "model")
        made = gguf_file(Path(tmp) / "model")
        assert made is not None
        shutil.move(str(Path(tmp) / "model" / EXPORT_FILE), str(out.with_name(out.name + "." + EXPORT_FILE)))
        shutil.move(str(made), str(out))
    return record


def cmd_verify(args: argparse.Namespace, console: Any) -> int:
    source = _model_path(args.source, "--source")
    exported = Path(args.exported)
    if not exported.exists():
        raise RecipeError([Issue(f"--exported {exported} does not exist")])
    thresholds = {}
    for item in args.threshold or []:
        metric, sep, value = item.partition("=")
        if not sep:
            raise RecipeError([Issue(f"--threshold takes METRIC=VALUE, got '{item}'")])
        thresholds[metric] = float(value)
    report_dir = Path(args.report) if args.report else _fresh_report_dir(exported)
    return _verify(source, exported, report_dir, args.quant, thresholds, console)


def _fresh_report_dir(exported: Path, where: Path | None = None) -> Path:
    """`verify-<name>[-N]` in `where` (default: the working directory, since an export given to `verify` may be a
    cache entry or someone's input, which is never written into)."""
    where = where or Path.cwd()
    name = exported.name if exported.name not in ("model", "") else f"{exported.parent.name}-{exported.name}"
    candidate, n = where / f"verify-{name}", 0
    while candidate.exists():
        n += 1
        candidate = where / f"verify-{name}-{n}"
    return candidate


def _verify(source: Path, exported: Path, report_dir: Path, quant: str | None, thresholds: dict[str, float], console: Any) -> int:
    from rich.table import Table

    from halo_pipeline.export.drift import explain, verify

    try:
        with console.status("verifying the export against its source..."):
            report = verify(source, exported, report_dir, quant, thresholds)
    except ValueError as exc:
        raise RecipeError([Issue(str(exc))]) from None
    title = f"{report['format']} {report['quant']} vs source: is the export broken?"
    integrity = Table("check", "", "evidence", box=None, pad_edge=False, title=title)
    for check in report["integrity"]["checks"]:
        mark = "n/a" if check["ok"] is None else "ok" if check["ok"] else "[red]BROKEN[/red]"
        integrity.add_row(check["check"], mark, check["evidence"])
    console.print(integrity)
    title = f"what does {report['quant']} cost this model ({report['family'] or 'unknown family'})?"
    cost = Table("metric", "value", "budget", "from", "", box=None, pad_edge=False, title=title)
    for row in report["checks"]:
        cost.add_row(row["metric"], f"{row['value']:.4g}", row["rule"], row.get("from", ""), "ok" if row["ok"] else "[red]FAIL[/red]")
    console.print(cost)
    console.print(f"report: {report_dir / 'verify.json'}")
    if not report["passed"]:
        console.print(f"[red]verify failed ({report['verdict']}):[/red]")
        message = explain(report, lambda metric, bound: f"--threshold {metric}={bound:g}", "convert --quant {}".format, tables=False)
        console.print(message, markup=False, highlight=False)
        return 1
    return 0


def add_parsers(sub: Any) -> None:
    from halo_pipeline.engine.groups import quant_names

    quants = quant_names()  # conf/quant/*.yaml, the project's and the packaged ones
    m = sub.add_parser("merge", help="bake an adapter into its base, or combine adapters (peft weighted merge)")
    m.add_argument("--mode", choices=["bake", "combine"], default="bake")
    m.add_argument("--base", required=True, help="base model: directory, .gguf or catalog name")
    m.add_argument("--adapter", help="bake: the adapter directory")
    m.add_argument("--adapters", help="combine: comma-separated adapter directories")
    m.add_argument("--weights", help="combine: comma-separated weights, one per adapter (default equal)")
    m.add_argument("--method", choices=["linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"], default="dare_ties")
    m.add_argument("--density", type=float, help="combine: fraction kept by ties/dare/magnitude_prune")
    m.add_argument("--bake-after-merge", action="store_true", help="combine: write a merged model, not an adapter")
    m.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], default="auto")
    m.add_argument("--seed", type=int, default=0, help="combine with dare_*: seed of the random drop masks")
    m.add_argument("--output", required=True)

    c = sub.add_parser("convert", help=f"convert a model to gguf / mlx / hf at {' / '.join(quants)}")
    c.add_argument("--source", help="model directory, .gguf or catalog name")
    c.add_argument("--format", choices=["gguf", "mlx", "hf"])
    c.add_argument("--quant", choices=quants)
    c.add_argument("--output")
    c.add_argument("--verify", action="store_true", help="verify the export against the source (exit 1 if broken or over budget)")
    c.add_argument("--list", action="store_true", help="the supported (format, quant) pairs")

    v = sub.add_parser("verify", help="is an export broken, and what does its quant cost? (tensors, reference, KL, top-1, perplexity)")
    v.add_argument("--source", required=True)
    v.add_argument("--exported", required=True)
    v.add_argument("--quant", choices=quants, help="budget to apply (default: the export's)")
    v.add_argument("--threshold", action="append", metavar="METRIC=VALUE", help="override one bound of the cost budget (repeatable)")
    v.add_argument("--report", help="report directory (default: ./verify-<export name>; the export itself is never written to)")
