"""Step kinds by name: built-ins from `halo_pipeline.tasks`, entry points, and `pkg.module:function` paths."""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from dataclasses import replace
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

from halo_pipeline.engine.step import StepKind

ENTRY_POINT_GROUP = "halo_pipeline.steps"


class UnknownStepKind(LookupError):
    def __init__(self, name: str, known: list[str], why: str = ""):
        self.name, self.known, self.why = name, known, why
        super().__init__(f"unknown step kind '{name}'{': ' + why if why else ''}")


def _kind_of(obj: object, name: str, origin: str) -> StepKind:
    kind = getattr(obj, "__halo_step__", None)
    if kind is None:
        # A module may be named directly: take its decorated `run`.
        kind = getattr(getattr(obj, "run", None), "__halo_step__", None)
    if not isinstance(kind, StepKind):
        raise UnknownStepKind(name, [], f"{origin} is not a step kind (decorate a function with @halo_pipeline.engine.step.step)")
    return replace(kind, name=name)


@cache
def builtin_kinds() -> dict[str, StepKind]:
    """Every module in `halo_pipeline.tasks` is a step kind named after its file."""
    spec = importlib.util.find_spec("halo_pipeline.tasks")  # found, not imported here: the engine knows no step kind
    kinds = {}
    for info in pkgutil.iter_modules(list(spec.submodule_search_locations or []) if spec else []):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"halo_pipeline.tasks.{info.name}")
        kinds[info.name] = _kind_of(module, info.name, module.__name__)
    return kinds


@cache
def plugin_kinds() -> dict[str, StepKind]:
    kinds = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        kinds[ep.name] = _kind_of(ep.load(), ep.name, f"entry point {ep.name} = {ep.value}")
    return kinds


def all_kinds() -> dict[str, StepKind]:
    return {**builtin_kinds(), **plugin_kinds()}


def importable(*dirs: Path) -> None:
    """Make a project's own code importable for `uses: my_pkg.mod:fn` (and `name: my_pkg.mod:fn` verifiers) the way
    Python users expect: the recipe's folder and the working directory, as `python -m` puts the working directory on
    the path. Appended (an installed package of the same name wins) and passed on in PYTHONPATH, so that worker
    processes (runner=processes, dask) import the same modules."""
    for d in dirs:
        entry = str(Path(d).resolve())
        if entry not in sys.path:
            sys.path.append(entry)
            get.cache_clear()  # a kind that failed to import may import now
        parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if entry not in parts:
            os.environ["PYTHONPATH"] = os.pathsep.join([*parts, entry])


def search_path_hint() -> str:
    """Where `uses: pkg.module:function` looks, for the hint of a module that is not found."""
    return (
        "modules are imported from the recipe's folder, the working directory and the installed packages: "
        "put the package there, or `pip install -e` it"
    )


@cache
def get(uses: str) -> StepKind:
    """Resolve a `uses:` value: a registered name or an import path `pkg.module:function`."""
    if ":" in uses or ("." in uses and uses not in all_kinds()):
        module_name, _, attr = uses.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownStepKind(uses, [], f"cannot import '{module_name}' ({exc})") from exc
        except Exception as exc:  # the module itself is broken: say where, never a traceback
            raise UnknownStepKind(uses, sorted(all_kinds()), f"importing '{module_name}' raised {type(exc).__name__}: {exc}") from exc
        obj = getattr(module, attr, None) if attr else module
        if obj is None:
            public = sorted(n for n, v in vars(module).items() if getattr(v, "__halo_step__", None) is not None)
            steps = f"; its step kinds: {', '.join(public)}" if public else ""
            raise UnknownStepKind(uses, [], f"'{module_name}' has no '{attr}'{steps}")
        return _kind_of(obj, uses, uses)
    kinds = all_kinds()
    if uses not in kinds:
        raise UnknownStepKind(uses, sorted(kinds))
    return kinds[uses]
