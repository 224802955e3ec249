"""The train step's cache key holds its tokenizer's and chat template's content: the same weights with another
chat template (or tokenizer) make other examples, so the step trains again; the same files keep it cached."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from halo_pipeline.engine import registry
from halo_pipeline.runtimes.catalog import build_tiny


def train_fingerprint(model: str) -> dict[str, object]:
    kind = registry.get("train")
    assert kind.fingerprint is not None
    return dict(kind.fingerprint(kind.params.model_validate({"model": model})))


def test_a_local_models_chat_template_and_tokenizer_are_in_the_key(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(build_tiny(), model)
    before = train_fingerprint(str(model))
    assert before["tokenizer"]["chat_template"] is not None and "tokenizer.json" in before["tokenizer"]["files"]  # type: ignore[index]
    assert train_fingerprint(str(model)) == before
    config = json.loads((model / "tokenizer_config.json").read_text())
    where = model / "chat_template.jinja" if (model / "chat_template.jinja").is_file() else None
    if where is not None:
        where.write_text(where.read_text() + "{# another template #}")
    else:
        config["chat_template"] += "{# another template #}"
        (model / "tokenizer_config.json").write_text(json.dumps(config))
    after = train_fingerprint(str(model))
    assert after["tokenizer"]["chat_template"] != before["tokenizer"]["chat_template"]  # type: ignore[index]


def test_a_hub_models_tokenizer_is_read_from_the_local_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert train_fingerprint("halo-test/absent")["tokenizer"] == {"hub": "halo-test/absent", "cached": False}
    repo = tmp_path / "hub/models--halo-test--chat"
    snapshot = repo / "snapshots/0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text("0123abcd")
    (snapshot / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    first = train_fingerprint("halo-test/chat")["tokenizer"]
    (snapshot / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages | tojson }}"}))
    second = train_fingerprint("halo-test/chat")["tokenizer"]
    assert first != second and first["chat_template"] != second["chat_template"]  # type: ignore[index]
    assert train_fingerprint("tiny")["tokenizer"] == {"in": "model"}  # stored bytes: the model's digest covers it
