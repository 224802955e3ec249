"""The DAG helpers, digests, cache keys and the cache's refusal to trust tampered entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FAKE_RECIPE, write
from halo_pipeline.engine.cache import Cache, atomic_path, digest
from halo_pipeline.engine.config import compose
from halo_pipeline.engine.execute import StepCall, StepError, cache_key, execute, input_artifacts, step_calls
from halo_pipeline.engine.graph import CycleError, select, topo_order
from halo_pipeline.engine.plan import build_plan

DEPS = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": []}


def test_topo_order_keeps_recipe_order_for_ties() -> None:
    assert topo_order(DEPS) == ["a", "e", "b", "c", "d"]
    with pytest.raises(CycleError) as info:
        topo_order({"x": ["y"], "y": ["z"], "z": ["x"]})
    assert info.value.cycle[0] == info.value.cycle[-1] and len(info.value.cycle) == 4


def test_select_only_from_until() -> None:
    assert select(DEPS, only=["b", "d"]) == {"b", "d"}
    assert select(DEPS, from_="b") == {"b", "d"}
    assert select(DEPS, until="d") == {"a", "b", "c", "d"}
    assert select(DEPS, from_="a", until="b") == {"a", "b"}


def test_directory_digest_covers_names_and_contents(tmp_path: Path) -> None:
    d = tmp_path / "d"
    write(d / "x.txt", "1")
    write(d / "sub/y.txt", "2")
    first = digest(d)
    (d / "sub/y.txt").write_text("3")
    assert digest(d) != first
    (d / "sub/y.txt").write_text("2")
    assert digest(d) == first
    (d / "sub/y.txt").rename(d / "sub/z.txt")
    assert digest(d) != first


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "half").write_text("x")
        raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def _calls(project: Path, overrides: list[str]) -> dict[str, StepCall]:
    from halo_pipeline.engine.execute import step_calls
    from halo_pipeline.engine.plan import build_plan

    recipe = write(project / "recipes/fake.yaml", FAKE_RECIPE)
    plan = build_plan(compose(recipe, overrides))
    return step_calls(plan, project / "outputs/run")


def test_cache_key_depends_on_params_and_input_content_not_run(project: Path) -> None:
    calls = _calls(project, [])
    make = calls["make"]
    kind = make.kind()
    key = cache_key(make, kind, {})
    assert key == cache_key(_calls(project, [])["make"], kind, {})
    assert key != cache_key(_calls(project, ["steps.make.with.n=5"])["make"], kind, {})
    result = execute(make, {})
    copy = calls["copy"]
    k1 = cache_key(copy, copy.kind(), input_artifacts(copy, {"make": result}))
    other = execute(_calls(project, ["steps.make.with.n=5"])["make"], {})
    k2 = cache_key(copy, copy.kind(), input_artifacts(copy, {"make": other}))
    assert k1 != k2


def test_cache_entry_is_verified_before_reuse(project: Path) -> None:
    make = _calls(project, [])["make"]
    first = execute(make, {})
    assert first.state == "ran"
    assert execute(make, {}).state == "cached"
    cache = Cache(Path(make.cache_root))
    record = json.loads((cache.entry(first.key) / "record.json").read_text())  # type: ignore[arg-type]
    assert record["outputs"]["dataset"]["sha256"] == first.outputs["dataset"].sha256
    Path(first.outputs["dataset"].path).write_text("tampered\n")
    assert cache.lookup(first.key) is None  # type: ignore[arg-type]
    again = execute(make, {})
    assert again.state == "ran" and again.outputs["dataset"].sha256 == first.outputs["dataset"].sha256


def test_a_verified_entry_is_hashed_again_only_once_its_files_change(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import time

    import halo_pipeline.engine.cache as cache_module

    monkeypatch.setattr(cache_module, "RACY_NS", 0)
    make = _calls(project, [])["make"]
    first = execute(make, {})
    cache, key = Cache(Path(make.cache_root)), str(first.key)
    hashed: list[Path] = []
    real_digest = cache_module.digest
    monkeypatch.setattr(cache_module, "digest", lambda p: hashed.append(p) or real_digest(p))
    assert cache.lookup(key) is not None and cache.lookup(key) is not None
    assert len(hashed) <= 1  # the bytes are read once; after that the stat signature vouches for them
    time.sleep(0.05)  # past the timestamp tick of the verification
    path = Path(first.outputs["dataset"].path)
    before, data = path.stat(), path.read_bytes()
    path.write_bytes(b"X" + data[1:])  # same size, same inode...
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # ...and the old mtime: only ctime tells
    assert cache.lookup(key) is None and len(hashed) == 2
    # an output changed just before it was verified is not memoized (it could change again in the same tick)
    monkeypatch.setattr(cache_module, "RACY_NS", 10**12)
    again = execute(make, {})
    assert again.state == "ran"
    hashed.clear()
    assert cache.lookup(key) is not None and cache.lookup(key) is not None and len(hashed) == 2


def test_model_files_are_hashed_once_per_content_across_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import time

    import halo_pipeline.engine.cache as cache_module

    monkeypatch.setattr(cache_module, "RACY_NS", 0)
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"w" * 4096)
    (model / "config.json").write_text("{}")
    time.sleep(0.05)
    expected = digest(model)
    hashed: list[Path] = []
    real = cache_module.sha256_file
    monkeypatch.setattr(cache_module, "sha256_file", lambda p: hashed.append(p) or real(p))
    first = cache_module.DigestMemo(tmp_path / "cache").digest(model)
    assert first == expected and len(hashed) == 2
    assert cache_module.DigestMemo(tmp_path / "cache").digest(model) == first and len(hashed) == 2  # a new process: remembered
    weights = model / "weights.bin"
    before = weights.stat()
    weights.write_bytes(b"v" * 4096)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size and mtime: ctime tells
    changed = cache_module.DigestMemo(tmp_path / "cache").digest(model)
    assert changed != first and len(hashed) == 3 and changed == digest(model)


def test_partial_work_is_never_mistaken_for_a_result(project: Path) -> None:
    make = _calls(project, [])["make"]
    cache = Cache(Path(make.cache_root))
    key = cache_key(make, make.kind(), {})
    cache.partial(key).mkdir(parents=True)
    (cache.partial(key) / "data.jsonl").write_text("half")
    assert cache.lookup(key) is None
    assert execute(make, {}).state == "ran"


def test_step_progress_reaches_the_state_file(project: Path) -> None:
    import logging

    from halo_pipeline.cli.progress import read_states
    from halo_pipeline.engine.step import RunContext

    seen: list[tuple[int, int]] = []
    ctx = RunContext("s", "k", project, project, 0, logging.getLogger("t"), on_progress=lambda d, t: seen.append((d, t)))
    assert list(ctx.progress(range(3))) == [0, 1, 2]
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]
    make = _calls(project, [])["make"]
    execute(make, {})
    assert read_states(Path(make.run_dir), ["make"])["make"]["state"] == "ran"


def test_scratch_survives_a_failure_and_goes_once_the_result_is_committed(project: Path) -> None:
    recipe = write(
        project / "recipes/ckpt.yaml",
        f"""
        name: ckpt
        steps:
          train:
            uses: fake_steps:checkpointed
            with: {{fail_file: "{project / "fail"}"}}
        """,
    )
    (project / "fail").touch()
    call = step_calls(build_plan(compose(recipe, [])), project / "outputs/run")["train"]
    with pytest.raises(StepError):
        execute(call, {})
    cache = Cache(Path(call.cache_root))
    key = cache_key(call, call.kind(), {})
    assert (cache.partial(key) / ".scratch/ckpt.json").is_file()  # kept for the resume
    (project / "fail").unlink()
    done = execute(call, {})
    assert Path(done.outputs["dataset"].path).read_text().count("resumed") == 1
    assert not (cache.entry(key) / ".scratch").exists() and not cache.partial(key).exists()
    assert cache.lookup(key) is not None
