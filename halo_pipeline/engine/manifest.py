"""The replay manifest (`replay.json`): what ran, from which fully resolved config, and what it made."""

from __future__ import annotations

import functools
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from halo_pipeline.engine.cache import atomic_write_json, atomic_write_text
from halo_pipeline.engine.errors import Issue, RecipeError

SCHEMA_VERSION = 1
MANIFEST = "replay.json"
PACKAGES = (
    "halo-pipeline", "prefect", "hydra-core", "omegaconf", "pydantic", "torch", "transformers", "peft", "trl",
    "datasets", "datasketch", "accelerate", "tokenizers", "llama-cpp-python", "mlx-lm", "lm-eval", "optuna",
)  # fmt: skip


@functools.lru_cache(maxsize=8)
def git_info(where: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def environment(extra_packages: tuple[str, ...] = ()) -> dict[str, Any]:
    from halo_pipeline.engine.execute import library_versions

    packages = {k: v for k, v in library_versions((*PACKAGES, *extra_packages)).items() if v != "not-installed"}
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "executable": sys.executable,
        "packages": dict(sorted(packages.items())),
    }


def _recipe_text(path: Path) -> str | None:
    if path.name == MANIFEST:  # a replay: the recipe text travels with the original manifest
        try:
            return str(json.loads(path.read_text())["recipe"].get("text"))
        except (OSError, ValueError, KeyError):
            return None
    try:
        return path.read_text(encoding="utf-8") if path.stat().st_size < 1 << 20 else None
    except OSError:
        return None


def build(plan: Any, results: dict[str, Any], command: list[str], state: str, extra: dict[str, Any]) -> dict[str, Any]:
    composed = plan.composed
    steps = {}
    for sid, ps in plan.steps.items():
        res = results.get(sid)
        entry: dict[str, Any] = {
            "kind": ps.kind.name,
            "version": ps.kind.version,
            "params": ps.params.model_dump(mode="json"),
            "deterministic": ps.kind.is_deterministic(ps.params),
            "needs": ps.deps,
            "inputs": {n: str(r) if not isinstance(r, Path) else f"file:{r}" for n, r in ps.inputs.items()},
            "state": res.state if res else "not-selected",
        }
        if res is not None:
            entry.update(
                cache_key=res.key,
                input_digests=res.inputs,
                outputs={n: {"type": o.type, "path": o.path, "sha256": o.sha256, "meta": o.meta} for n, o in res.outputs.items()},
                metrics=res.metrics,
                started=res.started,
                ended=res.ended,
                seconds=round(res.seconds, 4),
                error=res.error,
            )
            if res.waited_for:
                entry["waited_for"] = res.waited_for
            if res.decontamination is not None:
                entry["decontamination"] = res.decontamination
        steps[sid] = entry
    libs = tuple(sorted({lib for ps in plan.steps.values() for lib in ps.kind.libraries}))
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "overrides": composed.overrides,
        "recipe": {
            "path": str(composed.recipe_path),
            "sha256": composed.recipe_sha256,
            "base_dir": str(composed.base_dir),
            "text": _recipe_text(composed.recipe_path),  # what `runs diff` shows changed, with or without git
        },
        "name": plan.recipe.name,
        "config": composed.config,
        "groups": composed.choices,
        "backend": (composed.config.get("backend") or {}).get("name", composed.choices.get("backend"))
        if isinstance(composed.config.get("backend"), dict)
        else composed.choices.get("backend"),
        "git": git_info(composed.base_dir),
        "environment": environment(libs),
        "seed": plan.recipe.seed,
        "state": state,
        "replay_of": composed.replay_of,
        "steps": steps,
        **extra,
    }


def write(run_dir: Path, manifest: dict[str, Any]) -> Path:
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(manifest["config"], sort_keys=True))
    atomic_write_json(run_dir / MANIFEST, manifest)
    return run_dir / MANIFEST


def read(path: Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecipeError([Issue(f"no replay manifest at {path}", hint="pass a run directory: outputs/<recipe>/<run>")]) from None
    except json.JSONDecodeError as exc:
        raise RecipeError([Issue(f"manifest is not valid JSON: {exc}", file=str(path), line=exc.lineno)]) from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise RecipeError([Issue(f"unsupported manifest schema_version {data.get('schema_version')!r}", file=str(path))])
    return data
