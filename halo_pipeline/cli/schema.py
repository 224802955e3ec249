"""`halo-pipeline schema`: the JSON Schema of recipes, for editors."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(sub: Any) -> None:
    sc = sub.add_parser("schema", help="JSON Schema of recipes (for editors)")
    sc.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from halo_pipeline.views.schema import recipe_schema

    print(json.dumps(recipe_schema(), indent=2, sort_keys=True))
    return 0
