"""Shared fixtures: an isolated halo-pipeline home and cache, and one Prefect test server per session."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


def _sandbox_fallback() -> None:
    """Without a working bubblewrap (and outside CI, which requires it), tests that run model-written code
    use the explicit `rlimits` opt-in instead of failing; tests/verifiers skips what only bubblewrap can pass."""
    if os.environ.get("HALO_PIPELINE_REQUIRE_BWRAP") or "HALO_PIPELINE_SANDBOX" in os.environ:
        return
    import halo_pipeline.sandbox as sandbox

    probe = sandbox.isolation("bubblewrap")
    if not probe.available:
        os.environ["HALO_PIPELINE_SANDBOX"] = "rlimits"
        print(f"\nnote: bubblewrap is unavailable ({probe.reason}): tests run model-written code under `rlimits`")


_sandbox_fallback()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests outside tests/unit run real steps, servers, models or browsers: they are `integration`, which
    `make test-fast` leaves out (unit tests that load a model carry the mark themselves)."""
    unit = TESTS / "unit"
    for item in items:
        if unit not in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def halo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models and server state go to a temp home (a user's ~/.cache is never touched)."""
    home = Path(os.environ.get("HALO_PIPELINE_TEST_HOME") or tmp_path_factory.mktemp("halo-home"))
    os.environ["HALO_PIPELINE_HOME"] = str(home)
    os.environ["HALO_PIPELINE_LOCAL_SERVER"] = "0"
    return home


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server for the session (temp PREFECT_HOME); its URL is exported to subprocesses."""
    prefect_home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(prefect_home)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        from prefect.settings import PREFECT_API_URL

        url = PREFECT_API_URL.value()
        os.environ["PREFECT_API_URL"] = url
        yield url
        os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh user project directory (cwd) with its own outputs/ and cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HALO_PIPELINE_CACHE", str(tmp_path / "outputs" / ".cache"))
    (tmp_path / "recipes").mkdir()
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real console script in a subprocess (fake step kinds importable from tests/)."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    exe = Path(sys.executable).parent / "halo-pipeline"
    return subprocess.run([str(exe), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


FAKE_RECIPE = """
# a 3-step recipe of fake kinds
defaults:
  - backend: cpu
  - algorithm: sft
  - _self_
name: fake
seed: 0
steps:
  make:
    uses: fake_steps:make
    with: {n: 4}
  copy:
    uses: fake_steps:copy
    inputs: {dataset: make.dataset}
    with: {suffix: "-${algorithm.name}"}
  report:
    uses: fake_steps:sft_only
    inputs: {dataset: copy.dataset}
"""


@contextlib.contextmanager
def llama_cpp_server(model: Path, n_ctx: int = 1024) -> Iterator[str]:
    """llama_cpp.server on a free loopback port serving a GGUF file: a real OpenAI-compatible endpoint (its /v1 URL)."""
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(port), "--n_threads", "1", "--n_ctx", str(n_ctx)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=1)
                break
            except OSError:
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
