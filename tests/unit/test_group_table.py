"""docs/recipes.md's table of config groups lists every group under conf/ and exactly its options."""

from __future__ import annotations

import re

from conftest import REPO


def test_the_group_table_matches_conf() -> None:
    text = (REPO / "docs" / "recipes.md").read_text()
    table = {
        m.group(1): set(re.findall(r"`([^`]+)`", m.group(2).split(" — ")[0])) for m in re.finditer(r"^\| `(\w+)` \| (.*) \|$", text, re.M)
    }
    conf = REPO / "conf"
    groups = {
        d.name: {p.stem for p in d.glob("*.yaml")}
        for d in conf.iterdir()
        if d.is_dir() and d.name != "eval_tasks" and list(d.glob("*.yaml"))
    }
    shown = {g: table.get(g) for g in groups}
    assert shown == groups, "docs/recipes.md's group table is stale"
