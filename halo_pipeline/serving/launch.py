"""Starting the server: which model, which engine, where to bind, and whether that is safe."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

API_KEY_ENV = "HALO_PIPELINE_API_KEY"
ENGINE_LIBRARIES = {"torch": "transformers", "gguf": "llama_cpp", "mlx": "mlx_lm"}


class ServeRefused(ValueError):
    """The server will not start: a bad model, an unavailable backend, or an unsafe bind."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback  # 0.0.0.0 and :: are "every interface", not loopback
    except ValueError:
        return False


def read_api_key(key_file: str | None) -> str | None:
    """From --api-key-file or $HALO_PIPELINE_API_KEY; never from the command line (it would show in ps)."""
    if key_file:
        path = Path(key_file)
        if not path.is_file():
            raise ServeRefused(f"--api-key-file {key_file} does not exist")
        key = path.read_text().strip()
        if not key:
            raise ServeRefused(f"--api-key-file {key_file} is empty")
        return key
    return os.environ.get(API_KEY_ENV) or None


def run_model(run_dir: Path) -> Path:
    """A run's final model: a model output that no model-producing step consumed (the GGUF after
    convert, not the merged model it came from); the most recently finished one if there are several."""
    manifest = run_dir / "replay.json"
    if not manifest.is_file():
        raise ServeRefused(f"{run_dir} is not a run directory (no replay.json)")
    steps = json.loads(manifest.read_text())["steps"]
    models = {
        f"{sid}.{name}": (sid, name, str(step.get("ended") or ""))
        for sid, step in steps.items()
        if step.get("state") in ("ran", "cached")
        for name, out in (step.get("outputs") or {}).items()
        if out.get("type") == "model"
    }
    producers = {ref.split(".")[0] for ref in models}
    consumed = {ref for sid, step in steps.items() if sid in producers for ref in (step.get("inputs") or {}).values()}
    finals = sorted((v for ref, v in models.items() if ref not in consumed), key=lambda v: v[2])
    if not finals:
        raise ServeRefused(f"run {run_dir} produced no model (no step with a model output finished)")
    sid, name, _ = finals[-1]
    path = run_dir / "steps" / sid / name
    if not path.exists():
        raise ServeRefused(f"the run's final model {path} is gone (the cache was cleaned?); rerun the recipe")
    return path


def preflight(model: Path, backend: str, host: str, port: int, api_key: str | None) -> dict[str, Any]:
    """Everything `serve` checks before loading weights; raises ServeRefused with the fix."""
    from halo_pipeline.export.formats import export_info
    from halo_pipeline.serving.engines import pick_backend

    if not model.exists():
        raise ServeRefused(f"model {model} does not exist (a model directory, a GGUF export, or --run RUN_DIR)")
    info = export_info(model)
    if info["format"] == "unknown":
        raise ServeRefused(f"{model} is not a model: expected an HF directory (config.json), a .gguf file or an MLX directory")
    chosen = pick_backend(model, backend)
    compatible = {"hf": {"torch", "mlx"}, "gguf": {"gguf"}, "mlx": {"mlx"}}[info["format"]]
    if chosen not in compatible:
        raise ServeRefused(
            f"backend {chosen} cannot load a {info['format']} model; use --backend {' or '.join(sorted(compatible))} (or auto)"
        )
    if importlib.util.find_spec(ENGINE_LIBRARIES[chosen]) is None:
        raise ServeRefused(f"backend {chosen} needs {ENGINE_LIBRARIES[chosen]}, which is not installed")
    remote_code = False
    config = model / "config.json" if model.is_dir() else None
    if config is not None and config.is_file():
        remote_code = "auto_map" in json.loads(config.read_text())
        if remote_code:
            raise ServeRefused(f"{model} needs trust_remote_code (its config has auto_map); the server never runs a model's own code")
    if not is_loopback(host) and not api_key:
        raise ServeRefused(f"binding {host} exposes the server beyond this machine: set an API key with --api-key-file F or ${API_KEY_ENV}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ServeRefused(f"cannot bind {host}:{port}: {exc.strerror}; choose another --port") from None
    return {
        "model": str(model),
        "format": info["format"],
        "quant": info.get("quant"),
        "backend": chosen,
        "bind": f"{host}:{port}",
        "loopback": is_loopback(host),
        "auth": "bearer API key" if api_key else "none (loopback only)",
        "streaming": True,
        "loads": "at start, before the port opens (a broken model fails now, not at the first request)",
        "trust_remote_code": remote_code,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_id(model: Path) -> str:
    """The name clients send: `<name>-<format>-<quant>` for an export made here, else the file or directory name."""
    from halo_pipeline.export.formats import EXPORT_FILE

    record = model / EXPORT_FILE if model.is_dir() else None
    if record is not None and record.is_file():
        info = json.loads(record.read_text())
        return f"halo-{info['format']}-{info['quant']}"
    return model.name if model.name not in ("model", "") else f"{model.parent.name[:12]}-{model.name}"


class Running:
    """A server started in this process (uvicorn in a thread): for smoke tests and tests."""

    def __init__(
        self,
        model: Path,
        backend: str = "auto",
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        name: str | None = None,
        **settings: Any,
    ) -> None:
        import uvicorn

        from halo_pipeline.serving.engines import load_engine
        from halo_pipeline.serving.server import Settings, create_app

        self.port = port or free_port()
        preflight(model, backend, host, self.port, api_key)
        parallel = settings.pop("parallel", 4)
        self.engine = load_engine(model, backend, parallel=parallel)
        self.model_id = name or model_id(model)
        app = create_app(self.engine, Settings(model_id=self.model_id, api_key=api_key, aliases={str(model)}, **settings))
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://{host}:{self.port}/v1"

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            raise RuntimeError("the server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.engine.close()


def serve_forever(
    model: Path,
    backend: str,
    host: str,
    port: int,
    api_key: str | None,
    parallel: int = 4,
    prefix_reuse: bool = True,
    name: str | None = None,
) -> None:
    import uvicorn

    from halo_pipeline.serving.engines import load_engine
    from halo_pipeline.serving.server import Settings, create_app

    engine = load_engine(model, backend, parallel=parallel)
    if not prefix_reuse:  # benchmarks measure what reuse buys
        engine.reuse_prefix = False  # type: ignore[attr-defined]
        engine.prefix_cache_size = 0  # type: ignore[attr-defined]
    served = name or model_id(model)
    app = create_app(engine, Settings(model_id=served, api_key=api_key, aliases={str(model)}))
    print(f"serving {served} ({engine.name}) on http://{host}:{port}/v1", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", lifespan="off")
    finally:
        engine.close()
