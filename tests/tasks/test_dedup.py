"""dedup: exact and near duplicates found, the kept row chosen right, every param reaching the index, and
the numpy band index answering exactly as datasketch's MinHashLSH did before it (issue 17)."""

from __future__ import annotations

import hashlib
import random
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from halo_pipeline.data.lsh_index import LSHIndex, band_keys, datasketch_order
from halo_pipeline.data.minhash import Normalizer, Signer, batch_shingle_hashes, fmix32, permutations, shingle_hashes
from halo_pipeline.data.rows import BadRow, default_text_fields, row_text
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


def test_worker_processes_give_the_same_result_as_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ProcessPoolExecutor

    from halo_pipeline.tasks import dedup

    pools: list[int] = []

    class Counted(ProcessPoolExecutor):
        def __init__(self, max_workers: int) -> None:
            pools.append(max_workers)
            super().__init__(max_workers=max_workers)

    monkeypatch.setattr(dedup, "ProcessPoolExecutor", Counted)
    rows, _ = near_duplicate_rows(300, seed=3)
    art = Artifact("sft_dataset", write_jsonl(tmp_path / "in.jsonl", rows))
    params = {"threshold": 0.5, "num_perm": 64, "ngram": 1}
    one, _ = run_kind("dedup", {**params, "workers": 1, "shard_size": 20}, {"dataset": art}, tmp_path / "a")
    small, _ = run_kind("dedup", {**params, "workers": 2}, {"dataset": art}, tmp_path / "b")  # one shard: no processes
    assert pools == []
    many, ctx = run_kind("dedup", {**params, "workers": 2, "shard_size": 20}, {"dataset": art}, tmp_path / "c")  # 15 shards
    assert pools == [2]
    assert ctx.metrics["fuzzy_removed"] > 10 and ctx.metrics["exact_removed"] > 5
    for out in (small, many):
        assert Path(one["dataset"]).read_text() == Path(out["dataset"]).read_text()
        assert Path(one["clusters"]).read_text() == Path(out["clusters"]).read_text()


def test_permutations_and_premix_equal_datasketch() -> None:
    from datasketch import MinHash
    from datasketch.minhash import _fmix

    for num_perm, seed in [(16, 0), (128, 1), (256, 42)]:
        a, b = permutations(num_perm, seed)
        ref = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        assert np.array_equal(a, ref[0]) and np.array_equal(b, ref[1]) and a.dtype == ref[0].dtype
    values = np.random.default_rng(0).integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32)
    assert np.array_equal(fmix32(values), _fmix(values, 32))


def python_shingles(text: str, ngram: int) -> list[int]:
    """Word n-gram hashes the slow, obvious way: a polynomial hash per word, mixed per n-gram."""
    from halo_pipeline.data.minhash import _NGRAM_MULT

    words = []
    for word in text.encode().split():  # bytes.split(): b" \t\n\r\x0b\x0c", as the numpy code
        h = 0
        for byte in word:
            h = (h * 0x01000193 + byte + 1) % 2**32
        words.append(h)
    if not words:
        return [zlib.crc32(b"")]
    k = min(ngram, len(words))
    out = []
    for i in range(len(words) - k + 1):
        h = 0
        for j in range(k):
            h = (h * 31 + words[i + j] * int(_NGRAM_MULT[j % len(_NGRAM_MULT)])) % 2**32
        out.append(h)
    return out


def test_batched_shingles_equal_one_document_at_a_time() -> None:
    rng = random.Random(5)
    odd = ["", "one", "two words", " lead and trail ", "a\tb\nc  d\x0b\x0ce\rf", "é ü 漢字 mixed words", "x" * 3000]
    texts = odd + [doc(rng.randrange(1, 400), rng) for _ in range(300)] + odd
    assert sum(len(t) for t in texts) > 2**18  # hashed in several groups
    for ngram in (1, 3, 5):
        batch = batch_shingle_hashes(texts, ngram)
        for text, hashes in zip(texts, batch, strict=True):
            assert hashes.tolist() == python_shingles(text, ngram), (ngram, text[:40])
    signer = Signer(64, 7, 3)
    together = signer.sign(texts)
    for i, text in enumerate(texts):
        assert np.array_equal(together[i], signer.sign([text])[0])


