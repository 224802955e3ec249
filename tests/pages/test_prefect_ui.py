"""The Prefect UI address a run prints opens the run in a browser, for every way we start a server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from browser import browser_page
from conftest import cli, write

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _local_env(tmp_path: Path) -> dict[str, str]:
    """A user's shell: no PREFECT_API_URL, so `run` starts (or reuses) the background server.

    `cli` layers this over the test process's environment, where the session's Prefect server may
    have set PREFECT_API_URL: an empty value counts as unset.
    """
    env = dict(
        PREFECT_API_URL="",
        HALO_PIPELINE_HOME=str(tmp_path / "home"),
        HALO_PIPELINE_LOCAL_SERVER="1",
        PREFECT_HOME=str(tmp_path / "prefect"),
    )
    return env


def _ui_settings(base: str) -> dict:
    with urllib.request.urlopen(f"{base}/ui-settings", timeout=10) as resp:  # noqa: S310 (loopback)
        return dict(json.loads(resp.read()))


def test_the_printed_link_shows_the_run_and_its_steps(project: Path, tmp_path: Path) -> None:
    recipe = write(
        project / "recipes/ui.yaml",
        """
        name: ui
        steps:
          make:
            uses: fake_steps:make
          copy:
            uses: fake_steps:copy
            inputs: {dataset: make.dataset}
        """,
    )
    env = _local_env(tmp_path)
    try:
        res = cli("run", str(recipe), cwd=project, env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        link = next(line.split("prefect: ", 1)[1].strip() for line in res.stdout.splitlines() if line.startswith("prefect: "))
        server = json.loads((tmp_path / "home/server.json").read_text())["url"]
        assert link.startswith(server.removesuffix("/api"))
        # the UI calls the API of the server that served it, not Prefect's default port
        assert _ui_settings(server.removesuffix("/api"))["api_url"] == server
        with browser_page() as page:
            page.goto(link)
            page.wait_for_selector("text=Completed", timeout=60_000)
            assert "Can't connect to Server API" not in page.inner_text("body")
            page.get_by_text("Task Runs", exact=True).first.click()
            page.wait_for_selector("text=copy:fake_steps:copy", timeout=60_000)
            body = page.inner_text("body")
            assert "make:fake_steps:make" in body and "2 Task runs" in body
            page.screenshot(path=str(tmp_path / "prefect-ui-run.png"))
        if os.environ.get("HALO_PIPELINE_WRITE_SCREENSHOTS") == "1":  # regenerates the picture in docs/
            (DOCS / "img").mkdir(exist_ok=True)
            (DOCS / "img/prefect-ui-run.png").write_bytes((tmp_path / "prefect-ui-run.png").read_bytes())
        # a rerun with nothing to do is recorded without Prefect's engine: its link opens just the same
        again = cli("run", str(recipe), cwd=project, env=env)
        assert again.returncode == 0 and "completed: 2 cached" in again.stdout, again.stdout + again.stderr
        cached_link = next(line.split("prefect: ", 1)[1].strip() for line in again.stdout.splitlines() if line.startswith("prefect: "))
        assert cached_link != link and cached_link.startswith(server.removesuffix("/api"))
        with browser_page() as page:
            page.goto(cached_link)
            page.wait_for_selector("text=Completed", timeout=60_000)
            page.get_by_text("Task Runs", exact=True).first.click()
            page.wait_for_selector("text=copy:fake_steps:copy", timeout=60_000)
            body = page.inner_text("body")
            assert "make:fake_steps:make" in body and "2 Task runs" in body and "Cached" in body
    finally:
        cli("server", "--stop", cwd=project, env=env)


def test_halo_pipeline_server_points_its_ui_at_its_own_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _local_env(tmp_path)
    exe = Path(sys.executable).parent / "halo-pipeline"
    proc = subprocess.Popen(
        [str(exe), "server", "--port", str(port)], env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline, settings = time.time() + 120, None
        while time.time() < deadline and settings is None:
            try:
                settings = _ui_settings(f"http://127.0.0.1:{port}")
            except OSError:
                time.sleep(0.5)
        assert settings is not None, "the server did not start"
        assert settings["api_url"] == f"http://127.0.0.1:{port}/api"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
    assert f"Prefect UI: http://127.0.0.1:{port}" in out
