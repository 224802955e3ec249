"""`halo-pipeline serve`: an OpenAI-compatible server for a model or a run's final model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from halo_pipeline.engine.errors import Issue, RecipeError


def add_parser(sub: Any) -> None:
    s = sub.add_parser("serve", help="OpenAI-compatible server (chat, completions, streaming) for a model or a run's final model")
    s.add_argument("--model", help="model directory, GGUF export or .gguf file, or catalog name")
    s.add_argument("--run", help="serve this run directory's final model (outputs/<recipe>/<run>)")
    s.add_argument("--engine", choices=["auto", "torch", "gguf", "mlx"], default="auto", help="auto: by the model's format (HF -> torch)")
    s.add_argument("--backend", default="cpu", help="device group for the torch engine: cpu (default), cuda, rocm, mps")
    s.add_argument("--host", default="127.0.0.1", help="bind address (non-loopback needs an API key)")
    s.add_argument("--port", type=int, default=8001)
    s.add_argument("--api-key-file", help="file holding the bearer key (or set $HALO_PIPELINE_API_KEY; never on argv)")
    s.add_argument("--model-name", help="the model id clients send (default: halo-<format>-<quant> for exports, else the file name)")
    s.add_argument("--parallel", type=int, default=4, help="concurrent sequences (GGUF contexts; torch batch = 2x)")
    s.add_argument("--no-prefix-reuse", action="store_true", help="disable prompt-prefix KV reuse (to measure what it buys)")
    s.add_argument(
        "--check", action="store_true", help="preflight only: model, engine, device, bind, auth; no weights loaded, nothing bound"
    )


def cmd_serve(args: argparse.Namespace, console: Any) -> int:
    from halo_pipeline.serving.launch import ServeRefused, preflight, read_api_key, run_model, serve_forever

    try:
        if bool(args.model) == bool(args.run):
            raise ServeRefused("give --model M or --run RUN_DIR (one of them)")
        model = run_model(Path(args.run)) if args.run else _model(args.model)
        api_key = read_api_key(args.api_key_file)
        engine, backend = _engine_and_backend(args.engine, args.backend)
        facts = preflight(model, engine, args.host, args.port, api_key, backend)
        if args.check:
            for key, value in facts.items():
                console.print(f"{key:18} {value}")
            console.print("[green]preflight ok[/green]: `halo-pipeline serve` without --check would start here")
            return 0
        # serve_forever runs the same preflight again, as every way of starting a server does
        signum = serve_forever(
            model, facts["engine"], args.host, args.port, api_key, args.parallel, not args.no_prefix_reuse, args.model_name, backend
        )
    except ServeRefused as exc:
        raise RecipeError([Issue(str(exc), hint="halo-pipeline serve --model M [--host 127.0.0.1] [--api-key-file F] --check")]) from None
    return 128 + signum if signum else 0  # stopped by a signal: 130 (Ctrl-C) or 143 (SIGTERM), as the shell reports it


def _engine_and_backend(engine: str, backend: str) -> tuple[str, Any]:
    """`--backend` is the device group (conf/backend/<name>.yaml); an engine name there is the old spelling of --engine."""
    import sys

    from halo_pipeline.engine.groups import Backend, _conf_file
    from halo_pipeline.serving.launch import ServeRefused

    if backend in ("auto", "torch", "gguf", "mlx") and backend != "mlx":
        print(
            f"warning: --backend {backend} chooses the engine: write --engine {backend} (--backend is the device group now)",
            file=sys.stderr,
        )
        return backend, Backend()
    path = _conf_file("backend", backend)
    if path is None:
        raise ServeRefused(f"--backend {backend}: not a device group (cpu, cuda, rocm, mps, mlx)")
    import yaml

    return engine, Backend.model_validate(yaml.safe_load(path.read_text()))


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
