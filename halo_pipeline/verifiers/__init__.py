"""Verifiers: reward functions that turn a completion into a reward in [0, 1].

A verifier is registered with `@register_verifier("name", settings=SettingsModel)` on a function
`fn(settings, sample) -> VerifyResult`. `sample` is a read-only copy of a mapping with `prompt`,
`completion` and the task's own fields. Recipes choose one through the `verifier` config group
(`conf/verifier/<name>.yaml`: `name:` plus its settings), or by path (`uses: my_pkg.mod:fn`).
Verifiers whose settings have `allow_code_execution` run model-written code; they refuse to unless
it is true, and validation says how to turn it on.
"""

from __future__ import annotations

import copy
import functools
import importlib
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENTRY_POINT_GROUP = "halo_pipeline.verifiers"


@dataclass(frozen=True)
class VerifyResult:
    reward: float
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class VerifierSettings(BaseModel):
    """Settings every verifier has; subclass to add its own (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")
    runs_code: ClassVar[bool] = False  # True for verifiers that execute the completion (need allow_code_execution)
    name: str = Field(..., description="Registered verifier name or `module:function`.")
    pass_threshold: float = Field(1.0, ge=0, le=1, description="Reward at or above which a sample counts as passed.")


@dataclass(frozen=True)
class Registered:
    name: str
    settings: type[VerifierSettings]
    fn: Callable[[Any, Mapping[str, Any]], VerifyResult]
    doc_text: str
    check: Callable[[Any], list[str]] | None = None  # environment problems (a missing compiler), for validation

    @property
    def doc(self) -> str:
        return self.doc_text or (self.fn.__doc__ or "").strip()

    @property
    def executes_code(self) -> bool:
        return self.settings.runs_code


_REGISTRY: dict[str, Registered] = {}


def register_verifier(
    name: str, settings: type[VerifierSettings] = VerifierSettings, check: Callable[[Any], list[str]] | None = None
) -> Callable[[Callable[..., VerifyResult]], Callable[..., VerifyResult]]:
    def wrap(fn: Callable[..., VerifyResult]) -> Callable[..., VerifyResult]:
        _REGISTRY[name] = Registered(name, settings, fn, (fn.__doc__ or "").strip(), check)
        fn.__halo_verifier__ = _REGISTRY[name]  # type: ignore[attr-defined]
        return fn

    return wrap


BUILTIN_MODULES = ("builtin", "text", "maths", "compose", "judge", "code_python", "code_native")  # each registers its verifiers


def registry() -> dict[str, Registered]:
    for module in BUILTIN_MODULES:
        importlib.import_module(f"halo_pipeline.verifiers.{module}")
    _load_plugins()
    return dict(_REGISTRY)


@functools.cache
def _load_plugins() -> None:
    """Verifiers other packages register under the entry point group (scanning the installed packages
    for them takes a noticeable fraction of a second, so once per process)."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            ep.load()


class UnknownVerifier(LookupError):
    pass


def lookup(name: str) -> Registered:
    for module in BUILTIN_MODULES:  # the built-ins first, one module at a time: a GRPO worker needs only its own
        if name in _REGISTRY:
            return _REGISTRY[name]
        importlib.import_module(f"halo_pipeline.verifiers.{module}")
    known = registry()
    if name in known:
        return known[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        fn = getattr(importlib.import_module(module), attr, None)
        reg = getattr(fn, "__halo_verifier__", None)
        if reg is None:
            raise UnknownVerifier(f"'{name}' is not a verifier (decorate it with @register_verifier)")
        return reg
    from halo_pipeline.engine.errors import did_you_mean

    hint = did_you_mean(name, known) or f"known verifiers: {', '.join(sorted(known))}"
    raise UnknownVerifier(f"unknown verifier '{name}'; {hint}")


class Verifier:
    """A verifier bound to its validated settings."""

    def __init__(self, reg: Registered, settings: VerifierSettings):
        self.reg, self.settings = reg, settings

    @property
    def name(self) -> str:
        return self.reg.name

    @property
    def executes_code(self) -> bool:
        return bool(getattr(self.settings, "allow_code_execution", False))

    def verify(self, sample: Mapping[str, Any]) -> VerifyResult:
        frozen = MappingProxyType(copy.deepcopy(dict(sample)))  # a verifier cannot change the caller's rows
        try:
            result = self.reg.fn(self.settings, frozen)
        except Exception as exc:  # a verifier bug is a zero with the reason, not a crashed pipeline
            return VerifyResult(0.0, False, {}, f"{type(exc).__name__}: {exc}")
        reward = min(1.0, max(0.0, float(result.reward)))
        return VerifyResult(reward, reward >= self.settings.pass_threshold and result.passed, result.details, result.error)

    def verify_batch(self, samples: Iterable[Mapping[str, Any]], workers: int | None = None) -> list[VerifyResult]:
        samples = list(samples)
        workers = workers or min(len(samples), os.cpu_count() or 1) or 1
        if workers == 1:
            return [self.verify(s) for s in samples]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self.verify, samples))


