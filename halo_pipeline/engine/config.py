"""Hydra composition of a recipe into a plain dict. DictConfig never leaves this module."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from halo_pipeline.engine.errors import Issue, RecipeError, did_you_mean
from halo_pipeline.engine.recipe import SourceMap, read_yaml


class CompositionError(RecipeError):
    """Hydra could not compose the recipe. `retry` is a set of overrides that composes around the
    problem (the bad override dropped, a valid group option instead of the unknown one), so that
    validation can report every other problem with it; None when there is none."""

    def __init__(self, issues: list[Issue], retry: list[str] | None = None):
        super().__init__(issues)
        self.retry = retry


PACKAGED_CONF = "pkg://halo_pipeline.conf"
DEFAULT_RUN_DIR = "outputs/${name}/${now:%Y-%m-%d_%H-%M-%S}"
DEFAULT_SWEEP_DIR = "multirun/${name}/${now:%Y-%m-%d_%H-%M-%S}"


@dataclass
class Composed:
    """A recipe composed with its groups and overrides, fully resolved."""

    config: dict[str, Any]
    choices: dict[str, str]
    recipe_path: Path  # the recipe file (or the manifest it was replayed from)
    base_dir: Path  # where `file:` inputs are resolved
    overrides: list[str]
    run_dir: Path
    source: SourceMap
    recipe_sha256: str = ""
    replay_of: str | None = None


def project_conf_dirs(recipe_dir: Path) -> list[Path]:
    """A user project's own `conf/` folders, searched before the packaged one."""
    dirs = []
    for candidate in (recipe_dir / "conf", recipe_dir.parent / "conf", Path.cwd() / "conf"):
        candidate = candidate.resolve()
        if candidate.is_dir() and candidate not in dirs:
            dirs.append(candidate)
    return dirs


def hydra_defaults(overrides: list[str]) -> list[str]:
    """Overrides that give Hydra our run-directory layout unless the user chose another."""
    extra = []
    if not any(o.lstrip("+").startswith("hydra.run.dir=") for o in overrides):
        extra.append(f"hydra.run.dir={DEFAULT_RUN_DIR}")
    if not any(o.lstrip("+").startswith("hydra.sweep.dir=") for o in overrides):
        extra.append(f"hydra.sweep.dir={DEFAULT_SWEEP_DIR}")
    extra += ["hydra.job.chdir=False", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    return extra


def search_path(recipe_dir: Path) -> list[str]:
    return [f"file://{d}" for d in project_conf_dirs(recipe_dir)] + [PACKAGED_CONF]


def compose(recipe: str | Path, overrides: list[str] | None = None) -> Composed:
    """Compose a recipe file (or YAML text, or a replay manifest) with Hydra and resolve it."""
    overrides = list(overrides or [])
    recipe_str = str(recipe)
    if "\n" in recipe_str or recipe_str.lstrip().startswith("{"):
        return _compose_text(recipe_str, overrides)
    path = Path(recipe_str)
    if path.is_dir() and (path / "replay.json").exists():
        path = path / "replay.json"
    if path.name == "replay.json":
        return _compose_manifest(path, overrides)
    if not path.exists():
        raise RecipeError([Issue(f"recipe not found: {path}", hint="pass the path of a recipe YAML file")])
    return _compose_file(path.resolve(), overrides, base_dir=path.resolve().parent)


def _compose_text(text: str, overrides: list[str]) -> Composed:
    with tempfile.TemporaryDirectory(prefix="halo-recipe-") as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(text)
        composed = _compose_file(path, overrides, base_dir=Path.cwd())
        composed.source.file = "<recipe text>"
        return composed


def _compose_manifest(path: Path, overrides: list[str]) -> Composed:
    """A replay: the manifest's fully resolved config composed as a recipe of its own, on the same road
    (Hydra, with Hydra's override grammar) as any recipe, not the recipe file as it is now."""
    import yaml

    from halo_pipeline.engine.cache import sha256_file
    from halo_pipeline.engine.manifest import read

    data = read(path)
    _refuse_group_switch(path, data, overrides)
    with tempfile.TemporaryDirectory(prefix="halo-replay-") as tmp:
        resolved = Path(tmp) / "recipe.yaml"
        resolved.write_text(yaml.safe_dump(_escape_interpolations(data["config"]), sort_keys=False))
        recipe = data.get("recipe") or {}
        composed = _compose_file(resolved, overrides, base_dir=Path(recipe.get("base_dir") or Path(recipe.get("path", ".")).parent))
    composed.choices = dict(data.get("groups") or {})
    composed.recipe_path = path.resolve()
    composed.recipe_sha256 = sha256_file(path)
    composed.overrides = [*data.get("overrides", []), *overrides]
    composed.replay_of = str(path.resolve().parent)
    composed.source.file = str(path)
    return composed


def _refuse_group_switch(path: Path, data: dict[str, Any], overrides: list[str]) -> None:
    """A replay's config is resolved: its groups are applied and their values copied into the steps, so
    `quant=q4` cannot switch one. Say so, with the command that does (a run of the recipe) and the values to set."""
    import shlex

    groups = data.get("groups") or {}
    switched = [o for o in overrides if "=" in o and o[:1] not in "+~" and _key(o) in groups]
    if not switched:
        return
    recipe = data.get("recipe") or {}
    earlier = [o for o in data.get("overrides") or [] if _key(o) not in {_key(s) for s in switched}]
    issues = []
    rerun = shlex.join(["halo-pipeline", "run", str(recipe.get("path") or "RECIPE"), *earlier, *switched])
    for override in switched:
        group, new = _key(override), override.split("=", 1)[1]
        copies = [k for k, v in _leaves(data.get("config") or {}, ()) if k[:1] == ("steps",) and v == groups[group]]
        sets = " ".join(".".join(k) + "=" + new for k in copies)
        values = f"; or set the resolved value in the replay: {sets}" if copies else ""
        issues.append(
            Issue(
                f"replay runs {path.parent.name}'s resolved config, in which group '{group}' is already applied "
                f"({group}={groups[group]}): a group cannot be switched in a replay",
                key=group,
                hint=f"run the recipe with it: {rerun}{values}",
            )
        )
    raise RecipeError(issues)


def _leaves(node: Any, at: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, (*at, str(k)))]
    return [(at, node)]


