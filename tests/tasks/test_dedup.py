"""dedup: exact and near duplicates found, the kept row chosen right, and every param reaching datasketch."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from halo_pipeline.data.minhash import Signer, shingle_hashes
from halo_pipeline.data.rows import BadRow
from halo_pipeline.engine import registry
from halo_pipeline.engine.step import Artifact
from helpers import read_jsonl, run_kind, write_jsonl

RNG = random.Random(7)  # its own generator: imports and other tests must not change the data a test sees
WORDS = [f"w{i}" for i in range(3000)]


def doc(n: int = 60, rng: random.Random = RNG) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def dataset(tmp_path: Path) -> tuple[Artifact, dict[str, str]]:
    rng = random.Random(7)
    base = [doc(rng=rng) for _ in range(40)]
    rows = [{"id": f"r{i}", "prompt": "p", "completion": t, "reward": 0.1} for i, t in enumerate(base)]
    words = base[3].split()
    words[10] = "changed"
    rows.append({"id": "near3", "prompt": "p", "completion": " ".join(words), "reward": 0.9})
    rows.append({"id": "exact5", "prompt": "P", "completion": "  " + base[5].upper() + " ", "reward": 0.5})
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    return Artifact("sft_dataset", path), {"near3": "r3", "exact5": "r5"}


def test_finds_exact_and_near_duplicates(tmp_path: Path) -> None:
    art, truth = dataset(tmp_path)
    outputs, ctx = run_kind("dedup", {"workers": 1}, {"dataset": art}, tmp_path / "out")
    kept = [r["id"] for r in read_jsonl(outputs["dataset"])]
    assert len(kept) == 40 and "near3" not in kept and "exact5" not in kept
    clusters = {c["id"]: c for c in read_jsonl(outputs["clusters"])}
    assert clusters["near3"]["duplicate_of"] == "r3" and clusters["near3"]["match"] == "fuzzy"
    assert clusters["exact5"]["duplicate_of"] == "r5" and clusters["exact5"]["match"] == "exact"
    assert ctx.metrics["rows_in"] == 42 and ctx.metrics["exact_removed"] == 1 and ctx.metrics["fuzzy_removed"] == 1
    assert ctx.meta["clusters"]["datasketch_version"] == "2.0.0" and "affine32" in ctx.meta["clusters"]["hashing"]


def test_keep_best_keeps_the_highest_reward(tmp_path: Path) -> None:
    art, _ = dataset(tmp_path)
    outputs, _ = run_kind("dedup", {"keep": "best", "workers": 1}, {"dataset": art}, tmp_path / "out")
    kept = [r["id"] for r in read_jsonl(outputs["dataset"])]
    assert "near3" in kept and "r3" not in kept  # 0.9 beats 0.1
    assert "exact5" in kept and "r5" not in kept
    clusters = {c["id"]: c["duplicate_of"] for c in read_jsonl(outputs["clusters"])}
    assert clusters["r3"] == "near3"


def test_multiprocess_shards_give_the_same_result(tmp_path: Path) -> None:
    art, _ = dataset(tmp_path)
    one, _ = run_kind("dedup", {"workers": 1}, {"dataset": art}, tmp_path / "a")
    many, _ = run_kind("dedup", {"workers": 2, "shard_size": 5}, {"dataset": art}, tmp_path / "b")
    assert Path(one["dataset"]).read_text() == Path(many["dataset"]).read_text()
    assert Path(one["clusters"]).read_text() == Path(many["clusters"]).read_text()


def test_signatures_equal_datasketch_minhash_for_each_seed_and_num_perm() -> None:
    from datasketch import MinHash

    text = doc(80)
    for num_perm, seed, ngram in [(64, 1, 3), (128, 42, 5), (32, 3, 1)]:
        ours = Signer(num_perm, seed, ngram).sign([text])[0]
        ref = MinHash(num_perm=num_perm, seed=seed, scheme="affine32", hashfunc=int)
        ref.update_batch([int(h) for h in shingle_hashes(text, ngram)])
        assert np.array_equal(ours, ref.hashvalues)


def test_params_reach_datasketch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasketch

    seen = {}
    real = datasketch.MinHashLSH

    class Spy(real):  # type: ignore[misc,valid-type]
        def __init__(self, **kwargs):  # type: ignore[no-untyped-def]
            seen.update(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(datasketch, "MinHashLSH", Spy)
    art, _ = dataset(tmp_path)
    _, ctx = run_kind(
        "dedup", {"num_perm": 64, "threshold": 0.6, "lsh_weights": [0.3, 0.7], "workers": 1}, {"dataset": art}, tmp_path / "o"
    )
    assert {k: v for k, v in seen.items() if k != "hashfunc"} == {"threshold": 0.6, "num_perm": 64, "weights": (0.3, 0.7)}
    assert "num_perm=64" in ctx.meta["clusters"]["hashing"]
    # a stricter threshold and longer shingles stop counting the one-word edit as a duplicate
    out, ctx = run_kind("dedup", {"threshold": 0.95, "ngram": 8, "workers": 1}, {"dataset": art}, tmp_path / "p")
    assert ctx.metrics["fuzzy_removed"] == 0
    out, ctx = run_kind("dedup", {"fuzzy": False, "workers": 1}, {"dataset": art}, tmp_path / "q")
    assert ctx.metrics["fuzzy_removed"] == 0 and ctx.metrics["exact_removed"] == 1
    out, ctx = run_kind("dedup", {"normalize": {"lowercase": False}, "fuzzy": False, "workers": 1}, {"dataset": art}, tmp_path / "r")
    assert ctx.metrics["exact_removed"] == 0  # the upper-cased copy differs when case counts


def test_key_chooses_the_compared_fields(tmp_path: Path) -> None:
    rows = [{"id": "a", "prompt": "same", "completion": doc()}, {"id": "b", "prompt": "same", "completion": doc()}]
    art = Artifact("sft_dataset", write_jsonl(tmp_path / "k.jsonl", rows))
    _, ctx = run_kind("dedup", {"key": ["prompt"], "workers": 1}, {"dataset": art}, tmp_path / "o")
    assert ctx.metrics["exact_removed"] == 1
    _, ctx = run_kind("dedup", {"workers": 1}, {"dataset": art}, tmp_path / "p")
    assert ctx.metrics["removed"] == 0
    _, ctx = run_kind("dedup", {"key": "prompt", "workers": 1}, {"dataset": art}, tmp_path / "q")  # one field, as a plain string
    assert ctx.metrics["exact_removed"] == 1


def test_bad_rows_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "prompt": "p", "completion": "c"}\n{"id": "b", "prompt": "p"}\nnot json\n')
    art = Artifact("sft_dataset", path)
    with pytest.raises(BadRow, match=rf"{path}:2: .*needs `prompt` and `completion`"):
        run_kind("dedup", {"workers": 1}, {"dataset": art}, tmp_path / "o")
    out, ctx = run_kind("dedup", {"on_bad_rows": "skip", "workers": 1}, {"dataset": art}, tmp_path / "p")
    assert ctx.metrics["bad_rows"] == 2 and [r["id"] for r in read_jsonl(out["dataset"])] == ["a"]


def test_impossible_lsh_settings_fail_validation() -> None:
    kind = registry.get("dedup")
    problems = kind.check(kind.params.model_validate({"threshold": 0.99, "num_perm": 16}))  # type: ignore[misc]
    assert problems and "raise num_perm or lower threshold" in problems[0]


@pytest.mark.parametrize(("threshold", "num_perm", "weights"), [(0.8, 128, (0.5, 0.5)), (0.5, 64, (0.3, 0.7)), (0.95, 128, (0.5, 0.5))])
def test_validate_time_band_choice_matches_datasketch(threshold: float, num_perm: int, weights: tuple[float, float]) -> None:
    from datasketch import MinHashLSH

    from halo_pipeline.tasks.dedup import lsh_bands

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights)
    assert lsh_bands(threshold, num_perm, weights) == (lsh.b, lsh.r)
