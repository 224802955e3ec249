"""The wheel carries the engine, the step kinds (tasks/) and the config groups (conf/)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_ships_tasks_and_conf_and_works_installed(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("halo_pipeline-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("halo_pipeline/cli/__init__.py", "halo_pipeline/engine/cache.py", "halo_pipeline/runtimes/gguf.py", "halo_pipeline/verifiers/builtin.py", "halo_pipeline/verifiers/_harness_python.py", "halo_pipeline/conf/verifier/python_tests.yaml", "halo_pipeline/tasks/dedup.py", "halo_pipeline/tasks/synthesize.py",
                     "halo_pipeline/conf/algorithm/dpo.yaml", "halo_pipeline/conf/model/tiny.yaml", "halo_pipeline/conf/runner/dask.yaml", "halo_pipeline/conf/tracking/mlflow.yaml"):  # fmt: skip
        assert expected in names, expected
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "halo-pipeline = halo_pipeline.cli:entry" in entry_points
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], capture_output=True, text=True
    )
    assert install.returncode == 0, install.stderr
    # The installed copy (not the checkout) validates a recipe, finding its step kinds and config groups.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "defaults:\n  - algorithm: dpo\n  - verifier: python_syntax\n  - _self_\nname: r\nsteps:\n"
        "  synthesize: {with: {source: humaneval, verifier: '${verifier}'}}\n  score: {inputs: {dataset: synthesize.dataset}}\n"
    )
    code = (
        "import halo_pipeline, sys; from halo_pipeline.cli import main; "
        f"assert halo_pipeline.__file__.startswith({str(target)!r}), halo_pipeline.__file__; sys.exit(main(['validate', {str(recipe)!r}]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 steps (synthesize, score)" in run.stdout


def test_every_python_package_in_the_tree_is_listed_for_the_wheel() -> None:
    """packages are listed by hand (tasks/ and conf/ install under halo_pipeline): a new subpackage must be too."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "halo_pipeline").rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