def settable_overrides(recipe: str | Path, overrides: list[str]) -> list[str]:
    """The overrides with `+` added where a documented key is unset in the recipe, for Hydra's own composition
    (a `-m` sweep): judged on the recipe composed with each sweep's first value. Unchanged when it does not compose
    (the jobs' validation reports why)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    probe, index = [], {}
    for override in overrides:
        try:
            parsed = OverridesParser.create().parse_overrides([override])[0]
        except HydraException:
            return overrides
        if parsed.key_or_group.startswith("hydra"):
            continue
        first = _first_value(parsed) if parsed.is_sweep_override() else None
        text = f"{override.split('=', 1)[0]}={first}" if first is not None else override
        index[_key(override)] = override
        probe.append(text)
    try:
        composed = compose(recipe, probe)
    except RecipeError:
        return overrides
    added = {_key(o) for o in composed.overrides if o.startswith("+")} - {_key(o) for o in probe if o.startswith("+")}
    return [f"+{o}" if _key(o) in added and o[:1] not in "+~" else o for o in overrides]


def _first_value(parsed: Any) -> str | None:
    """A sweep's first value (an Optuna interval's start), as override text."""
    try:
        return str(next(iter(parsed.sweep_string_iterator())))
    except Exception:  # an interval: no list of values to iterate
        start = getattr(parsed.value(), "start", None)
        return None if start is None else str(start)


def _escape_interpolations(node: Any) -> Any:
    """A resolved value that happens to contain `${` is text, not an interpolation to resolve again."""
    if isinstance(node, dict):
        return {k: _escape_interpolations(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_escape_interpolations(v) for v in node]
    return node.replace("${", "\\${") if isinstance(node, str) else node


def _compose_file(path: Path, overrides: list[str], base_dir: Path) -> Composed:
    from halo_pipeline.engine.cache import sha256_file

    data, smap, issues = read_yaml(path)
    if issues:
        raise RecipeError(issues)
    if not isinstance(data, dict):
        raise RecipeError([Issue("a recipe must be a YAML mapping", file=str(path), line=1, hint="start with `name:`")])
    _include_sources(path, data, smap)
    cfg, overrides = _load(path, overrides, smap, data)
    config, choices, run_dir = _resolve(cfg, smap)
    return Composed(
        config=config,
        choices=choices,
        recipe_path=path,
        base_dir=base_dir,
        overrides=overrides,
        run_dir=run_dir,
        source=smap,
        recipe_sha256=sha256_file(path),
    )


def _include_sources(path: Path, data: dict[str, Any], smap: SourceMap, seen: frozenset[Path] = frozenset()) -> None:
    """Where the keys of recipes pulled in through `defaults:` (`- quickstart`, beside this one) were written, so
    a problem in one is reported at its own file and line, not at the recipe that includes it."""
    for item in data.get("defaults") or []:
        if not isinstance(item, str) or item == "_self_":
            continue
        included = (path.parent / f"{item}.yaml").resolve()
        if included in seen or included == path.resolve() or not included.is_file():
            continue
        inner, inner_map, issues = read_yaml(included)
        if issues or not isinstance(inner, dict):
            continue
        _include_sources(included, inner, inner_map, seen | {path.resolve()})
        smap.include(inner_map)


def _load(path: Path, overrides: list[str], smap: SourceMap, data: dict[str, Any]) -> tuple[Any, list[str]]:
    """The composed config, and the overrides that composed it: a documented key the recipe does not set
    (`steps.train.with.lora_r=32`) is set as if written `+key=value`."""
    from hydra import version
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.utils import setup_globals
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    setup_globals()  # the ${now:} and ${hydra:} resolvers
    version.setbase("1.3")
    csp = create_config_search_path(str(path.parent))
    from hydra.core.config_search_path import SearchPathQuery

    anchor = SearchPathQuery(provider="main")
    for i, entry in enumerate(search_path(path.parent)):
        csp.append(f"halo-pipeline-{i}", entry, anchor=anchor)
        anchor = SearchPathQuery(provider=f"halo-pipeline-{i}")
    loader = ConfigLoaderImpl(config_search_path=csp)
    bad = _unparsable(overrides)
    if bad:
        fine = [o for o in overrides if o not in bad]
        raise CompositionError(
            [Issue(f"bad override: {why}", hint="overrides use Hydra's grammar: key=value") for why in bad.values()], fine
        )
    try:
        cfg = loader.load_configuration(
            config_name=path.stem,
            overrides=overrides + hydra_defaults(overrides),
            run_mode=RunMode.RUN,
            from_shell=False,
        )
        return cfg, overrides
    except MissingConfigException as exc:
        issue, retry = _missing_option(exc, smap, data, overrides, loader)
        raise CompositionError([issue], retry) from exc
    except (ConfigCompositionException, OmegaConfBaseException) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if msg.startswith("Could not override '"):
            key = msg.split("'")[1]
            settable, why = _documented(path, overrides, key, smap, data)
            if settable:  # `+` adds it; `++` when it is there but Hydra cannot merge into it (a mapping such as `{}`)
                plus = "++" if why == EXISTS else "+"
                return _load(path, [f"{plus}{o}" if _key(o) == key and o[:1] not in "+~" else o for o in overrides], smap, data)
            raise CompositionError([_bad_override_issue(key, data, why)], _without(overrides, key)) from exc
        if msg.startswith("Could not append to config. An item is already at '"):
            key = msg.split("'")[1]
            issue = Issue(f"'+{key}' adds a key, but the recipe already sets it", key=key, hint=f"drop the '+': {key}=VALUE")
            raise CompositionError([issue], [o.lstrip("+") if _key(o) == key else o for o in overrides]) from exc
        key = getattr(exc, "full_key", "") or ""
        issue = smap.issue(key, msg) if key else Issue(msg, file=str(path))
        raise CompositionError([issue]) from exc


def _unparsable(overrides: list[str]) -> dict[str, str]:
    """Overrides Hydra's grammar rejects, each with the parser's reason."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    bad = {}
    for override in overrides:
        try:
            OverridesParser.create().parse_overrides([override])
        except OverrideParseException as exc:
            bad[override] = str(exc).strip().splitlines()[0]
    return bad


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _without(overrides: list[str], key: str) -> list[str]:
    return [o for o in overrides if _key(o) != key]


