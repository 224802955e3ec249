"""A problem in a recipe pulled in through `defaults:` is reported at its own file and line, not at the recipe
that includes it (tiny_debug.yaml includes quickstart.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import FAKE_RECIPE, write
from halo_pipeline.engine.errors import RecipeError
from halo_pipeline.engine.plan import plan_recipe


def test_a_problem_in_an_included_recipe_is_blamed_on_it(project: Path) -> None:
    base = write(project / "recipes/fake.yaml", FAKE_RECIPE.replace("with: {n: 4}", "with: {n: -4}"))
    child = write(project / "recipes/child.yaml", "defaults:\n  - fake\n  - _self_\nname: child\nsteps:\n  copy:\n    with: {sufix: x}\n")
    with pytest.raises(RecipeError) as err:
        plan_recipe(child, [])
    by_key = {i.key: i for i in err.value.issues}
    n = by_key["steps.make.with.n"]
    assert (n.file, n.line) == (str(base), FAKE_RECIPE.lstrip("\n").splitlines().index("    with: {n: 4}") + 1), n.format()
    sufix = by_key["steps.copy.with.sufix"]
    assert (sufix.file, sufix.line) == (str(child), 7), sufix.format()  # what the child writes stays the child's
