"""One command composes and validates its recipe once; a long-lived process composes each run afresh."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import FAKE_RECIPE, write
from halo_pipeline.engine import plan as plan_module


def test_one_command_composes_once_however_often_it_asks(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = str(write(project / "recipes" / "fake.yaml", FAKE_RECIPE))
    composed: list[str] = []
    real = plan_module._plan
    monkeypatch.setattr(plan_module, "_plan", lambda r, o: composed.append(str(r)) or real(r, o))
    with plan_module.one_command():  # validation, the cache check, the flow: three asks
        plans = [plan_module.plan_recipe(recipe, ["seed=1"]) for _ in range(3)]
    assert len(composed) == 1 and plans[0] is plans[1] is plans[2]
    plan_module.plan_recipe(recipe, ["seed=1"])  # the block is over: nothing kept from it
    assert len(composed) == 2


def test_outside_a_command_a_plan_is_reused_once_at_most(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = str(write(project / "recipes" / "fake.yaml", FAKE_RECIPE))
    composed: list[str] = []
    real = plan_module._plan
    monkeypatch.setattr(plan_module, "_plan", lambda r, o: composed.append(str(r)) or real(r, o))
    for _ in range(3):  # a deployment's scheduled runs: a conf file may change between them
        plan_module.plan_recipe(recipe, [])
    assert len(composed) == 2  # composed, reused once, composed again
