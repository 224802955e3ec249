"""Trainers TRL 1.16 keeps in `trl.experimental` (CPO, and ORPO): imported without its notice that the API is
unstable: the pinned TRL version is what the tests train with."""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def experimental(module: str, *names: str) -> tuple[Any, ...]:
    """`names` from `trl.experimental.<module>`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*trl\.experimental.*")
        found = importlib.import_module(f"trl.experimental.{module}")
    return tuple(getattr(found, name) for name in names)
