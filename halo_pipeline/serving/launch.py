"""Starting the server: which model, which runtime, where to bind, and whether that is safe."""

from __future__ import annotations

import concurrent.futures.thread  # noqa: F401  (its exit hook must be registered before ours)
import contextlib
import importlib.util
import ipaddress
import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

API_KEY_ENV = "HALO_PIPELINE_API_KEY"
ENGINE_LIBRARIES = {"hf": "transformers", "gguf": "llama_cpp", "mlx": "mlx_lm"}


class ServeRefused(ValueError):
    """The server will not start: a bad model, an unavailable runtime or device, or an unsafe bind."""


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
    """A run's final model: a model (or adapter) output that no model-producing step consumed (the GGUF after
    convert, not the merged model it came from; a train step's adapter when nothing merged it); the most
    recently finished one if there are several."""
    manifest = run_dir / "replay.json"
    if not manifest.is_file():
        raise ServeRefused(f"{run_dir} is not a run directory (no replay.json)")
    steps = json.loads(manifest.read_text())["steps"]
    models = {
        f"{sid}.{name}": (sid, name, str(step.get("ended") or ""))
        for sid, step in steps.items()
        if step.get("state") in ("ran", "cached")
        for name, out in (step.get("outputs") or {}).items()
        if out.get("type") in ("model", "adapter")
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


def run_target(run_dir: Path) -> tuple[Path, dict[str, Path]]:
    """What `serve --run` serves: the run's final model, or, when that is a LoRA adapter (a train step nothing
    merged), its base model with the adapter served unmerged next to it, named after the step."""
    from halo_pipeline.runtimes.formats import is_adapter

    final = run_model(run_dir)
    if not is_adapter(final):
        return final, {}
    return adapter_base(final), {final.parent.name: final}


def adapter_base(adapter: Path) -> Path:
    """The base model an adapter was trained on: the model reference its provenance records (a train step's),
    else PEFT's base_model_name_or_path."""
    from halo_pipeline.runtimes.catalog import ModelNotFound, resolve
    from halo_pipeline.runtimes.formats import adapter_base_ref

    base = adapter_base_ref(adapter)
    if not base:
        raise ServeRefused(f"{adapter} is an adapter that does not say which base model it was trained on; serve the base with --lora")
    try:
        return resolve(base)
    except ModelNotFound as exc:
        raise ServeRefused(f"the base model of adapter {adapter} is not available: {exc}") from None


ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")


def check_adapters(engine: str, adapters: dict[str, Path], base: Path | None = None) -> None:
    """Each adapter exists, is named as a model id, and is what this engine applies unmerged: a PEFT LoRA directory
    (torch), a GGUF LoRA file (gguf), an mlx-lm adapter directory (mlx)."""
    for name, path in adapters.items():
        where = f"--lora {name}={path}"
        if not ADAPTER_NAME.match(name):
            raise ServeRefused(f"{where}: the name is the model id clients send: letters, digits, _ . : - (up to 64)")
        if not path.exists():
            raise ServeRefused(f"{where}: no such file or directory")
        if engine == "gguf":
            from halo_pipeline.runtimes.gguf import gguf_kind

            if not (path.is_file() and path.suffix == ".gguf" and gguf_kind(path) == "adapter"):
                raise ServeRefused(
                    f"{where}: the gguf runtime applies GGUF LoRA files (llama.cpp's convert_lora_to_gguf.py makes one from "
                    "a PEFT adapter); serve the HF base model with --runtime hf to use a PEFT adapter as it is"
                )
            continue
        config = path / "adapter_config.json"
        if engine == "mlx":
            if not (config.is_file() and (path / "adapters.safetensors").is_file()):
                raise ServeRefused(f"{where}: the mlx runtime applies mlx-lm adapters (adapter_config.json + adapters.safetensors)")
            continue
        if not (config.is_file() and any(path.glob("adapter_model.*"))):
            raise ServeRefused(f"{where}: the hf runtime applies PEFT adapters (adapter_config.json + adapter_model.safetensors)")
        peft = json.loads(config.read_text())
        if peft.get("peft_type", "LORA") != "LORA":
            raise ServeRefused(f"{where}: a {peft.get('peft_type')} adapter; only LoRA adapters are served unmerged")
        if peft.get("use_dora"):
            raise ServeRefused(f"{where}: DoRA adapters cannot share a batch unmerged (peft's mixed batches exclude them); merge it first")


def preflight(
    model: Path, runtime: str, host: str, port: int, api_key: str | None, backend: Any = None, adapters: dict[str, Path] | None = None
) -> dict[str, Any]:
    """Everything `serve` checks before loading weights; raises ServeRefused with the fix."""
    from halo_pipeline.runtimes import as_backend
    from halo_pipeline.runtimes.formats import export_info
    from halo_pipeline.serving.engines import pick_engine

    if not model.exists():
        raise ServeRefused(f"model {model} does not exist (a model directory, a GGUF export, or --run RUN_DIR)")
    info = export_info(model)
    if info["format"] == "unknown":
        raise ServeRefused(f"{model} is not a model: expected an HF directory (config.json), a .gguf file or an MLX directory")
    chosen = pick_engine(model, runtime)
    compatible = {"hf": {"hf", "mlx"}, "gguf": {"gguf"}, "mlx": {"mlx"}}[info["format"]]
    if chosen not in compatible:
        raise ServeRefused(
            f"runtime {chosen} cannot load a {info['format']} model; use --runtime {' or '.join(sorted(compatible))} (or auto)"
        )
    if adapters:
        if chosen == "hf" and importlib.util.find_spec("peft") is None:
            raise ServeRefused("serving adapters unmerged on the hf runtime needs peft, which is not installed")
        check_adapters(chosen, adapters, model)
    if importlib.util.find_spec(ENGINE_LIBRARIES[chosen]) is None:
        raise ServeRefused(f"runtime {chosen} needs {ENGINE_LIBRARIES[chosen]}, which is not installed")
    device = as_backend(backend)
    if chosen == "hf" and (why := device.unavailable()):
        raise ServeRefused(why)
    remote_code = False
    config = model / "config.json" if model.is_dir() else None
    if config is not None and config.is_file():
        remote_code = "auto_map" in json.loads(config.read_text())
        if remote_code:
            raise ServeRefused(f"{model} needs trust_remote_code (its config has auto_map); the server never runs a model's own code")
    if not is_loopback(host) and not api_key:
        raise ServeRefused(f"binding {host} exposes the server beyond this machine: set an API key with --api-key-file F or ${API_KEY_ENV}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port just left in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ServeRefused(f"cannot bind {host}:{port}: {exc.strerror}; choose another --port") from None
    return {
        "model": str(model),
        "format": info["format"],
        "quant": info.get("quant"),
        "runtime": chosen,
        "device": f"{device.device} {device.dtype}" if chosen == "hf" else "cpu (llama.cpp)" if chosen == "gguf" else "mlx default",
        "bind": f"{host}:{port}",
        "loopback": is_loopback(host),
        "auth": "bearer API key" if api_key else "none (loopback only)",
        "streaming": True,
        "loads": "at start, before the port opens (a broken model fails now, not at the first request)",
        "trust_remote_code": remote_code,
        "adapters": {name: str(path) for name, path in (adapters or {}).items()} or "none",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def model_id(model: Path) -> str:
    """The name clients send: `<name>-<format>-<quant>` for an export made here, else the file or directory name."""
    from halo_pipeline.runtimes.formats import EXPORT_FILE

    record = model / EXPORT_FILE if model.is_dir() else None
    if record is not None and record.is_file():
        info = json.loads(record.read_text())
        return f"halo-{info['format']}-{info['quant']}"
    return model.name if model.name not in ("model", "") else f"{model.parent.name[:12]}-{model.name}"


GRACE_S = 2  # a stopping server lets the responses still being written finish for this long, then cancels them
POLL_S = 0.2


class ServeStopped(RuntimeError):
    """A foreground server was asked to stop (`stop_servers`, the main thread ending): not a result to keep."""


class _Serving:
    """One server serving until asked to stop: `stop` is set to ask, `done` once it has stopped."""

    def __init__(self) -> None:
        self.stop, self.done = threading.Event(), threading.Event()


_serving: set[_Serving] = set()  # set.add/discard/list() are atomic: no lock, so a signal handler may call stop_servers


def stop_servers(wait_s: float = 0.0) -> int:
    """Ask every server this process runs (`halo-pipeline serve`, a `serve` step in `mode: foreground`) to stop:
    generations end at once (a stream's client gets an error event saying the server is shutting down), the port
    closes, the engine is freed. Safe from any thread and from a signal handler (there with `wait_s=0`: a server
    that the main thread itself runs stops only once the handler returns). Waits up to `wait_s` seconds for them to
    have stopped; returns how many were asked. A server still loading its model stops as soon as it has started."""
    asked = list(_serving)
    for serving in asked:
        serving.stop.set()
    deadline = time.monotonic() + wait_s
    for serving in asked:
        serving.done.wait(max(0.0, deadline - time.monotonic()))
    return len(asked)


# Interpreter exit joins worker threads (a foreground serve step's among them) before the main thread counts as
# ended: stop the servers first, as concurrent.futures stops its workers, or an interrupted pipeline never exits.
# These hooks run last-registered first, and concurrent.futures.thread (imported above) has registered its own.
with contextlib.suppress(AttributeError, RuntimeError):
    threading._register_atexit(stop_servers)  # type: ignore[attr-defined]


class Running:
    """A server in this process: the engine loaded, uvicorn on a thread of its own. `halo-pipeline serve`, the
    serve step (both modes) and tests all start servers this way, so every one passes `preflight` first."""

    def __init__(
        self,
        model: Path,
        runtime: str = "auto",
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        name: str | None = None,
        *,
        backend: Any = None,
        parallel: int = 4,
        prefix_reuse: bool = True,
        log_level: str = "warning",
        adapters: dict[str, Path] | None = None,
        ctx_size: int | None = None,
        threads: int | None = None,
        **settings: Any,
    ) -> None:
        import uvicorn

        from halo_pipeline.serving.app import create_app
        from halo_pipeline.serving.engines import load_engine
        from halo_pipeline.serving.server import Settings

        self.port = port or free_port()
        self.model_id = name or model_id(model)
        if self.model_id in (adapters or {}):
            raise ServeRefused(f"--lora {self.model_id}: the base model is served under that name already (see --model-name)")
        self.facts = preflight(model, runtime, host, self.port, api_key, backend, adapters)
        self.engine = load_engine(
            model, self.facts["runtime"], parallel=parallel, backend=backend, adapters=adapters, ctx_size=ctx_size, threads=threads
        )
        if not prefix_reuse:  # benchmarks measure what reuse buys
            self.engine.reuse_prefix = False
            self.engine.prefix_cache_size = 0  # type: ignore[attr-defined]
        self.app = create_app(self.engine, Settings(model_id=self.model_id, api_key=api_key, aliases={str(model)}, **settings))
        config = uvicorn.Config(self.app, host=host, port=self.port, log_level=log_level, lifespan="off", timeout_graceful_shutdown=GRACE_S)
        self.server = uvicorn.Server(config)
        # not the main thread, so uvicorn installs no signal handlers: whoever started it decides when it stops
        self.thread = threading.Thread(target=self.server.run, name=f"serve-{self.port}", daemon=True)
        self.url = f"http://{host}:{self.port}/v1"
        self.stopped = False

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and self.thread.is_alive() and time.time() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            self.stop()
            raise ServeRefused(f"the server did not start on {self.url} (its log says why)")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.stop(force=exc_type is not None and issubclass(exc_type, KeyboardInterrupt))

    def stop(self, force: bool = False) -> None:
        """End every generation, stop accepting, give the responses being written up to GRACE_S, free the engine."""
        if self.stopped:
            return
        self.stopped = True
        self.app.state.server.shutdown()
        self.server.should_exit = True
        self.server.force_exit = force  # a second Ctrl-C: do not wait for anything
        self.thread.join(timeout=1 if force else GRACE_S + 5)
        self.engine.close()

    def wait(self, stop: threading.Event) -> None:
        """Serve until `stop` is set or this process's main thread has ended (a foreground serve step must not
        keep an interrupted pipeline alive); raises if the server died on its own."""
        while not stop.wait(POLL_S):
            if not self.thread.is_alive():
                raise RuntimeError(f"the server on {self.url} stopped on its own (its log says why)")
            if not threading.main_thread().is_alive():
                return


def serve_forever(
    model: Path,
    runtime: str,
    host: str,
    port: int,
    api_key: str | None,
    parallel: int = 4,
    prefix_reuse: bool = True,
    name: str | None = None,
    backend: Any = None,
    adapters: dict[str, Path] | None = None,
    ctx_size: int | None = None,
    threads: int | None = None,
) -> int:
    """Serve until asked to stop; returns the number of the signal that stopped it, or 0.

    On the main thread (`halo-pipeline serve`) the first SIGINT or SIGTERM stops it gracefully within seconds and
    a second one interrupts at once. Elsewhere (the serve step, in a worker thread) `stop_servers()` or the end of
    the main thread stops it. Refuses, like every way of starting a server, what `preflight` refuses."""
    serving = _Serving()
    signals: list[int] = []
    _serving.add(serving)  # before loading: a stop asked meanwhile is seen as soon as the server is up
    try:
        with Running(
            model,
            runtime,
            host,
            port,
            api_key,
            name,
            backend=backend,
            parallel=parallel,
            prefix_reuse=prefix_reuse,
            log_level="info",
            adapters=adapters,
            ctx_size=ctx_size,
            threads=threads,
        ) as running:
            served = ", ".join([running.model_id, *(adapters or {})])
            print(f"serving {served} ({running.engine.name}) on {running.url}", flush=True)
            previous = _catch_signals(serving.stop, signals) if threading.current_thread() is threading.main_thread() else {}
            try:
                running.wait(serving.stop)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
    finally:
        _serving.discard(serving)
        serving.done.set()
    return signals[0] if signals else 0


def _catch_signals(stop: threading.Event, caught: list[int]) -> dict[int, Any]:
    def handle(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second signal: stop waiting for the graceful end
        caught.append(signum)
        stop.set()

    return {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