def test_batch_normalization_equals_one_text_at_a_time() -> None:
    rng = random.Random(9)
    alphabet = [*"ab Z9.,!", *"\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f  ", "\xa0", "é", "\u3000", "\x85", "\x00", "ﬁ", "Ⅸ"]
    texts = ["", " ", "a", " a ", "\x1c", "a\x1fb", "  a  b  "] + ["".join(rng.choices(alphabet, k=rng.randrange(40))) for _ in range(3000)]
    for norm in (
        Normalizer(),
        Normalizer(lowercase=False, unicode_form=None),
        Normalizer(strip_punctuation=True),
        Normalizer(collapse_whitespace=False),
    ):
        assert norm.batch(texts) == [norm(t).encode("utf-8") for t in texts]


def test_signatures_equal_datasketch_minhash_for_each_seed_and_num_perm() -> None:
    from datasketch import MinHash

    text = doc(80)
    for num_perm, seed, ngram in [(64, 1, 3), (128, 42, 5), (32, 3, 1)]:
        ours = Signer(num_perm, seed, ngram).sign([text])[0]
        ref = MinHash(num_perm=num_perm, seed=seed, scheme="affine32", hashfunc=int)
        ref.update_batch([int(h) for h in shingle_hashes(text, ngram)])
        assert np.array_equal(ours, ref.hashvalues)


def test_params_reach_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datasketch import MinHashLSH

    from halo_pipeline.tasks import dedup

    seen = {}

    class Spy(LSHIndex):
        def __init__(self, num_perm: int, threshold: float, bands: int, rows: int) -> None:
            seen.update(num_perm=num_perm, threshold=threshold, bands=bands, rows=rows)
            super().__init__(num_perm, threshold, bands, rows)

    monkeypatch.setattr(dedup, "LSHIndex", Spy)
    art, _ = dataset(tmp_path)
    _, ctx = run_kind(
        "dedup", {"num_perm": 64, "threshold": 0.6, "lsh_weights": [0.3, 0.7], "workers": 1}, {"dataset": art}, tmp_path / "o"
    )
    ref = MinHashLSH(threshold=0.6, num_perm=64, weights=(0.3, 0.7))  # the bands datasketch would use
    assert seen == {"num_perm": 64, "threshold": 0.6, "bands": ref.b, "rows": ref.r}
    assert ctx.meta["clusters"]["lsh"] == {
        "threshold": 0.6,
        "weights": [0.3, 0.7],
        "bands": ref.b,
        "rows_per_band": ref.r,
        "index": "numpy band index with MinHashLSH's answers",
    }
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


# --- the numpy band index against datasketch's MinHashLSH (issue 17) ---------------------------------


def near_duplicate_rows(n: int, seed: int) -> tuple[list[dict[str, Any]], int]:
    """Families of documents: an original, then variants with 5-30% of their words replaced (some of
    them variants of variants), case/whitespace copies and unrelated documents, interleaved. At a low
    threshold a variant is often similar enough to several earlier rows that are not similar enough to
    each other: the choice among several matching candidates is exercised."""
    rng = random.Random(seed)
    vocab = [f"v{i}" for i in range(400)]
    families: list[list[list[str]]] = []
    rows = []
    for i in range(n):
        roll = rng.random()
        if families and roll < 0.8:
            family = rng.choice(families)
            words = list(rng.choice(family))
            for _ in range(int(len(words) * rng.choice([0.05, 0.1, 0.2, 0.3]))):
                words[rng.randrange(len(words))] = rng.choice(vocab)
            family.append(words)
            text = " ".join(words)
        elif families and roll < 0.87:
            text = "  " + " ".join(rng.choice(rng.choice(families))).upper() + "\n"  # an exact duplicate after normalizing
        else:
            words = rng.choices(vocab, k=rng.randrange(20, 60))
            families.append([words])
            text = " ".join(words)
        rows.append({"id": f"x{i}", "prompt": "p", "completion": text, "reward": rng.random()})
    return rows, len(families)


