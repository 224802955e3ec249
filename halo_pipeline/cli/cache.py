"""`halo-pipeline cache gc`: remove cache entries no run directory references."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from halo_pipeline.engine.errors import Issue, RecipeError


def add_parser(sub: Any) -> None:
    ca = sub.add_parser("cache", help="cache housekeeping: `cache gc` removes entries no run directory references")
    ca.add_argument("action", choices=["gc"])
    ca.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    ca.add_argument("--older-than", metavar="AGE", help="only entries unused for longer than AGE (30m, 12h, 7d)")
    ca.add_argument("--root", action="append", help="where run directories are (default: outputs/ and multirun/); repeatable")
    ca.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from halo_pipeline.engine import housekeeping
    from halo_pipeline.engine.cache import Cache

    try:
        older = housekeeping.parse_age(args.older_than) if args.older_than else None
    except ValueError as exc:
        raise RecipeError([Issue(str(exc), key="--older-than")]) from None
    cache = Cache()
    roots = [Path(r) for r in (args.root or ["outputs", "multirun"])]
    found = housekeeping.collect(cache, roots, older, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for path, size in found.removed:
        print(f"{verb} {path.relative_to(cache.root)} ({housekeeping.human(size)})")
    print(f"{cache.root}: {verb} {len(found.removed)}, {housekeeping.human(found.freed)}; kept {found.kept} entries that runs reference")
    return 0
