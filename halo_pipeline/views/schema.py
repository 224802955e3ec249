"""JSON Schema of recipes, from the RecipeModel and every step kind's Params (for editors)."""

from __future__ import annotations

from typing import Any

from halo_pipeline.engine import registry
from halo_pipeline.engine.recipe import RecipeModel, StepSpec

INTERPOLATION = {"type": "string", "pattern": r"^\$\{.+\}$", "description": "An OmegaConf interpolation, e.g. ${model}."}


def _interpolatable(params_schema: dict[str, Any]) -> dict[str, Any]:
    """Any param may be written as `${...}` (a group node, the seed): editors must not flag it."""
    props = {k: {"anyOf": [v, INTERPOLATION]} for k, v in params_schema.get("properties", {}).items()}
    return {**params_schema, "properties": props}


def _step_schema(name: str | None, params_schema: dict[str, Any] | None) -> dict[str, Any]:
    spec = StepSpec.model_json_schema(by_alias=True)
    props = dict(spec["properties"])
    if params_schema is not None:
        props["with"] = _interpolatable(params_schema)
    if name is not None:
        props["uses"] = {"const": name, "description": spec["properties"]["uses"].get("description", "")}
    return {"type": "object", "properties": props, "additionalProperties": False}


def recipe_schema() -> dict[str, Any]:
    kinds = registry.all_kinds()
    defs: dict[str, Any] = {}
    variants = []
    for name, kind in sorted(kinds.items()):
        ps = kind.params.model_json_schema()
        defs.update(ps.pop("$defs", {}))
        defs[f"step_{name}"] = _step_schema(name, ps)
        variants.append({"$ref": f"#/$defs/step_{name}"})
    custom = _step_schema(None, {"type": "object"})
    custom["required"] = ["uses"]
    variants.append(custom)
    top = RecipeModel.model_json_schema()
    defs.update(top.pop("$defs", {}))  # the recipe's own models (decontaminate, tracking, runner), beside the steps'
    top_props = {k: {"anyOf": [v, INTERPOLATION]} for k, v in top["properties"].items() if k != "steps"}
    if "Decontaminate" in defs:  # `decontaminate: drop` is short for {mode: drop}; a bare `off` reads as false
        top_props["decontaminate"]["anyOf"] += [{"enum": defs["Decontaminate"]["properties"]["mode"]["enum"]}, {"type": "boolean"}]
    steps_props = {name: {"anyOf": [{"$ref": f"#/$defs/step_{name}"}, custom]} for name in kinds}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "halo-pipeline recipe",
        "type": "object",
        "required": ["name", "steps"],
        "properties": {
            **top_props,
            "defaults": {"type": "array", "description": "Hydra defaults list: config group choices."},
            "steps": {"type": "object", "properties": steps_props, "additionalProperties": {"anyOf": variants}},
        },
        "additionalProperties": True,
        "$defs": defs,
    }
