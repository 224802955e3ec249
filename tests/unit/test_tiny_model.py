"""The tiny model is the same bytes on every machine: stored in the package, not trained where the tests run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from halo_pipeline.runtimes import catalog


def test_build_tiny_copies_the_stored_files_byte_for_byte() -> None:
    built = catalog.build_tiny()
    stored = sorted(p.name for p in catalog.TINY_FILES.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(stored)
    for name in stored:
        assert (built / name).read_bytes() == (catalog.TINY_FILES / name).read_bytes(), name
    assert catalog.fingerprint("tiny") == {"model": catalog.TINY_VERSION, "sha256": catalog.tiny_digest()}


def test_the_stored_weights_are_small_and_the_digest_covers_them(tmp_path: Path) -> None:
    weights = catalog.TINY_FILES / "model.safetensors"
    assert weights.stat().st_size < 1_000_000
    before = catalog.tiny_digest()
    h = hashlib.sha256()
    for f in sorted(catalog.TINY_FILES.iterdir()):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    assert before == h.hexdigest()


def test_the_tokenizer_trains_to_the_stored_one_on_any_machine(tmp_path: Path) -> None:
    """BPE training is integer work: the recipe in runtimes/tiny.py still makes the stored vocabulary and merges."""
    from halo_pipeline.runtimes.tiny import train_tokenizer

    train_tokenizer().save_pretrained(tmp_path)
    fresh, stored = (json.loads((d / "tokenizer.json").read_text())["model"] for d in (tmp_path, catalog.TINY_FILES))
    assert fresh["vocab"] == stored["vocab"] and fresh["merges"] == stored["merges"]


@pytest.mark.integration
def test_the_stored_model_has_learned_its_toy_text() -> None:
    """What the stored weights are for: far below a uniform guess (ln 400 = 6.0 nats) on the text they learned."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from halo_pipeline.runtimes.tiny import TOY_TEXT

    path = catalog.build_tiny()
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    ids = tok(TOY_TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        assert model(input_ids=ids, labels=ids).loss < 1.5