def _documented(path: Path, overrides: list[str], key: str, smap: SourceMap, data: dict[str, Any]) -> tuple[bool, str | None]:
    """Whether an override's key, unset in the recipe, is documented (a step's param, a group's field), judged on
    the recipe composed without it; else perhaps a hint (the group option that has the field)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from halo_pipeline.engine.keys import settable

    if key.startswith("hydra.") or not any(_key(o) == key and o[:1] not in "+~" for o in overrides):
        return False, None
    if "." not in key and group_options(key, path.parent):  # a group the recipe's defaults do not name: `distributed=ddp`
        return True, None
    try:
        cfg, _ = _load(path, _without(overrides, key), smap, data)
    except RecipeError:
        return False, None
    OmegaConf.set_struct(cfg, False)
    raw: dict[str, Any] = OmegaConf.to_container(cfg, resolve=False)  # type: ignore[assignment]
    raw.pop("hydra", None)
    choices = {str(k): str(v) for k, v in (OmegaConf.to_container(cfg.hydra.runtime.choices) or {}).items()}  # type: ignore[union-attr]
    try:
        body = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        resolved: dict[str, Any] = OmegaConf.to_container(body, resolve=True)  # type: ignore[assignment]
    except OmegaConfBaseException:
        resolved = raw
    parts = key.split(".")
    under: Any = raw
    for i, part in enumerate(parts[:-1]):  # under an interpolation (`algorithm: ${algorithm}`): set what it names
        under = under.get(part) if isinstance(under, dict) else None
        if isinstance(under, str) and under.startswith("${") and under.endswith("}"):
            target = ".".join([under[2:-1], *parts[i + 1 :]])
            return False, f"{'.'.join(parts[: i + 1])} is `{under}` in the recipe; set {target}=VALUE instead"
    ok, why = settable(key, raw, resolved, {k: v for k, v in choices.items() if not k.startswith("hydra")}, project_conf_dirs(path.parent))
    node: Any = raw
    for part in parts:
        node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
    return ok, (EXISTS if ok and node is not _ABSENT else why)


EXISTS = "exists"  # _documented's word for a documented key that the recipe sets already
_ABSENT = object()


def _bad_override_issue(key: str, data: dict[str, Any], why: str | None = None) -> Issue:
    *parents, last = key.split(".")
    node: Any = data
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    known = list(node) if isinstance(node, dict) else []
    close = did_you_mean(last, [k for k in known if k != last])
    hint = f"{close + ' ' if close else ''}to add a key that the recipe does not set, write +{key}=VALUE"
    if why and "; set " in why:  # a key under an interpolation: the fix is the key it names
        message, fix = why.split("; ", 1)
        return Issue(f"cannot override '{key}': {message}", key=key, hint=fix)
    if why:
        return Issue(f"cannot override '{key}': {why}", key=key, hint=f"choose that option, or {hint}")
    return Issue(f"cannot override '{key}': the recipe has no such key, and no step or group documents it", key=key, hint=hint)


def _missing_option(exc: Any, smap: SourceMap, data: dict[str, Any], overrides: list[str], loader: Any) -> tuple[Issue, list[str] | None]:
    """The unknown group option as an issue at the line that chose it, and overrides that choose a valid one instead."""
    missing = str(getattr(exc, "missing_cfg_file", "") or "")
    group, _, option = missing.rpartition("/")
    options = list(getattr(exc, "options", None) or [])
    if group and not options:
        options = loader.get_group_options(group)
    if not group:
        return Issue(str(exc).strip().splitlines()[0], file=smap.file), None
    hint = did_you_mean(option, options) or ""
    available = ", ".join(options) if options else "none"
    message = f"unknown option '{option}' for group '{group}' (available: {available})"
    fix = f"{hint + ' ' if hint else ''}add conf/{group}/{option}.yaml or pick one of the available options"
    chosen_on_cli = [o for o in overrides if _key(o) == group]
    retry = None
    if options:  # compose again with a valid option, to find the recipe's other problems too
        close = hint.split("'")[1] if hint else options[0]
        retry = [f"{o.split('=', 1)[0]}={close}" if o in chosen_on_cli else o for o in overrides]
        if not chosen_on_cli:
            retry.append(f"{group}={close}")
    if not chosen_on_cli:
        for i, item in enumerate(data.get("defaults") or []):
            if isinstance(item, dict) and group in item:
                return smap.issue(("defaults", str(i)), message, fix), retry
    return Issue(message, key=group, hint=fix), retry


def _resolve(cfg: Any, smap: SourceMap) -> tuple[dict[str, Any], dict[str, str], Path]:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    raw_choices: dict[str, Any] = OmegaConf.to_container(cfg.hydra.runtime.choices)  # type: ignore[assignment]
    choices = {str(k): str(v) for k, v in raw_choices.items() if not str(k).startswith("hydra")}
    if OmegaConf.select(cfg, "name", default=None) is None:  # the run directory's layout needs it
        raise RecipeError([smap.issue("name", "the recipe has no name", "add a top-level `name: my-recipe`: runs go to outputs/<name>/")])
    run_dir = Path(str(OmegaConf.select(cfg, "hydra.run.dir")))
    OmegaConf.set_struct(cfg, False)
    body = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    issues = []
    try:
        config = OmegaConf.to_container(body, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        key = str(getattr(exc, "full_key", "") or "")
        msg = str(exc).strip().splitlines()[0]
        issues.append(smap.issue(key, msg, "check the ${...} interpolation and that the key it names exists"))
        raise RecipeError(issues) from exc
    return config, choices, run_dir  # type: ignore[return-value]


def group_options(group: str, recipe_dir: Path | None = None) -> list[str]:
    """Options available for a config group across the search path (for listings and hints)."""
    names: set[str] = set()
    dirs = project_conf_dirs(recipe_dir or Path.cwd())
    from importlib.resources import files

    try:
        pkg = files("halo_pipeline.conf") / group
        names |= {p.name[:-5] for p in pkg.iterdir() if p.name.endswith(".yaml")}
    except (FileNotFoundError, ModuleNotFoundError, NotADirectoryError):
        pass
    for d in dirs:
        if (d / group).is_dir():
            names |= {p.stem for p in (d / group).glob("*.yaml")}
    return sorted(names)
