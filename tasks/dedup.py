"""dedup: exact (SHA-256 of normalized text) then fuzzy (MinHash + LSH) deduplication of a dataset.

Rows are streamed in shards; signatures are computed in worker processes with numpy (bit-identical
to datasketch's `MinHash`, scheme affine32), candidates come from datasketch's `MinHashLSH`, and a
candidate counts as a duplicate only when the signatures' estimated Jaccard similarity reaches
`threshold`. The first occurrence is kept (or the highest `reward`/`score` with `keep: best`);
`clusters.jsonl` maps every removed row to the row it duplicates.
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from halo_pipeline.data import sources
from halo_pipeline.data.minhash import SCHEME, Normalizer, Signer
from halo_pipeline.data.rows import OnBadRows, default_text_fields, read_numbered_rows, row_text, write_rows
from halo_pipeline.engine.step import Artifact, Params, RunContext, step


class NormalizeParams(Params):
    lowercase: bool = Field(True, description="Compare case-insensitively.")
    collapse_whitespace: bool = Field(True, description="Treat runs of whitespace as one space.")
    strip_punctuation: bool = Field(False, description="Drop punctuation before comparing.")
    unicode_form: Literal["NFC", "NFKC", "NFD", "NFKD"] | None = Field("NFKC", description="Unicode normalization.")


class DedupParams(Params):
    key: list[str] | None = Field(
        None, description="Field(s) compared: a name or a list (default: prompt+completion, prompt+chosen+rejected, or messages)."
    )

    @field_validator("key", mode="before", json_schema_input_type=str | list[str] | None)
    @classmethod
    def _one_field(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # `key: completion` means [completion]

    exact: bool = Field(True, description="Remove exact duplicates (SHA-256 of the normalized text).")
    fuzzy: bool = Field(True, description="Remove near-duplicates with MinHash + LSH.")
    normalize: NormalizeParams = Field(default_factory=NormalizeParams, description="Text normalization before hashing.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (datasketch `num_perm`).")
    threshold: float = Field(0.8, gt=0, lt=1, description="Jaccard similarity at which rows are near-duplicates.")
    ngram: int = Field(3, ge=1, le=32, description="Shingle size in words (or characters with `unit: char`).")
    unit: Literal["word", "char"] = Field("word", description="Shingle unit.")
    lsh_weights: tuple[float, float] = Field((0.5, 0.5), description="datasketch MinHashLSH weights of false positives/negatives.")
    seed: int = Field(1, description="MinHash permutation seed.")
    keep: Literal["first", "best"] = Field("first", description="Which row of a cluster survives.")
    score_field: str | None = Field(None, description="Field that `keep: best` maximizes (default: score, else reward).")
    workers: int = Field(0, ge=0, description="Processes computing signatures (0: one per core).")
    shard_size: int = Field(4000, ge=1, description="Rows per shard sent to a worker.")
    on_bad_rows: OnBadRows = Field("error", description="`error` stops at a malformed row; `skip` counts it.")
    columns: dict[str, str] = Field(default_factory=dict, description=sources.COLUMNS_HELP)


def _shard_work(
    texts: list[str], normalize: dict[str, Any], exact: bool, fuzzy: bool, signer_args: tuple[int, int, int, str]
) -> tuple[list[bytes], np.ndarray | None]:
    """Normalize, exact-hash and sign one shard (runs in a worker process for large inputs)."""
    norm = Normalizer(**normalize)
    texts = [norm(t) for t in texts]
    digests = [hashlib.sha256(t.encode("utf-8")).digest()[:16] for t in texts] if exact else []
    sigs = Signer(*signer_args).sign(texts) if fuzzy else None
    return digests, sigs


def _band_key(band: bytes) -> bytes:
    """8-byte keys for LSH bands: datasketch keeps every band key twice, so short keys halve the index."""
    return hashlib.blake2b(band, digest_size=8).digest()


def _shards(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    shard: list[dict[str, Any]] = []
    for row in rows:
        shard.append(row)
        if len(shard) >= size:
            yield shard
            shard = []
    if shard:
        yield shard


class _Clusters:
    """Running cluster state: which row represents each cluster and who was removed into it."""

    def __init__(self, keep: str):
        self.keep = keep
        self.best: list[int] = []  # cluster -> current kept row index
        self.best_score: list[float] = []
        self.member_of: dict[int, tuple[int, str]] = {}  # removed row -> (cluster, how)

    def new(self, row: int, score: float) -> int:
        self.best.append(row)
        self.best_score.append(score)
        return len(self.best) - 1

    def add(self, cluster: int, row: int, score: float, how: str) -> None:
        if self.keep == "best" and score > self.best_score[cluster]:
            self.member_of[self.best[cluster]] = (cluster, how)
            self.best[cluster], self.best_score[cluster] = row, score
        else:
            self.member_of[row] = (cluster, how)


def _score(row: dict[str, Any], field: str | None) -> float:
    for name in [field] if field else ["score", "reward", "chosen_reward"]:
        value = row.get(name) if name else None
        if isinstance(value, int | float):
            return float(value)
    return float("-inf")


def lsh_bands(threshold: float, num_perm: int, weights: tuple[float, float]) -> tuple[int, int]:
    """The (bands, rows) datasketch's MinHashLSH picks: the pair minimizing the weighted false
    positive and negative areas. Same objective, integrated with numpy so that `validate` does not
    import scipy (datasketch integrates with scipy.integrate.quad)."""
    pairs = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=float)
    b, r = pairs[:, :1], pairs[:, 1:]
    lo, hi = np.linspace(0.0, threshold, 801), np.linspace(threshold, 1.0, 801)
    fp = np.trapezoid(1 - (1 - lo**r) ** b, lo, axis=1)
    fn = np.trapezoid((1 - hi**r) ** b, hi, axis=1)
    best = int(np.argmin(fp * weights[0] + fn * weights[1]))
    return int(pairs[best, 0]), int(pairs[best, 1])


def check(params: DedupParams) -> list[str]:
    if not params.fuzzy:
        return []
    bands, rows = lsh_bands(params.threshold, params.num_perm, params.lsh_weights)
    if bands < 2:
        return [
            f"LSH with threshold={params.threshold} and num_perm={params.num_perm} gets {bands} band of {rows} rows; datasketch needs >= 2 (raise num_perm or lower threshold)"
        ]
    return []


@step(
    inputs={"dataset": ("sft_dataset", "preference_dataset", "prompts")},
    outputs={"dataset": "same:dataset", "clusters": "file"},
    version="1",
    libraries=("datasketch", "numpy"),
    check=check,
    check_inputs=sources.check_inputs,
)
def run(params: DedupParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    from datasketch import MinHashLSH

    src = inputs["dataset"]
    workers = params.workers or os.cpu_count() or 1
    lsh = (
        MinHashLSH(threshold=params.threshold, num_perm=params.num_perm, weights=params.lsh_weights, hashfunc=_band_key)
        if params.fuzzy
        else None
    )
    signer = Signer(params.num_perm, params.seed, params.ngram, params.unit)
    clusters = _Clusters(params.keep)
    exact_seen: dict[bytes, int] = {}
    sig_store = np.empty((1024, params.num_perm), dtype=np.uint32)  # signature of each cluster's first row
    ids: list[str] = []
    bad: list[str] = []
    stats = {"rows_in": 0, "exact_removed": 0, "fuzzy_removed": 0}
    lines = array("I")  # line number of each valid row, for the second (writing) pass
    numbered = read_numbered_rows(src.path, src.type, params.on_bad_rows, bad, params.columns)
    rows = (lines.append(n) or row for n, row in numbered)

    work_args = (params.normalize.model_dump(), params.exact, params.fuzzy, (params.num_perm, params.seed, params.ngram, params.unit))
    pool: ProcessPoolExecutor | None = None
    pending: deque[tuple[list[dict[str, Any]], Any]] = deque()
    try:
        for n, shard in enumerate(_shards(rows, params.shard_size)):
            fields = params.key or default_text_fields(src.type, shard[0])
            texts = [row_text(r, fields) for r in shard]
            if n == 1 and workers > 1:  # more than one shard: worth starting processes
                pool = ProcessPoolExecutor(max_workers=workers)
                first_shard, first_texts = pending.popleft()
                pending.append((first_shard, pool.submit(_shard_work, first_texts, *work_args)))
            if pool:
                pending.append((shard, pool.submit(_shard_work, texts, *work_args)))
            else:
                pending.append((shard, texts))
            while len(pending) > 2 * workers:  # bounded: memory stays flat on large files
                sig_store = _consume(pending.popleft(), params, lsh, signer, clusters, exact_seen, sig_store, ids, stats, work_args)
        while pending:
            sig_store = _consume(pending.popleft(), params, lsh, signer, clusters, exact_seen, sig_store, ids, stats, work_args)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)

    removed = clusters.member_of
    out_path, clusters_path = ctx.path("dataset.jsonl"), ctx.path("clusters.jsonl")
    kept = 0
    if sources.is_dataset_path(src.path) or params.columns:  # mapped rows (a dataset file, `columns:`): written as our JSONL
        again = read_numbered_rows(src.path, src.type, "skip", [], params.columns)  # the same valid rows, in the same order
        kept = write_rows(out_path, (row for index, (_, row) in enumerate(again) if index not in removed))
    else:  # our JSONL: kept lines copied as they are
        with open(src.path, encoding="utf-8") as fin, open(out_path, "w", encoding="utf-8") as fout:
            for line in _lines_to_keep(fin, lines, removed):
                fout.write(line if line.endswith("\n") else line + "\n")
                kept += 1
    sizes: dict[int, int] = {}
    with open(clusters_path, "w", encoding="utf-8") as fc:
        for row, (cluster, how) in sorted(removed.items()):
            fc.write(json.dumps({"id": ids[row], "duplicate_of": ids[clusters.best[cluster]], "match": how}) + "\n")
            sizes[cluster] = sizes.get(cluster, 1) + 1
    stats.update(rows_out=kept, removed=len(removed), bad_rows=len(bad), clusters_with_duplicates=len(sizes))
    ctx.metrics.update(stats)
    ctx.meta["dataset"] = {"rows": kept}
    ctx.meta["clusters"] = {
        "datasketch_version": _version("datasketch"),
        "hashing": f"MinHash scheme={SCHEME} seed={params.seed} num_perm={params.num_perm}; shingles: {params.unit} {params.ngram}-grams, crc32 tokens",
        "lsh": {
            "threshold": params.threshold,
            "weights": list(params.lsh_weights),
            "bands": lsh.b if lsh else None,
            "rows_per_band": lsh.r if lsh else None,
        },
    }
    for line in bad[:20]:
        ctx.log.warning("bad row skipped: %s", line)
    ctx.summary(
        f"{stats['rows_in']} rows in, {kept} kept: {stats['exact_removed']} exact and {stats['fuzzy_removed']} near-duplicates removed."
    )
    if sizes:
        _plot_cluster_sizes(list(sizes.values()), ctx.path("cluster_sizes.png"))
    return {"dataset": out_path, "clusters": clusters_path}


def _consume(item, params, lsh, signer, clusters, exact_seen, sig_store, ids, stats, work_args):  # type: ignore[no-untyped-def]
    shard, work = item
    digests, sigs = work.result() if isinstance(work, Future) else _shard_work(work, *work_args)
    for i, row in enumerate(shard):
        index = len(ids)
        ids.append(str(row["id"]))
        stats["rows_in"] += 1
        score = _score(row, params.score_field)
        if params.exact:
            h = digests[i]
            cluster = exact_seen.get(h)
            if cluster is not None:
                clusters.add(cluster, index, score, "exact")
                stats["exact_removed"] += 1
                continue
        cluster = None
        if lsh is not None:
            sig = sigs[i]
            for cand in lsh.query(signer.lean(sig)):
                if float(np.mean(sig_store[cand] == sig)) >= params.threshold:
                    cluster = cand
                    break
            if cluster is not None:
                clusters.add(cluster, index, score, "fuzzy")
                stats["fuzzy_removed"] += 1
                if params.exact:
                    exact_seen[h] = cluster
                continue
        cluster = clusters.new(index, score)
        if params.exact:
            exact_seen[h] = cluster
        if lsh is not None:
            if cluster >= len(sig_store):
                sig_store = np.resize(sig_store, (2 * len(sig_store), params.num_perm))
            sig_store[cluster] = sigs[i]
            lsh.insert(cluster, signer.lean(sigs[i]), check_duplication=False)
    return sig_store


def _lines_to_keep(fin: Iterable[str], lines: array, removed: dict[int, Any]) -> Iterator[str]:
    index = 0
    for lineno, line in enumerate(fin, 1):
        if index < len(lines) and lines[index] == lineno:
            if index not in removed:
                yield line
            index += 1


def _plot_cluster_sizes(sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(sizes, bins=range(2, max(sizes) + 2), color="#4c72b0", align="left")
    ax.set_xlabel("cluster size (rows)")
    ax.set_ylabel("clusters")
    ax.set_title("duplicate clusters")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)
