"""Which dotted keys a recipe may set with a plain `key=value` override: the documented ones.

A step's params (`steps.train.with.lora_r`), a group's fields (`algorithm.beta` when the chosen algorithm has
one) and the recipe's own keys are known to the schema, so an override may set them whether or not the recipe
wrote them; `+key=value` stays for keys nobody defines. Works on plain dicts (config.py converts).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

# Groups whose nodes the engine itself reads, with their models (others are found through the steps that take them).
ENGINE_GROUPS = {
    "backend": "Backend",
    "model": "ModelRef",
    "quant": "Quant",
    "tracking": "Tracking",
    "verifier": "VerifierSpec",
    "runner": "Runner",
}


def settable(
    key: str, raw: dict[str, Any], resolved: dict[str, Any], choices: dict[str, str], conf_dirs: Sequence[Path] = ()
) -> tuple[bool, str | None]:
    """Whether `key` is a documented key of this composed recipe, and if not, a hint for the user.

    Args:
        key: the dotted key of the override.
        raw: the composed config with interpolations unresolved (`${algorithm}` shows which step takes a group).
        resolved: the same config resolved (as far as it resolves).
        choices: the group choices (`algorithm: sft`).
        conf_dirs: the project's own `conf/` folders (searched before the packaged one).
    """
    parts = key.split(".")
    head, rest = parts[0], parts[1:]
    if head == "steps" and len(parts) >= 3:
        return _step_key(parts[1], parts[2:], resolved)
    if head in choices:
        return _group_key(head, choices[head], rest, raw, resolved, conf_dirs)
    from halo_pipeline.engine.recipe import RecipeModel

    field = RecipeModel.model_fields.get(head)
    if field is not None and head != "steps":
        return walk(field.annotation, rest, resolved.get(head)), None
    return False, None


def _kind_params(sid: str, resolved: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    from halo_pipeline.engine import registry

    node = (resolved.get("steps") or {}).get(sid)
    if not isinstance(node, dict):
        return None, None
    try:
        return registry.get(str(node.get("uses") or sid)).params, node
    except registry.UnknownStepKind:
        return None, node


def _step_key(sid: str, path: list[str], resolved: dict[str, Any]) -> tuple[bool, str | None]:
    from halo_pipeline.engine.recipe import StepSpec

    params, node = _kind_params(sid, resolved)
    if node is None:
        return False, None
    if path[0] == "with":
        return (params is not None and walk(params, path[1:], node.get("with"))), None
    return walk(StepSpec, path, node), None


def _group_key(
    group: str, choice: str, path: list[str], raw: dict[str, Any], resolved: dict[str, Any], conf_dirs: Sequence[Path]
) -> tuple[bool, str | None]:
    if not path:
        return False, None
    takers = []  # (params model, param name, the step's resolved `with`) of each step that takes the whole group node
    for sid, node in (raw.get("steps") or {}).items():
        for param, value in ((node or {}).get("with") or {}).items():
            if value == f"${{{group}}}":
                params, rnode = _kind_params(str(sid), resolved)
                if params is not None:
                    takers.append((params, param, (rnode or {}).get("with")))
    model: Any = None
    if not takers and group in ENGINE_GROUPS:
        from halo_pipeline.engine import groups

        model = getattr(groups, ENGINE_GROUPS[group])
    if takers:
        ok = any(walk(p, [param, *path], w) for p, param, w in takers)
    elif model is not None:
        ok = walk(model, path, resolved.get(group))
    else:  # a group no schema describes: its fields are the keys its chosen option writes (and those composed)
        ok = False
    if ok:
        return True, None
    fields = {name: set(data) for name, data in _options(group, conf_dirs).items()}
    for name, typed in _typed_options(group).items():  # an option's settings are its model's fields, not only what its YAML writes
        fields[name] = fields.get(name, set()) | typed
    others = sorted(name for name, keys in fields.items() if name != choice and path[0] in keys)
    if others:
        has = ", ".join(f"{group}={o}" for o in others)
        return False, f"'{path[0]}' is not a field of {group}={choice}; {has} {'has' if len(others) == 1 else 'have'} it"
    return False, None


def _options(group: str, conf_dirs: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """Each option of a group as its YAML (the project's own `conf/` first, then the packaged one)."""
    from importlib.resources import files

    import yaml

    found: dict[str, dict[str, Any]] = {}
    dirs: list[Any] = [Path(d) / group for d in conf_dirs]
    with contextlib.suppress(ModuleNotFoundError):
        dirs.append(files("halo_pipeline.conf") / group)
    for folder in dirs:
        if not folder.is_dir():
            continue
        for item in folder.iterdir():
            if item.name.endswith(".yaml") and item.name[:-5] not in found:
                try:
                    data = yaml.safe_load(item.read_text())
                except (OSError, yaml.YAMLError):
                    continue
                found[item.name[:-5]] = data if isinstance(data, dict) else {}
    return found


def _typed_options(group: str) -> dict[str, set[str]]:
    """The options of a group that a step kind types: a param named as the group whose type is a union of settings
    models picked by `name` (the train step's `algorithm`), each option with its model's fields."""
    from halo_pipeline.engine import registry

    found: dict[str, set[str]] = {}
    for kind in registry.all_kinds().values():
        field = kind.params.model_fields.get(group)
        for model in option_models(field.annotation) if field is not None else []:
            for choice in get_args(model.model_fields["name"].annotation):
                found.setdefault(str(choice), set()).update(model.model_fields)
    return found


def option_models(annotation: Any) -> list[Any]:
    """The settings models a union picks among by `name` (the train step's `algorithm`); none for any other type."""
    if get_origin(annotation) not in (Union, types.UnionType):
        return []
    return [m for m in get_args(annotation) if isinstance(m, type) and issubclass(m, BaseModel) and "name" in m.model_fields]


def walk(annotation: Any, path: list[str], value: Any) -> bool:
    """Whether `path` names a field inside a value of this type (pydantic models, unions, dicts)."""
    if not path:
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        return walk(get_args(annotation)[0], path, value)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        chosen = [m for m in members if _named(m, value)]
        return any(walk(m, path, value) for m in (chosen or members))
    if origin is dict:
        return walk(get_args(annotation)[1], path[1:], value.get(path[0]) if isinstance(value, dict) else None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        fields = {f.alias or n: f for n, f in annotation.model_fields.items()}
        field = fields.get(path[0])
        if field is None:  # a model that takes any key checks them itself (a verifier's settings)
            return annotation.model_config.get("extra") == "allow" and len(path) == 1
        return walk(field.annotation, path[1:], value.get(path[0]) if isinstance(value, dict) else None)
    return False


def _named(member: Any, value: Any) -> bool:
    """A union member whose `name: Literal[...]` matches the value's name (a discriminated union's choice)."""
    if not (isinstance(member, type) and issubclass(member, BaseModel) and isinstance(value, dict)):
        return False
    field = member.model_fields.get("name")
    return field is not None and get_origin(field.annotation) is Literal and value.get("name") in get_args(field.annotation)