def reference_dedup(rows: list[dict[str, Any]], params: dict[str, Any]) -> tuple[list[dict[str, str]], list[str], int]:
    """The dedup step as it was before issue 17 (its `_consume` loop): datasketch's MinHashLSH with 8-byte
    blake2b band keys, `query` then `insert` of every new cluster, the first candidate in `query`'s order
    whose signature agrees on >= threshold of its values. Returns clusters.jsonl's records, the kept ids
    and how many rows had more than one matching candidate."""
    from datasketch import LeanMinHash, MinHashLSH

    threshold, num_perm, keep = params["threshold"], params["num_perm"], params.get("keep", "first")
    lsh = MinHashLSH(
        threshold=threshold,
        num_perm=num_perm,
        weights=params.get("lsh_weights", (0.5, 0.5)),
        hashfunc=lambda band: hashlib.blake2b(band, digest_size=8).digest(),
    )
    norm = Normalizer()
    texts = [norm(row_text(r, default_text_fields("sft_dataset", r))) for r in rows]
    sigs = Signer(num_perm, params.get("seed", 1), params.get("ngram", 3), params.get("unit", "word")).sign(texts)
    exact = params.get("exact", True)
    best: list[int] = []
    best_score: list[float] = []
    member_of: dict[int, tuple[int, str]] = {}
    exact_seen: dict[bytes, int] = {}
    sig_store: list[np.ndarray] = []
    ambiguous = 0

    def add(cluster: int, row: int, how: str) -> None:
        score = rows[row]["reward"]
        if keep == "best" and score > best_score[cluster]:
            member_of[best[cluster]] = (cluster, how)
            best[cluster], best_score[cluster] = row, score
        else:
            member_of[row] = (cluster, how)

    for i, text in enumerate(texts):
        h = hashlib.sha256(text.encode("utf-8")).digest()[:16]
        if exact and h in exact_seen:
            add(exact_seen[h], i, "exact")
            continue
        candidates = lsh.query(LeanMinHash(seed=1, hashvalues=sigs[i], scheme="affine32"))
        passing = [c for c in candidates if float(np.mean(sig_store[c] == sigs[i])) >= threshold]
        ambiguous += len(passing) > 1
        if passing:
            add(passing[0], i, "fuzzy")
            exact_seen[h] = passing[0]
            continue
        best.append(i)
        best_score.append(rows[i]["reward"])
        exact_seen[h] = len(best) - 1
        sig_store.append(sigs[i])
        lsh.insert(len(best) - 1, LeanMinHash(seed=1, hashvalues=sigs[i], scheme="affine32"), check_duplication=False)
    records = [{"id": rows[r]["id"], "duplicate_of": rows[best[c]]["id"], "match": how} for r, (c, how) in sorted(member_of.items())]
    return records, [r["id"] for i, r in enumerate(rows) if i not in member_of], ambiguous


@pytest.mark.parametrize(
    "params",
    [
        {"threshold": 0.5, "num_perm": 64, "ngram": 1},
        {"threshold": 0.5, "num_perm": 64, "ngram": 1, "keep": "best"},
        {"threshold": 0.8, "num_perm": 128, "ngram": 2},
        {"threshold": 0.35, "num_perm": 32, "ngram": 1, "lsh_weights": [0.2, 0.8]},
        {"threshold": 0.5, "num_perm": 64, "ngram": 5, "unit": "char"},
        {"threshold": 0.6, "num_perm": 64, "ngram": 1, "exact": False},  # copies found by the index
    ],
)
def test_same_clusters_and_kept_rows_as_datasketch_minhashlsh(tmp_path: Path, params: dict[str, Any]) -> None:
    rows, _ = near_duplicate_rows(700, seed=11)
    art = Artifact("sft_dataset", write_jsonl(tmp_path / "in.jsonl", rows))
    records, kept, ambiguous = reference_dedup(rows, params)
    assert len(records) > 100 and {r["match"] for r in records} == ({"exact", "fuzzy"} if params.get("exact", True) else {"fuzzy"})
    if params["threshold"] <= 0.5:
        assert ambiguous > 10  # rows with several matching candidates: datasketch's order decides
    # candidates mostly in earlier shards, some within a shard, all in one; then 18 shards, 14 of them in 2 worker processes
    for shard_size, workers in ((3, 1), (40, 1), (4000, 1), (40, 2)):
        run_dir = tmp_path / f"s{shard_size}-w{workers}"
        out, ctx = run_kind("dedup", {**params, "workers": workers, "shard_size": shard_size}, {"dataset": art}, run_dir)
        assert read_jsonl(out["clusters"]) == records
        assert [r["id"] for r in read_jsonl(out["dataset"])] == kept
        assert ctx.metrics["removed"] == len(records)


