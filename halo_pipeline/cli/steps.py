"""`halo-pipeline steps`: the step kinds with their params and artifact types (--markdown: docs/steps.md)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    st = sub.add_parser("steps", help="list step kinds with their params and artifact types")
    st.add_argument("--markdown", action="store_true", help="the reference page (docs/steps.md)")
    st.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from halo_pipeline.views.reference import render_steps

    print(render_steps(markdown=args.markdown))
    return 0
