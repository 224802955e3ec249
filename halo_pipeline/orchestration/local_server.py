"""A reusable local Prefect server, so that only the first `run` of a session pays the server's start-up.

Without `PREFECT_API_URL`, Prefect starts an ephemeral server in every process (~18 s here). The
first `halo-pipeline run` instead starts `prefect server start` on a free loopback port in the
background, records it in `~/.cache/halo-pipeline/server.json`, and later runs reuse it. A watchdog
stops it after `HALO_PIPELINE_SERVER_IDLE_MINUTES` (default 30) with no run in progress.
Set `PREFECT_API_URL` to use your own server, or `HALO_PIPELINE_LOCAL_SERVER=0` for Prefect's default.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

STARTUP_TIMEOUT = 180.0


def home() -> Path:
    return Path(os.environ.get("HALO_PIPELINE_HOME", Path.home() / ".cache" / "halo-pipeline"))


def state_file() -> Path:
    return home() / "server.json"


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:  # noqa: S310 (loopback only)
            return resp.status == 200
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def running_server() -> str | None:
    try:
        info = json.loads(state_file().read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not healthy(info["url"]):
        return None
    if ui_api_url(info["url"]) != info["url"]:  # started by an older version whose UI called port 4200
        stop_background()
        return None
    return str(info["url"])


def ui_api_url(api_url: str) -> str | None:
    """Where the server's UI sends its API calls (its `/ui-settings`)."""
    try:
        with urllib.request.urlopen(f"{ui_url(api_url)}/ui-settings", timeout=2) as resp:  # noqa: S310 (loopback only)
            return str(json.loads(resp.read()).get("api_url"))
    except (OSError, ValueError):
        return None


def start_background(log: Path | None = None) -> str:
    """Start the watchdog (which starts the server) detached from this process; wait until healthy."""
    home().mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = log or home() / "server.log"
    with open(log, "ab") as out:
        watchdog_proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "halo_pipeline.orchestration.local_server", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PREFECT_API_URL": ""},
        )
    deadline = time.time() + STARTUP_TIMEOUT
    while time.time() < deadline:
        if healthy(url, timeout=1.0):
            # the watchdog records it too, but only once its own health poll succeeds: record it now,
            # so that the next run (started a second later) reuses this server instead of starting another
            if _recorded_url() != url:
                _write_state({"url": url, "pid": watchdog_proc.pid, "port": port})
            return url
        time.sleep(0.5)
    raise RuntimeError(f"the local Prefect server did not start within {STARTUP_TIMEOUT:.0f} s; see {log}")


def ensure_api_url() -> str | None:
    """Point Prefect at a reusable local server unless the user configured one (or opted out)."""
    if os.environ.get("PREFECT_API_URL") or os.environ.get("HALO_PIPELINE_LOCAL_SERVER", "1") == "0":
        return os.environ.get("PREFECT_API_URL")
    if _profile_api_url():
        return None
    url = running_server() or start_background()
    os.environ["PREFECT_API_URL"] = url
    return url


def _profile_api_url() -> str | None:
    """A PREFECT_API_URL set in the active Prefect profile counts as the user's choice."""
    try:
        import tomllib

        profiles = Path(
            os.environ.get("PREFECT_PROFILES_PATH", Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")) / "profiles.toml")
        )
        data = tomllib.loads(profiles.read_text())
        active = data.get("active", "ephemeral")
        return data.get("profiles", {}).get(active, {}).get("PREFECT_API_URL")
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def active_run() -> Iterator[None]:
    """Mark a run in progress so the watchdog does not stop the server under it."""
    marker = home() / "active" / str(os.getpid())
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.utime(state_file())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _busy() -> bool:
    active = home() / "active"
    busy = False
    for marker in active.glob("*") if active.is_dir() else []:
        if marker.name.isdigit() and _alive(int(marker.name)):
            busy = True
        else:
            marker.unlink(missing_ok=True)
    return busy


def server_env(host: str, port: int) -> dict[str, str]:
    """The environment of `prefect server start`: its UI must call the API on this port, not Prefect's default 4200."""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    address = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    env.update(
        PREFECT_SERVER_API_HOST=host,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_UI_API_URL=os.environ.get("PREFECT_UI_API_URL") or f"http://{address}:{port}/api",
    )
    return env


def ui_url(api_url: str) -> str:
    """The UI address of a server, from its API address."""
    return api_url[: -len("/api")] if api_url.endswith("/api") else api_url


def serve_foreground(host: str, port: int) -> int:
    """`halo-pipeline server`: a Prefect server + UI in the foreground (for schedules and the UI)."""
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    env = server_env(host, port)
    print(f"Prefect UI: http://{host}:{port}  (runs use it after: export PREFECT_API_URL={env['PREFECT_UI_API_URL']})", flush=True)
    return subprocess.call(cmd, env=env)  # noqa: S603


def watchdog(port: int, idle_minutes: float) -> None:
    url = f"http://127.0.0.1:{port}/api"
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env("127.0.0.1", port),
    )
    deadline = time.time() + STARTUP_TIMEOUT
    while not healthy(url) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    if proc.poll() is not None:
        sys.exit(proc.returncode or 1)
    _write_state({"url": url, "pid": os.getpid(), "server_pid": proc.pid, "port": port})
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop and proc.poll() is None:
            time.sleep(5)
            idle = time.time() - state_file().stat().st_mtime if state_file().exists() else float("inf")
            if idle > idle_minutes * 60 and not _busy():
                break
    finally:
        with contextlib.suppress(OSError, json.JSONDecodeError):
            if json.loads(state_file().read_text()).get("pid") == os.getpid():
                state_file().unlink()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _recorded_url() -> str | None:
    try:
        return str(json.loads(state_file().read_text())["url"])
    except (OSError, ValueError, KeyError):
        return None


def _write_state(info: dict[str, object]) -> None:
    tmp = state_file().with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(state_file())


def stop_background(wait_s: float = 20.0) -> bool:
    """Stop the background server; once this returns (within `wait_s`) it no longer answers."""
    try:
        info = json.loads(state_file().read_text())
        os.kill(int(info["pid"]), signal.SIGTERM)
    except (OSError, ValueError, KeyError):
        return False
    deadline = time.time() + wait_s
    while time.time() < deadline and healthy(str(info.get("url", "")), timeout=0.5):
        time.sleep(0.2)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description="reusable local Prefect server (started by halo-pipeline run)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle-minutes", type=float, default=float(os.environ.get("HALO_PIPELINE_SERVER_IDLE_MINUTES", 30)))
    args = parser.parse_args()
    watchdog(args.port, args.idle_minutes)


if __name__ == "__main__":
    main()
