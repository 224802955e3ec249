"""docs/architecture.md's claims that can be checked: one module per command, one router per endpoint family,
and the conf group folders as the one list of quants, backends and trackers."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs/architecture.md").read_text()


def _listed(folder: str) -> set[str]:
    """The `*.py` files the layout block names on the lines of `folder/` (up to the next folder)."""
    block = DOC.split("```")[1]
    lines = block.splitlines()
    start = max(i for i, line in enumerate(lines) if re.match(rf"^\s*{folder}/\s{{2,}}", line))  # its own line, not a list of folders
    text = [lines[start]]
    for line in lines[start + 1 :]:
        if re.match(r"^\s{0,2}\S", line):  # the next folder (or the next tree)
            break
        text.append(line)
    return set(re.findall(r"[\w]+\.py", " ".join(text)))


def test_every_command_has_its_module_and_the_entry_point_only_dispatches() -> None:
    from halo_pipeline.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    commands = set(sub.choices)  # type: ignore[arg-type]
    cli = ROOT / "halo_pipeline/cli"
    grouped = {"merge", "convert", "verify"}  # export.py: the three commands over exports
    assert {c for c in commands if not (cli / f"{c}.py").is_file()} == grouped
    for command in commands - grouped:
        text = (cli / f"{command}.py").read_text()
        assert re.search(rf'add_parser\(\s*"{command}"', text), f"cli/{command}.py does not make the `{command}` parser"
    init = (cli / "__init__.py").read_text()
    assert "add_argument(" not in init.split("def build_parser", 1)[1].split("\ndef ", 1)[0].replace('p.add_argument("--version"', "")
    assert {f"{c}.py" for c in commands - grouped} | {"export.py"} <= _listed("cli")


def test_one_router_per_endpoint_family_and_create_app_only_wires() -> None:
    import inspect

    from halo_pipeline.serving import app, chat, completions, embeddings, models

    routes = {m.__name__.rsplit(".", 1)[1]: sorted(r.path for r in m.router.routes) for m in (chat, completions, embeddings, models)}  # type: ignore[attr-defined]
    assert routes == {
        "chat": ["/v1/chat/completions"],
        "completions": ["/v1/completions"],
        "embeddings": ["/v1/embeddings"],
        "models": ["/health", "/v1/models"],
    }
    assert len(inspect.getsource(app.create_app).splitlines()) < 25
    present = {p.name for p in (ROOT / "halo_pipeline/serving").glob("*.py")}
    assert _listed("serving") - present == set()
    assert {"app.py", "errors.py", "admission.py", "detokenize.py", "server.py", "chat.py", "completions.py"} <= _listed("serving")


def test_the_conf_folders_are_the_lists_of_quants_backends_and_trackers() -> None:
    from halo_pipeline.engine.groups import TRACKER_KEYS, Backend, group_options, quant, quant_names

    conf = ROOT / "conf"
    assert sorted(quant_names()) == sorted(p.stem for p in (conf / "quant").glob("*.yaml"))
    assert group_options("backend") == sorted(p.stem for p in (conf / "backend").glob("*.yaml"))
    assert sorted(TRACKER_KEYS) == sorted(p.stem for p in (conf / "tracking").glob("*.yaml"))
    for path in (conf / "backend").glob("*.yaml"):
        assert Backend.model_validate(yaml.safe_load(path.read_text())).name == path.stem
    for name in quant_names():
        assert quant(name).name == name
    # no Python module spells the list out again
    spelled = re.compile(r"""["']q4["'],\s*["']q8["']""")
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("halo_pipeline", "tasks")
        for p in (ROOT / folder).rglob("*.py")
        if spelled.search(p.read_text())
    ]
    assert offenders == []


def test_build_plan_is_its_named_passes_in_order() -> None:
    import inspect

    from halo_pipeline.engine import plan

    body = inspect.getsource(plan.build_plan)
    calls = re.findall(r"^\s+(?:draft = )?(_\w+)\(", body, re.M)
    assert calls == ["_recipe_fields", "_kinds_and_params", "_wiring", "_order", "_artifact_types", "_recipe_references"]
    assert "six named passes" in DOC
