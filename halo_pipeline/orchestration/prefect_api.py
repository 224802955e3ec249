"""The few Prefect REST calls that record a run whose steps all came from the cache, with the standard
library alone: importing `prefect` costs seconds, these calls milliseconds.

The record is the one a flow run of `pipeline` leaves when every task ends `Cached`: the `halo-pipeline`
flow, a flow run with the same parameters (so "Retry" and "Custom run" in the UI run the recipe for
real), one task run per step named `<step>:<kind>` wired to its upstream steps, a log line per step,
and the final state.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

FLOW_NAME = "halo-pipeline"  # the name of the `pipeline` flow in flow.py
TIMEOUT_S = 10.0
RETRY_STATUS = {429, 502, 503, 504}  # a busy server (SQLite's lock): Prefect's own client retries these too


class PrefectAPIError(RuntimeError):
    """The API could not be reached or refused a call."""


class PrefectAPI:
    def __init__(self, api_url: str, api_key: str | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self._url = urlsplit(self.api_url)
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self._connection: http.client.HTTPConnection | None = None  # one kept-alive connection, used in turn

    @classmethod
    def from_env(cls) -> PrefectAPI | None:
        url = os.environ.get("PREFECT_API_URL")
        return cls(url, os.environ.get("PREFECT_API_KEY")) if url else None

    def call(self, method: str, path: str, body: Any = None, attempts: int = 6) -> Any:
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(attempts):
            try:
                status, payload = self._send(method, self._url.path + path, data)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                status, payload = None, str(exc).encode()
            if status is not None and status < 300:
                return json.loads(payload) if payload else None
            if status is not None and status not in RETRY_STATUS or attempt == attempts - 1:
                break
            time.sleep(0.05 * 2**attempt)
        raise PrefectAPIError(f"{method} {path}: {status or 'no answer'} {payload[:200].decode(errors='replace')}")

    def _send(self, method: str, path: str, data: bytes | None) -> tuple[int, bytes]:
        if self._connection is None:
            kind = http.client.HTTPSConnection if self._url.scheme == "https" else http.client.HTTPConnection
            self._connection = kind(self._url.hostname or "127.0.0.1", self._url.port, timeout=TIMEOUT_S)
        self._connection.request(method, path, body=data, headers=self.headers)
        response = self._connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def ui_url(self, flow_run_id: str) -> str:
        """The flow run's page, as Prefect's own `flow_run.get_flow_run_ui_url()` writes it: PREFECT_UI_URL when
        set, else the API's host (where `prefect server` serves the UI)."""
        base = os.environ.get("PREFECT_UI_URL")
        if not base:
            parts = urlsplit(self.api_url)
            base = f"{parts.scheme}://{parts.netloc}"
        return f"{base.rstrip('/')}/flow-runs/flow-run/{flow_run_id}"

    def start_flow_run(self, parameters: dict[str, Any], tags: list[str]) -> dict[str, Any]:
        flow = self.call("POST", "/flows/", {"name": FLOW_NAME})  # get-or-create by name
        return dict(
            self.call(
                "POST",
                "/flow_runs/",
                {"flow_id": flow["id"], "parameters": parameters, "tags": tags, "state": {"type": "RUNNING", "name": "Running"}},
            )
        )

    def record_task_runs(self, flow_run_id: str, steps: list[dict[str, Any]]) -> dict[str, str]:
        """One `Cached` task run per step (`id`, `name`, `upstream`: step ids, `message`), upstream first."""
        ids = {s["id"]: str(uuid.uuid4()) for s in steps}
        for step in steps:
            self.call(
                "POST",
                "/task_runs/",
                {
                    "id": ids[step["id"]],
                    "flow_run_id": flow_run_id,
                    "name": step["name"],
                    "task_key": f"halo-step-{step['id']}",
                    "dynamic_key": "0",
                    "state": {"type": "COMPLETED", "name": "Cached", "message": step["message"]},
                    "task_inputs": {"wait_for": [{"input_type": "task_run", "id": ids[u]} for u in step["upstream"] if u in ids]},
                },
            )
        return ids

    def log(self, flow_run_id: str, lines: list[tuple[str | None, str]]) -> None:
        """Log lines (task run id or None, message) into the flow run's logs."""
        now = dt.datetime.now(dt.UTC).isoformat()
        self.call(
            "POST",
            "/logs/",
            [
                {
                    "name": "halo_pipeline",
                    "level": 20,
                    "message": message,
                    "timestamp": now,
                    "flow_run_id": flow_run_id,
                    "task_run_id": task,
                }
                for task, message in lines
            ],
        )

    def finish_flow_run(self, flow_run_id: str, state_type: str = "COMPLETED", message: str | None = None) -> None:
        state = {"type": state_type, "name": state_type.title(), "message": message}
        self.call("POST", f"/flow_runs/{flow_run_id}/set_state", {"state": state, "force": True})