class SettingsError(UnknownVerifier):
    """Settings the verifier's own model rejects, each at its key."""

    def __init__(self, name: str, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__(f"verifier '{name}' settings: " + "; ".join(f"{k}: {m}" for k, m in errors))


def _as_dict(spec: Any) -> dict[str, Any]:
    """A name, a `{name: ..., settings...}` mapping, or a typed VerifierSpec (engine/groups.py)."""
    if isinstance(spec, str):
        return {"name": spec}
    return dict(spec.model_dump() if hasattr(spec, "model_dump") else spec)


def build_verifier(spec: Any) -> Verifier:
    """From a name or a `{name: ..., settings...}` mapping (a `conf/verifier/*.yaml` node);
    `uses: pkg.mod:fn` names a project's own verifier."""
    data = _as_dict(spec)
    if "uses" in data:
        data["name"] = data.pop("uses")
    if "name" not in data:
        raise UnknownVerifier("a verifier needs `name:` (a registered verifier) or `uses:` (module:function)")
    reg = lookup(str(data["name"]))
    if "allow_code_execution" not in reg.settings.model_fields:
        data.pop("allow_code_execution", None)  # a permission: meaningless, and harmless, for verifiers that run no code
    try:
        settings = reg.settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(reg.name, [(".".join(map(str, e["loc"])), e["msg"]) for e in exc.errors()]) from None
    return Verifier(reg, settings)


def check_spec(spec: Any, key: str = "verifier") -> list[str | tuple[str, str]]:
    """Validation problems of a verifier spec for step kinds' `check` hooks: a settings error comes with its
    key under `key` (reported at `steps.<id>.with.verifier.<setting>`), anything else as text."""
    if spec is None:
        return []
    try:
        verifier = build_verifier(spec)
    except SettingsError as exc:
        return [(f"{key}.{k}", f"verifier '{_as_dict(spec).get('name')}': {m}") for k, m in exc.errors]
    except (UnknownVerifier, ImportError) as exc:
        return [(f"{key}.name", str(exc))]
    return [(key, p) for p in problems(verifier)]


def problems(verifier: Verifier) -> list[str]:
    """Code execution not allowed, or a missing toolchain; composites report their parts'."""
    found: list[str] = []
    if verifier.reg.executes_code and not verifier.executes_code:
        found.append(
            f"verifier '{verifier.name}' runs model-written code, which is off unless the recipe says so: set "
            f"`allow_code_execution: true` in the recipe's verifier (or override verifier.allow_code_execution=true); "
            "it then runs sandboxed (bubblewrap; the tests in a process of their own)"
        )
    elif verifier.reg.check is not None:
        found += [f"verifier '{verifier.name}': {p}" for p in verifier.reg.check(verifier.settings)]
    for part in getattr(verifier.settings, "parts", lambda: [])():
        found += problems(part)
    return found


def code_execution(spec: Any) -> bool:
    """Whether this spec (or a part of it) will run model-written code."""
    return bool(code_execution_modes(spec))


def code_execution_modes(spec: Any) -> set[str]:
    """The sandbox modes ("bubblewrap", "rlimits") of the parts of this spec that run model-written code."""
    if spec is None:
        return set()
    try:
        verifier = build_verifier(spec)
    except (UnknownVerifier, ImportError):
        return set()

    def modes(v: Verifier) -> set[str]:
        own = {str(getattr(v.settings, "sandbox", "bubblewrap"))} if v.executes_code else set()
        return own.union(*(modes(p) for p in getattr(v.settings, "parts", lambda: [])()))

    return modes(verifier)