def test_index_lists_candidates_in_minhashlsh_query_order() -> None:
    """For every query, the candidates and their order equal `MinHashLSH.query`'s list."""
    from datasketch import LeanMinHash, MinHashLSH

    rng = np.random.default_rng(2)
    num_perm, bands, rows = 32, 8, 4
    base = rng.integers(0, 2**32, (60, num_perm), dtype=np.uint64).astype(np.uint32)
    sigs = base[rng.integers(0, 60, 1500)]  # many shared bands: variants of 60 signatures
    mutate = rng.random(sigs.shape) < 0.25
    sigs = np.where(mutate, rng.integers(0, 2**32, sigs.shape, dtype=np.uint64).astype(np.uint32), sigs)
    lsh = MinHashLSH(num_perm=num_perm, params=(bands, rows))
    index = LSHIndex(num_perm, 0.5, bands, rows)
    inserted = 0
    for start in range(0, len(sigs), 100):  # insert in batches, as shards do: several runs, merged
        batch = sigs[start : start + 100]
        for s in batch:
            lsh.insert(inserted, LeanMinHash(seed=1, hashvalues=s, scheme="affine32"), check_duplication=False)
            inserted += 1
        index.add(band_keys(batch, bands, rows), batch)
        queries = sigs[rng.integers(0, len(sigs), 50)]
        q_rows, q_bands, q_ids = index.lookup(band_keys(queries, bands, rows))
        for i, q in enumerate(queries):
            expected = lsh.query(LeanMinHash(seed=1, hashvalues=q, scheme="affine32"))
            mine = [(b, e) for r, b, e in zip(q_rows.tolist(), q_bands.tolist(), q_ids.tolist(), strict=True) if r == i]
            assert datasketch_order(bands, mine) == expected
    assert len(index._runs) < 6 and index.size == len(sigs) and len(index._filter) > 1 << 12  # runs merged, filter grown
    assert np.array_equal(index.signatures(np.arange(len(sigs))), sigs)


def test_cluster_sizes_plot(tmp_path: Path) -> None:
    from PIL import Image

    art, _ = dataset(tmp_path)
    run_kind("dedup", {"workers": 1}, {"dataset": art}, tmp_path / "o")
    with Image.open(tmp_path / "o" / "cluster_sizes.png") as image:
        assert image.format == "PNG" and image.size == (500, 300)
    rows = [{"id": f"u{i}", "prompt": "p", "completion": doc()} for i in range(5)]
    art = Artifact("sft_dataset", write_jsonl(tmp_path / "u.jsonl", rows))
    run_kind("dedup", {"workers": 1}, {"dataset": art}, tmp_path / "u")
    assert not (tmp_path / "u" / "cluster_sizes.png").exists()  # nothing removed: no plot


def minhashlsh_first_matches(sigs: np.ndarray, threshold: float, num_perm: int, weights: tuple[float, float]) -> list[int | None]:
    """The dedup loop on datasketch alone: each signature is queried, matched to the first candidate in
    `query`'s order that agrees on >= threshold of its values, or inserted as the next entry."""
    from datasketch import LeanMinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights)
    entries: list[np.ndarray] = []
    out: list[int | None] = []
    for sig in sigs:
        m = LeanMinHash(seed=1, hashvalues=sig, scheme="affine32")
        match = next((c for c in lsh.query(m) if float(np.mean(entries[c] == sig)) >= threshold), None)
        out.append(match)
        if match is None:
            lsh.insert(len(entries), m, check_duplication=False)
            entries.append(sig)
    return out


def index_first_matches(sigs: np.ndarray, index: LSHIndex, batch: int) -> list[int | None]:
    """The same loop on `LSHIndex`, `batch` signatures per shard."""
    out: list[int | None] = []
    for start in range(0, len(sigs), batch):
        shard = index.shard(sigs[start : start + batch])
        for i in range(len(shard.sigs)):
            match = shard.match(i)
            out.append(match)
            if match is None:
                shard.added(i, index.size + len(shard.new_rows))
        shard.commit()
    return out


