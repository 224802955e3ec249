"""Content-addressed step cache: digests, atomic writes, and records that are trusted only when verified."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
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


# A file changed within this long before it was verified may change again within the same timestamp
# tick, unseen by its stat signature ("racy git"): such outputs are hashed again next time, not memoized.
RACY_NS = 2_000_000_000


def stat_signature(path: Path) -> list[list[Any]]:
    """What changes whenever the bytes of a file (or of any file in a directory) can have changed: its
    relative path, size, mtime, ctime and inode. ctime cannot be set back by a user, so even an edit that
    restores the mtime shows. The same files `digest` reads (symlinks followed)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    signature = []
    for f in files:
        st = f.stat()
        signature.append([f.relative_to(path).as_posix() if f != path else ".", st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return signature


class DigestMemo:
    """SHA-256 of files outside the cache (models, `file:` inputs), remembered across processes by stat
    signature in `<cache>/verified/files.json`, so a 500 MB model is hashed once per content, not once per
    run. Racily-changed files (see RACY_NS) are not remembered. Losing an update to a concurrent writer
    only costs a re-hash."""

    def __init__(self, root: Path) -> None:
        self.path = root / "verified" / "files.json"
        self._known: dict[str, list[Any]] | None = None

    def digest(self, path: Path) -> str:
        path = Path(path).resolve()
        if path.is_dir():
            h = hashlib.sha256()  # the formula of `digest`, over remembered file digests
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                h.update(f.relative_to(path).as_posix().encode() + b"\0")
                h.update(self.digest(f).encode())
            return h.hexdigest()
        st = path.stat()
        signature = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        known = self._load()
        seen = known.get(str(path))
        if seen and seen[:4] == signature:
            return str(seen[4])
        value = sha256_file(path)
        if time.time_ns() - st.st_ctime_ns > RACY_NS:
            known[str(path)] = [*signature, value]
            self._save(str(path))
        return value

    def _load(self) -> dict[str, list[Any]]:
        if self._known is None:
            try:
                self._known = dict(json.loads(self.path.read_text()))
            except (OSError, ValueError):
                self._known = {}
        return self._known

    def _save(self, changed: str) -> None:
        try:
            on_disk = dict(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            on_disk = {}
        on_disk[changed] = self._load()[changed]  # others' entries kept
        with contextlib.suppress(OSError):
            atomic_write_json(self.path, on_disk)


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

    Any number of processes may share a root (terminals, sweep jobs, scheduled runs, workers on a
    shared filesystem). A key is computed by one of them at a time: `lock(key)` is an exclusive
    `flock` on `<root>/locks/<key>.lock`, and the holder alone writes `<root>/partial/<key>/`
    (kept when interrupted, so a resumable step can continue). `commit` renames the finished
    directory into place; a valid entry is never replaced, and nothing half-written ever sits at
    an entry's path. Committed files are made read-only: no command writes into the cache.
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
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None
        if not isinstance(record, dict) or not isinstance(record.get("outputs"), dict):
            return None
        if verify and not self._verify(key, record["outputs"]):
            return None
        return record

    def _verify(self, key: str, outputs: Mapping[str, Any]) -> bool:
        """Whether every output still has its recorded digest. Bytes are hashed once per content: an output
        whose files show the stat signature seen when they last verified is not read again (git's index and
        DVC's state work the same way), so a rerun of large cached models does not re-hash gigabytes."""
        memo_path = self.root / "verified" / f"{key}.json"
        try:
            memo = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            memo = {}
        fresh = {}
        for out in outputs.values():
            path = self.entry(key) / out["path"]
            try:
                signature = stat_signature(path)
                seen = memo.get(out["path"])
                if not (seen and seen["sha256"] == out["sha256"] and seen["stat"] == signature) and digest(path) != out["sha256"]:
                    return False
            except (FileNotFoundError, NotADirectoryError):
                return False
            if all(time.time_ns() - ctime > RACY_NS for _, _, _, ctime, _ in signature):
                fresh[out["path"]] = {"sha256": out["sha256"], "stat": signature}
        if fresh != memo:
            with contextlib.suppress(OSError):
                atomic_write_json(memo_path, fresh)
        return True

    @contextlib.contextmanager
    def lock(self, key: str, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the key's lock; `on_wait(holder)` is called once if another process holds it first."""
        with hold_lock(self.root / "locks" / f"{key}.lock", on_wait):
            yield

    def commit(self, key: str, record: Mapping[str, Any]) -> Path:
        """Write the record into the partial directory, then rename the whole entry into place.

        Call with the key's lock held, after a lookup that found no valid entry: an entry still at
        the final path is then a tampered or torn one and is moved aside, never merged into.
        """
        work = self.partial(key)
        atomic_write_json(work / RECORD, dict(record))
        _read_only(work)
        final = self.entry(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        stale = self.root / "trash" / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        if final.exists() or final.is_symlink():
            stale.parent.mkdir(parents=True, exist_ok=True)
            os.replace(final, stale)
        os.replace(work, final)
        _fsync_dir(final.parent)
        remove(stale)
        return final

    def discard(self, key: str) -> None:
        remove(self.entry(key))
        remove(self.root / "verified" / f"{key}.json")

    def touch(self, key: str) -> None:
        """Mark an entry as used now (`cache gc --older-than` keeps recently used entries)."""
        with contextlib.suppress(OSError):
            os.utime(self.entry(key))

    def register_run(self, run_dir: Path) -> None:
        """Remember a run directory that links into this cache: housekeeping keeps what it references."""
        ref = self.root / "runs" / f"{sha256_text(str(run_dir.resolve()))[:20]}.json"
        if not ref.exists():
            atomic_write_json(ref, {"run_dir": str(run_dir.resolve())})

    def runs(self) -> list[Path]:
        """Run directories registered with this cache (some may have been deleted since)."""
        found = []
        for ref in sorted((self.root / "runs").glob("*.json")):
            with contextlib.suppress(OSError, ValueError, KeyError):
                found.append(Path(json.loads(ref.read_text())["run_dir"]))
        return found

    def entries(self) -> Iterator[Path]:
        """Every committed entry directory."""
        for shard in sorted(self.root.glob("[0-9a-f][0-9a-f]")):
            yield from sorted(p for p in shard.iterdir() if p.is_dir() and len(p.name) == 64)


@contextlib.contextmanager
def hold_lock(path: Path, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """An exclusive `flock` on `path` (created if needed), released when the block ends or the process dies.

    The lock file is re-checked after locking: housekeeping may unlink an unheld lock file, and a
    lock on an unlinked inode would not exclude a process that opened the new one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait(_holder(fd))
                    on_wait = None
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                continue  # the file was removed while we waited: lock the current one
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()}".encode(), 0)
            yield
            return
        finally:
            os.close(fd)  # releases the lock


def is_locked(path: Path) -> bool:
    """Whether some process holds the lock file at `path` right now."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
    except OSError:
        return "another process"


def _read_only(root: Path) -> None:
    """Committed files are read-only, like DVC's cache: an accidental write fails instead of poisoning a result."""
    for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
        if path.is_file() and not path.is_symlink():
            mode = path.stat().st_mode
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
