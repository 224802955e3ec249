"""Step kinds by name: built-ins from `halo_pipeline.tasks`, entry points, and `pkg.module:function` paths."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from dataclasses import replace
from functools import cache
from importlib.metadata import entry_points

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


@cache
def get(uses: str) -> StepKind:
    """Resolve a `uses:` value: a registered name or an import path `pkg.module:function`."""
    if ":" in uses or ("." in uses and uses not in all_kinds()):
        module_name, _, attr = uses.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownStepKind(uses, sorted(all_kinds()), f"cannot import '{module_name}' ({exc})") from exc
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