def near_duplicate_signatures(num_perm: int, n: int = 600) -> np.ndarray:
    """Signatures of near-duplicate families of documents (see `near_duplicate_rows`), then random ones."""
    rows, _ = near_duplicate_rows(n, seed=num_perm)
    texts = [Normalizer()(r["completion"]) for r in rows]
    near = Signer(num_perm, 1, 1).sign(texts)
    noise = np.random.default_rng(num_perm).integers(0, 2**32, (n // 4, num_perm), dtype=np.uint64).astype(np.uint32)
    return np.concatenate([near, noise, near[: n // 4]])  # the last rows: copies of entries and of matched rows


@pytest.mark.parametrize(
    ("threshold", "num_perm", "weights"),
    [(0.5, 64, (0.5, 0.5)), (0.8, 128, (0.5, 0.5)), (0.8, 128, (0.05, 0.95)), (0.35, 32, (0.2, 0.8)), (0.9, 256, (0.5, 0.5))],
)
def test_index_gives_minhashlsh_candidates_and_first_match(threshold: float, num_perm: int, weights: tuple[float, float]) -> None:
    from datasketch import LeanMinHash, MinHashLSH

    from halo_pipeline.tasks.dedup import lsh_bands

    bands, rows = lsh_bands(threshold, num_perm, weights)
    sigs = near_duplicate_signatures(num_perm)
    expected = minhashlsh_first_matches(sigs, threshold, num_perm, weights)
    assert sum(m is not None for m in expected) > 50  # near-duplicates found
    for batch in (1, 37, len(sigs)):  # candidates from earlier shards, within a shard, or both
        index = LSHIndex(num_perm, threshold, bands, rows)
        assert index_first_matches(sigs, index, batch) == expected, batch
    # candidates of every signature against all of them indexed, in `query`'s order
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights)
    assert (lsh.b, lsh.r) == (bands, rows)
    for entry, sig in enumerate(sigs):
        lsh.insert(entry, LeanMinHash(seed=1, hashvalues=sig, scheme="affine32"), check_duplication=False)
    index = LSHIndex(num_perm, threshold, bands, rows)
    for start in range(0, len(sigs), 100):
        index.add(band_keys(sigs[start : start + 100], bands, rows), sigs[start : start + 100])
    found_rows, found_bands, found_ids = index.lookup(band_keys(sigs, bands, rows))
    per_row: dict[int, list[tuple[int, int]]] = {}
    for r, b, e in zip(found_rows.tolist(), found_bands.tolist(), found_ids.tolist(), strict=True):
        per_row.setdefault(r, []).append((b, e))
    several = 0
    for i, sig in enumerate(sigs):
        listed = lsh.query(LeanMinHash(seed=1, hashvalues=sig, scheme="affine32"))
        assert datasketch_order(bands, per_row.get(i, [])) == listed, i
        several += len(listed) > 2
    assert several > 20  # orders of several candidates compared


def test_index_compares_many_candidates_in_bounded_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A band key shared by many entries: every (row, entry) pair is still judged, chunk by chunk."""
    from halo_pipeline.data import lsh_index

    rng = np.random.default_rng(4)
    num_perm, bands, rows = 32, 4, 8
    sigs = rng.integers(0, 2**32, (300, num_perm), dtype=np.uint64).astype(np.uint32)
    sigs[:, :rows] = 7  # the first band of every signature alike
    sigs[150:, : 3 * rows] = sigs[:150, : 3 * rows]  # 75% equal to their counterpart 150 rows before
    for chunk in (lsh_index._COMPARE_VALUES, num_perm * 7, 1):
        monkeypatch.setattr(lsh_index, "_COMPARE_VALUES", chunk)
        index = LSHIndex(num_perm, 0.7, bands, rows)
        index.add(band_keys(sigs[:150], bands, rows), sigs[:150])
        shard = index.shard(sigs[150:])
        assert [shard.match(i) for i in range(150)] == list(range(150))
        assert sum(len(v) for v in shard.known.values()) >= 150 * 150  # every row a candidate of every entry
