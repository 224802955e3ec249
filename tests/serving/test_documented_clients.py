"""The `openai` snippets of docs/serve.md run as a reader would paste them, against a server of the tiny
model; a single-model server answers whatever id a client sends (llama.cpp's behaviour), a server with
adapters 404s an id it does not serve."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import openai
import pytest

from conftest import REPO
from halo_pipeline.serving.launch import Running

DOC = REPO / "docs" / "serve.md"


def python_snippets(doc: Path) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^```python\n(.*?)^```", doc.read_text(), re.S | re.M) if "OpenAI(" in m.group(1)]


@pytest.fixture(scope="module")
def tiny_server() -> Running:
    from halo_pipeline.runtimes.catalog import build_tiny

    with Running(build_tiny(), "hf") as running:
        yield running


def test_the_serve_pages_openai_snippet_runs_as_shown(tiny_server: Running) -> None:
    (snippet,) = python_snippets(DOC)
    code = snippet.replace("http://127.0.0.1:8001/v1", tiny_server.url)
    assert code != snippet, "the snippet no longer shows the default address"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(DOC), "exec"), {})
    assert out.getvalue()  # it streamed text


def test_a_single_model_server_answers_any_id(tiny_server: Running) -> None:
    client = openai.OpenAI(base_url=tiny_server.url, api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="model", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert reply.model == tiny_server.model_id and reply.choices[0].message.content is not None


def test_with_adapters_an_id_that_is_not_served_is_a_404(tiny_server: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiny_server.engine, "adapters", {"a1": Path("unused")})  # only the id check sees it
    client = openai.OpenAI(base_url=tiny_server.url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="model", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    assert f"this server serves {tiny_server.model_id}, a1" in str(err.value)
