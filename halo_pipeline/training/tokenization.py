"""The tokenizer and chat template a train step tokenizes with, as content for its cache key: another chat
template or tokenizer makes other training examples (other tokens, other loss masks), so it trains again.

Read from where the files already are, without loading or downloading anything (cache keys are computed by
`plan` and before every run): a local model directory's tokenizer files, or the snapshot of a hub model in the
local Hugging Face cache. A GGUF file (and the stored tiny model) carries its tokenizer and chat template
inside, so its own digest, already in the key, covers them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from halo_pipeline.training.params import TrainingParams

# what AutoTokenizer reads (the chat template lives in chat_template.jinja/.json or tokenizer_config.json)
FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "chat_template.json", "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt",
)  # fmt: skip


def fingerprint(ref: Any) -> dict[str, Any]:
    """`{"files": {name: sha256}, "chat_template": sha256 | None}` of the reference's tokenizer, or where it is
    covered otherwise (`{"in": "model"}`: inside the model file; `{"hub": id, "cached": False}`: not downloaded yet)."""
    from halo_pipeline.runtimes.catalog import source_of

    source, hf_id = source_of(ref)
    if source in ("builtin:tiny", "tiny") or source.startswith(("pypi:", "pypi-chunks:")) or source.endswith(".gguf"):
        return {"in": "model"}
    local = Path(source).expanduser()
    if local.is_dir():
        return _of(local)
    snapshot = _hub_snapshot(hf_id or source)
    return _of(snapshot) if snapshot is not None else {"hub": hf_id or source, "cached": False}


def _of(folder: Path) -> dict[str, Any]:
    files = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FILES if (folder / name).is_file()}
    return {"files": files, "chat_template": _template_digest(folder)}


def _template_digest(folder: Path) -> str | None:
    """The chat template's own text, wherever the folder keeps it."""
    text: Any = None
    if (folder / "chat_template.jinja").is_file():
        text = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    else:
        for name, key in (("chat_template.json", "chat_template"), ("tokenizer_config.json", "chat_template")):
            if (folder / name).is_file():
                try:
                    text = json.loads((folder / name).read_text(encoding="utf-8")).get(key)
                except (ValueError, AttributeError):
                    text = None
                if text is not None:
                    break
    if text is None:
        return None
    return hashlib.sha256(json.dumps(text, sort_keys=True).encode()).hexdigest()


def _hub_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder `from_pretrained` would read offline (refs/main of the local hub cache), if any."""
    if os.environ.get("HF_HUB_CACHE"):
        cache = Path(os.environ["HF_HUB_CACHE"])
    else:
        home = os.environ.get("HF_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "huggingface")
        cache = Path(home).expanduser() / "hub"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if not ref.is_file():
        return None
    snapshot = repo / "snapshots" / ref.read_text().strip()
    return snapshot if snapshot.is_dir() else None


def load_tokenizer(params: TrainingParams) -> Any:
    """The tokenizer the train step uses (its pad token falls back to EOS, as the trainer's does)."""
    from transformers import AutoTokenizer

    from halo_pipeline.runtimes.catalog import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve(params.model))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
