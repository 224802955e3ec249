"""`halo-pipeline cache gc`: remove cache entries no run directory references any more.

A run directory references entries through its `steps/<id>` links and its manifest's output paths.
Runs register themselves with the cache when they link into it; directories under the run roots
(`outputs/`, `multirun/`) count too. Entries some existing run references are always kept;
unreferenced ones are removed (only those unused for longer than `--older-than`, when given), with
half-written work (`partial/`, `trash/`) nobody is writing to, and lock files nobody holds.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from halo_pipeline.engine.cache import Cache, is_locked, remove

MANIFEST = "replay.json"


@dataclass
class Collected:
    kept: int = 0
    removed: list[tuple[Path, int]] = field(default_factory=list)  # (path, bytes)

    @property
    def freed(self) -> int:
        return sum(size for _, size in self.removed)


def parse_age(text: str) -> float:
    """Seconds in `30m`, `12h`, `7d` or a plain number of days."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise ValueError(f"'{text}' is not an age: write e.g. 30m, 12h, 7d or 2w")
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "": 86400}[m.group(2)]
    return float(m.group(1)) * unit


def referenced(cache: Cache, run_roots: list[Path]) -> set[str]:
    """Keys of the entries that existing run directories point at."""
    runs = {r for r in cache.runs() if (r / MANIFEST).exists() or (r / "steps").is_dir()}
    for root in run_roots:
        if root.is_dir():
            runs |= {m.parent for m in root.rglob(MANIFEST) if ".cache" not in m.parts}
    root = cache.root.resolve()
    keys: set[str] = set()
    for run in runs:
        targets: list[Path] = []
        steps = run / "steps"
        if steps.is_dir():
            targets += [link.resolve() for link in steps.iterdir() if link.is_symlink()]
        with contextlib.suppress(OSError, ValueError):
            manifest = json.loads((run / MANIFEST).read_text())
            for step in manifest.get("steps", {}).values():
                targets += [Path(out["path"]).resolve() for out in (step.get("outputs") or {}).values() if out.get("path")]
        for target in targets:
            if target.is_relative_to(root):
                parts = target.relative_to(root).parts
                if len(parts) >= 2 and len(parts[1]) == 64:
                    keys.add(parts[1])
    return keys


def collect(cache: Cache, run_roots: list[Path], older_than: float | None = None, dry_run: bool = False) -> Collected:
    """Remove what no run references (and, with `older_than` seconds, was not used for that long)."""
    keep = referenced(cache, run_roots)
    now = time.time()
    found = Collected()

    def stale(path: Path) -> bool:
        try:
            return older_than is None or now - path.stat().st_mtime > older_than
        except FileNotFoundError:
            return False

    def drop(path: Path) -> None:
        found.removed.append((path, _size(path)))
        if not dry_run:
            remove(path)

    for entry in cache.entries():
        if entry.name in keep or not stale(entry):
            found.kept += 1
            continue
        with cache.lock(entry.name):  # not while a run is committing or reusing it
            drop(entry)
            if not dry_run:
                remove(cache.root / "verified" / f"{entry.name}.json")
    for work in sorted((cache.root / "partial").glob("*")):
        if not is_locked(cache.root / "locks" / f"{work.name}.lock") and stale(work):
            drop(work)
    for leftover in sorted((cache.root / "trash").glob("*")):
        drop(leftover)
    if not dry_run:
        for lock in (cache.root / "locks").glob("*.lock"):
            if not is_locked(lock) and not (cache.root / "partial" / lock.stem).exists():
                lock.unlink(missing_ok=True)  # `hold_lock` re-checks the inode, so this is safe
        for ref in (cache.root / "runs").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                if not Path(json.loads(ref.read_text())["run_dir"]).exists():
                    ref.unlink()
    return found


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
