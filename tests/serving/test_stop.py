"""Stop means stop: the first SIGTERM or Ctrl-C ends a server within seconds, however it was started; and every
way of starting one goes through the same preflight."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import serving_fixtures

from halo_pipeline.engine.step import Artifact
from halo_pipeline.serving.launch import API_KEY_ENV, ServeRefused, free_port

models, smollm2_gguf = serving_fixtures.models, serving_fixtures.smollm2_gguf  # the fixtures the serving tests share

TESTS = Path(__file__).resolve().parent.parent
LONG = {"prompt": "Once upon a time", "max_tokens": 1000, "ignore_eos": True, "stream": True}  # 10+ s on SmolLM2, one thread


def wait_healthy(port: int, proc: subprocess.Popen[str] | None = None, seconds: float = 180) -> dict[str, Any]:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("the server did not come up")


def stop_mid_stream(port: int, model: str, proc: subprocess.Popen[str], sig: int) -> tuple[list[str], float, float]:
    """Open a long stream, signal the server after its first chunk; (the stream's remaining lines, seconds until
    the stream ended, seconds until the process exited)."""
    with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json={"model": model, **LONG}, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        proc.send_signal(sig)
        sent = time.time()
        try:
            rest = list(lines)
        except httpx.HTTPError as exc:  # a stream cut off is an end too; the test then checks the time
            rest = [f"cut: {exc!r}"]
        stream_ended = time.time() - sent
    proc.wait(timeout=30)
    return rest, stream_ended, time.time() - sent


def env() -> dict[str, str]:
    path = os.pathsep.join([str(TESTS), str(TESTS / "tasks"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, API_KEY_ENV: ""}


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_the_first_signal_stops_halo_pipeline_serve_within_seconds(smollm2_gguf: Path, sig: int, code: int) -> None:
    port = free_port()
    exe = Path(sys.executable).parent / "halo-pipeline"
    argv = [str(exe), "serve", "--model", str(smollm2_gguf), "--port", str(port), "--parallel", "1", "--model-name", "m"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        wait_healthy(port, proc)
        rest, stream_ended, exited = stop_mid_stream(port, "m", proc, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert stream_ended < 5 and exited < 8, (stream_ended, exited)  # before: the stream ran on (~13 s), no bound
    assert proc.returncode == code
    assert any("shutting down" in line for line in rest), rest  # the client is told, in OpenAI's error shape
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # the port is free for a server to start on again


FOREGROUND_STEP = """
import signal, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from halo_pipeline.engine.step import Artifact
from helpers import run_kind


def interrupt(*_):
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, interrupt)  # as `halo-pipeline run` does: SIGTERM interrupts the main thread
model, port, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
pool = ThreadPoolExecutor(1)  # a step runs in a worker thread, as under Prefect's thread task runner
future = pool.submit(run_kind, "serve", {"mode": "foreground", "port": port, "parallel": 1}, {"model": Artifact("model", model)}, out)
try:
    future.result()
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def test_a_foreground_serve_step_ends_when_the_main_thread_is_interrupted(smollm2_gguf: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", FOREGROUND_STEP, str(smollm2_gguf), str(port), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    try:
        model = wait_healthy(port, proc)["model"]
        rest, stream_ended, exited = stop_mid_stream(port, model, proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert stream_ended < 5 and exited < 8, (stream_ended, exited)  # before: the process never exited
    assert proc.returncode == 130 and "interrupted" in (proc.stdout.read() if proc.stdout else "")
    assert any("shutting down" in line for line in rest), rest


def run_step_in_thread(params: dict[str, Any], model: Path, out: Path) -> tuple[threading.Thread, dict[str, Any]]:
    from helpers import run_kind

    result: dict[str, Any] = {}

    def go() -> None:
        try:
            result["outputs"] = run_kind("serve", params, {"model": Artifact("model", model)}, out)
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, result


def test_stop_servers_ends_a_foreground_serve_step(models: dict[str, Path], tmp_path: Path) -> None:
    from halo_pipeline.serving.launch import ServeStopped, stop_servers

    port = free_port()
    thread, result = run_step_in_thread({"mode": "foreground", "port": port}, models["gguf"], tmp_path)
    assert wait_healthy(port, seconds=60)["status"] == "ok"
    asked = time.time()
    assert stop_servers() == 1
    thread.join(10)
    assert not thread.is_alive() and time.time() - asked < 5
    assert isinstance(result.get("error"), ServeStopped)  # not a success: a stopped serve must not be cached as done
    assert stop_servers() == 0


def test_the_serve_step_refuses_a_public_bind_without_a_key_in_every_mode(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    thread, result = run_step_in_thread({"mode": "foreground", "host": "0.0.0.0", "port": free_port()}, models["gguf"], tmp_path)
    thread.join(60)
    if thread.is_alive():  # before: it served the world without a key
        from halo_pipeline.serving.launch import stop_servers

        stop_servers()
        pytest.fail("the serve step served 0.0.0.0 without an API key")
    assert isinstance(result.get("error"), ServeRefused) and "API key" in str(result["error"])
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    remote = tmp_path / "remote-code-model"  # a config that asks for the model's own code
    shutil.copytree(models["hf"], remote)
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "modeling.Model"}}))
    for mode in ("smoke", "foreground"):
        thread, result = run_step_in_thread({"mode": mode, "port": free_port(), "api_key_file": str(key)}, remote, tmp_path / mode)
        thread.join(60)
        assert not thread.is_alive()
        assert isinstance(result.get("error"), ServeRefused) and "trust_remote_code" in str(result["error"])
