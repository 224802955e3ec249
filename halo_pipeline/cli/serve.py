"""`halo-pipeline serve`: an OpenAI-compatible server for a model or a run's final model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from halo_pipeline.engine.errors import Issue, RecipeError


def add_parser(sub: Any) -> None:
    s = sub.add_parser("serve", help="OpenAI-compatible server (chat, completions, streaming) for a model or a run's final model")
    s.add_argument("--model", help="model directory, GGUF export or .gguf file, or catalog name")
    s.add_argument("--run", help="serve this run directory's final model (outputs/<recipe>/<run>)")
    s.add_argument("--runtime", choices=["auto", "hf", "gguf", "mlx"], default="auto", help="what serves the model (auto: by its format)")
    s.add_argument("--engine", choices=["auto", "torch", "hf", "gguf", "mlx"], help=argparse.SUPPRESS)  # the old spelling of --runtime
    s.add_argument("--backend", default="cpu", help="device group for the hf runtime: cpu (default), cuda, rocm, mps")
    s.add_argument("--host", default="127.0.0.1", help="bind address (non-loopback needs an API key)")
    s.add_argument("--port", type=int, default=8001)
    s.add_argument("--api-key-file", help="file holding the bearer key (or set $HALO_PIPELINE_API_KEY; never on argv)")
    s.add_argument("--model-name", help="the model id clients send (default: halo-<format>-<quant> for exports, else the file name)")
    s.add_argument("--parallel", type=int, default=4, help="concurrent sequences (GGUF contexts; hf and mlx batch = 2x)")
    s.add_argument("--no-prefix-reuse", action="store_true", help="disable prompt-prefix KV reuse (to measure what it buys)")
    s.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve a LoRA adapter unmerged next to the base, as model NAME (repeatable): PEFT dir (hf), GGUF LoRA (gguf), mlx-lm dir (mlx)",
    )
    s.add_argument("--ctx-size", type=int, help="context length in tokens (default: what the model was trained for; GGUF: at most 2048)")
    s.add_argument("--threads", type=int, help="gguf: threads for a lone generation (default: every core; several at once get one each)")
    s.add_argument(
        "--check", action="store_true", help="preflight only: model, runtime, device, bind, auth; no weights loaded, nothing bound"
    )


def cmd_serve(args: argparse.Namespace, console: Any) -> int:
    from halo_pipeline.serving.launch import ServeRefused, preflight, read_api_key, run_target, serve_forever

    try:
        if bool(args.model) == bool(args.run):
            raise ServeRefused("give --model M or --run RUN_DIR (one of them)")
        if args.ctx_size is not None and args.ctx_size < 16:
            raise ServeRefused(f"--ctx-size {args.ctx_size}: at least 16 tokens")
        if args.threads is not None and args.threads < 1:
            raise ServeRefused(f"--threads {args.threads}: at least 1")
        adapters = _adapters(args.lora)
        if args.run:  # the run's final model; a final adapter is served unmerged on its base
            model, from_run = run_target(Path(args.run))
            adapters = {**from_run, **adapters}
        else:
            model = _model(args.model)
        api_key = read_api_key(args.api_key_file)
        runtime, backend = _runtime_and_backend(_runtime(args.runtime, args.engine), args.backend)
        facts = preflight(model, runtime, args.host, args.port, api_key, backend, adapters)
        if args.threads is not None and facts["runtime"] != "gguf":
            raise ServeRefused(f"--threads sets the gguf runtime's llama.cpp threads; the {facts['runtime']} runtime does not take it")
        if args.check:
            for key, value in facts.items():
                console.print(f"{key:18} {value}")
            console.print("[green]preflight ok[/green]: `halo-pipeline serve` without --check would start here")
            return 0
        # serve_forever runs the same preflight again, as every way of starting a server does
        signum = serve_forever(
            model,
            facts["runtime"],
            args.host,
            args.port,
            api_key,
            args.parallel,
            not args.no_prefix_reuse,
            args.model_name,
            backend,
            adapters=adapters,
            ctx_size=args.ctx_size,
            threads=args.threads,
        )
    except ServeRefused as exc:
        raise RecipeError([Issue(str(exc), hint="halo-pipeline serve --model M [--host 127.0.0.1] [--api-key-file F] --check")]) from None
    return 128 + signum if signum else 0  # stopped by a signal: 130 (Ctrl-C) or 143 (SIGTERM), as the shell reports it


def _adapters(specs: list[str]) -> dict[str, Path]:
    from halo_pipeline.serving.launch import ServeRefused

    adapters: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ServeRefused(f"--lora {spec}: write --lora NAME=PATH (NAME is the model id clients send)")
        if name in adapters:
            raise ServeRefused(f"--lora {name}: given twice")
        adapters[name] = Path(path).expanduser()
    return adapters


def _runtime(runtime: str, engine: str | None) -> str:
    """`--engine` (torch for hf) is the old spelling of `--runtime`: it works for one more release, with a warning."""
    return runtime if engine is None else _old_runtime_flag("--engine", engine, runtime, "is the old spelling")


def _old_runtime_flag(flag: str, value: str, runtime: str, why: str) -> str:
    """The runtime an old flag names (torch is hf), said with a warning; refused when --runtime says another."""
    from halo_pipeline.serving.launch import ServeRefused

    new = "hf" if value == "torch" else value
    print(f"warning: {flag} {value} {why}: write --runtime {new}", file=sys.stderr)
    if runtime not in ("auto", new):
        raise ServeRefused(f"{flag} {value} and --runtime {runtime} disagree: give --runtime alone")
    return new


def _runtime_and_backend(runtime: str, backend: str) -> tuple[str, Any]:
    """`--backend` is the device group (conf/backend/<name>.yaml); a runtime name there is the old spelling of --runtime."""
    from halo_pipeline.engine.groups import Backend, _conf_file
    from halo_pipeline.serving.launch import ServeRefused

    if backend in ("auto", "torch", "hf", "gguf"):
        return _old_runtime_flag("--backend", backend, runtime, "chooses the runtime (--backend is the device group)"), Backend()
    path = _conf_file("backend", backend)
    if path is None:
        raise ServeRefused(f"--backend {backend}: not a device group (cpu, cuda, rocm, mps, mlx)")
    import yaml

    return runtime, Backend.model_validate(yaml.safe_load(path.read_text()))


def _model(ref: str) -> Path:
    from halo_pipeline.runtimes.catalog import ModelNotFound, check_reference, resolve
    from halo_pipeline.runtimes.formats import export_info
    from halo_pipeline.serving.launch import ServeRefused

    path = Path(ref).expanduser()
    if path.exists():
        return path if export_info(path)["format"] != "unknown" else path  # preflight explains
    if problems := check_reference(ref):
        raise ServeRefused(f"--model {ref}: {problems[0]}")
    try:
        return resolve(ref)
    except ModelNotFound as exc:
        raise ServeRefused(f"--model {ref}: {exc}") from None
