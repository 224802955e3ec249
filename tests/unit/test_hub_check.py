"""An uncached hub dataset is asked for on the hub at validation, with a short timeout: unreachable, unknown or
gated is a validation error naming the offline switch (issue: it passed validate, then the run retried for 24 s)."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from halo_pipeline.data import hub

STATUS = {"/api/datasets/org/there": 200, "/api/datasets/org/gated": 401}


class Hub(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:  # noqa: N802
        self.send_response(STATUS.get(self.path, 404))
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    hub.dataset_problem.cache_clear()
    yield url
    server.shutdown()
    hub.dataset_problem.cache_clear()


def test_the_hub_is_asked(fake_hub: str) -> None:
    assert hub.dataset_problem("org/there") is None
    assert "has no dataset 'org/missing'" in (hub.dataset_problem("org/missing") or "")
    assert "HF_TOKEN" in (hub.dataset_problem("org/gated") or "")


def test_an_unreachable_hub_is_said_quickly_with_the_offline_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    hub.dataset_problem.cache_clear()
    started = time.monotonic()
    why = hub.dataset_problem("org/any") or ""
    assert time.monotonic() - started < hub.TIMEOUT_S + 1
    assert "could not be reached" in why and "HF_HUB_OFFLINE=1" in why
    hub.dataset_problem.cache_clear()


def test_validate_reports_an_unknown_hub_dataset(fake_hub: str, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from conftest import REPO
    from halo_pipeline.engine.errors import RecipeError
    from halo_pipeline.engine.plan import plan_recipe

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    shutil.copytree(REPO / "recipes", project / "recipes", dirs_exist_ok=True)
    with pytest.raises(RecipeError) as err:
        plan_recipe(project / "recipes/quickstart.yaml", ["model=tiny", "steps.synthesize.with.source=hf:org/missing"])
    (issue,) = err.value.issues
    assert issue.key == "steps.synthesize.with.source" and "has no dataset 'org/missing'" in issue.message
    plan_recipe(project / "recipes/quickstart.yaml", ["model=tiny", "steps.synthesize.with.source=hf:org/there"])
