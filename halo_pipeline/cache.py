"""Content-addressed step cache: digests, atomic writes, and records that are trusted only when verified."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

RECORD = "record.json"
CHUNK = 1 << 20


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digest(path: Path) -> str:
    """SHA-256 of a file, or of a directory's relative paths and file contents (symlinks followed)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, sort_keys=True, indent=2, default=str) + "\n")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write a file or directory into; renamed to `path` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    remove(tmp)
    try:
        yield tmp
        remove(path)
        os.replace(tmp, path)
    finally:
        remove(tmp)


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def default_cache_dir() -> Path:
    return Path(os.environ.get("HALO_PIPELINE_CACHE", "outputs/.cache")).resolve()


class Cache:
    """`<root>/<kk>/<key>/` holds a finished step's outputs and its `record.json`, written last.

    A step writes into `<root>/partial/<key>/` (kept when interrupted, so a resumable step can
    continue) and the directory is renamed into place only after the record is complete.
    """

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_cache_dir()

    def entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    def partial(self, key: str) -> Path:
        return self.root / "partial" / key

    def lookup(self, key: str, verify: bool = True) -> dict[str, Any] | None:
        """The record of a finished entry, or None if missing, partial or no longer matching its digests."""
        rec_path = self.entry(key) / RECORD
        try:
            record = json.loads(rec_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if verify:
            for out in record.get("outputs", {}).values():
                p = self.entry(key) / out["path"]
                try:
                    if digest(p) != out["sha256"]:
                        return None
                except FileNotFoundError:
                    return None
        return record

    def commit(self, key: str, record: Mapping[str, Any]) -> Path:
        """Write the record into the partial directory, then rename the whole entry into place."""
        work = self.partial(key)
        atomic_write_json(work / RECORD, dict(record))
        final = self.entry(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        stale = final.parent / f".{key}.stale.{os.getpid()}"
        if final.exists():
            os.replace(final, stale)  # a tampered entry being replaced
        os.replace(work, final)
        remove(stale)
        return final

    def discard(self, key: str) -> None:
        remove(self.entry(key))
