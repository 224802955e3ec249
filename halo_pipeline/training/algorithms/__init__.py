"""The `algorithm` config group: one module per algorithm, registered by its file name (`dpo.py` is
`algorithm=dpo` is `name: dpo`, which is all `conf/algorithm/dpo.yaml` holds). A module holds its settings with
their defaults (the one source: docs/steps.md lists them from here), the artifact types it trains on, and its TRL
`<algo>_config` / `<algo>_trainer` pair; a new algorithm is one module here and a one-line YAML file there."""

from __future__ import annotations

import functools
import importlib
import operator
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, TypeAdapter

from halo_pipeline.training.algorithms._base import Algorithm, Settings, TrainingParams
from halo_pipeline.training.configs import common_args


def _discover() -> dict[str, Algorithm]:
    found: dict[str, Algorithm] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        algorithm = importlib.import_module(f"{__name__}.{info.name}").ALGORITHM
        if algorithm.name != info.name:
            raise TypeError(
                f"training/algorithms/{info.name}.py declares name {algorithm.name!r}: a module's settings are named as its file"
            )
        found[info.name] = algorithm
    return found


REGISTRY = _discover()
NAMES = tuple(REGISTRY)

if TYPE_CHECKING:
    AnySettings = Settings
else:  # the discriminated union of every module's settings: `name` picks the model, its fields are checked
    AnySettings = Annotated[functools.reduce(operator.or_, (a.settings for a in REGISTRY.values())), Field(discriminator="name")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnySettings)


def get(name: str) -> Algorithm:
    return REGISTRY[name]


def parse(node: dict[str, Any]) -> Settings:
    settings: Settings = _ADAPTER.validate_python(node)
    return settings


def input_types(name: str) -> tuple[str, ...]:
    """The artifact types algorithm `name` trains on (its `dataset` input)."""
    return REGISTRY[name].inputs


def trainer_config(params: TrainingParams, out_dir: Path, tracking: dict[str, Any] | None = None) -> Any:
    """The TRL config object of the params' algorithm (RAFT: the one of its SFT phases)."""
    algo = params.algorithm
    return REGISTRY[algo.name].config(algo, params, common_args(params, algo, out_dir, tracking))


__all__ = ["NAMES", "REGISTRY", "Algorithm", "AnySettings", "Settings", "get", "input_types", "parse", "trainer_config"]
