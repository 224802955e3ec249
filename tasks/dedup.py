"""dedup: exact (SHA-256 of normalized text) then fuzzy (MinHash + LSH) deduplication of a dataset.

Rows are streamed in shards; signatures are computed with numpy (bit-identical to datasketch's
`MinHash`, scheme affine32), in worker processes once the input spans several shards. Candidates come
from a compact numpy band index with the bands and answers of datasketch's `MinHashLSH`, and a
candidate counts as a duplicate only when the signatures' estimated Jaccard similarity reaches
`threshold`. The first occurrence is kept (or the highest `reward`/`score` with `keep: best`);
`clusters.jsonl` maps every removed row to the row it duplicates.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from array import array
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from halo_pipeline.data import sources
from halo_pipeline.data.lsh_index import LSHIndex
from halo_pipeline.data.minhash import SCHEME, Normalizer, Signer
from halo_pipeline.data.rows import OnBadRows, default_text_fields, read_numbered_rows, row_text, write_rows
from halo_pipeline.engine.step import Artifact, Params, RunContext, step

# Worker processes start with the input's 5th shard (16,001+ rows at the default shard_size): a smaller input
# takes under a second in one process (~0.45 s of CPU per 10k rows, docs/benchmarks.md), too little for them to pay.
_POOL_AFTER_SHARDS = 4


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
    lsh_weights: tuple[float, float] = Field(
        (0.5, 0.5), description="Weights of false positives/negatives that choose the LSH bands (datasketch MinHashLSH's `weights`)."
    )
    seed: int = Field(1, description="MinHash permutation seed.")
    keep: Literal["first", "best"] = Field("first", description="Which row of a cluster survives.")
    score_field: str | None = Field(None, description="Field that `keep: best` maximizes (default: score, else reward).")
    workers: int = Field(
        0,
        ge=0,
        description="Processes computing signatures (0: one per core), started when the input reaches a 5th shard; smaller inputs run in one process.",
    )
    shard_size: int = Field(4000, ge=1, description="Rows per shard sent to a worker.")
    on_bad_rows: OnBadRows = Field("error", description="`error` stops at a malformed row; `skip` counts it.")
    columns: dict[str, str] = Field(default_factory=dict, description=sources.COLUMNS_HELP)


def _shard_work(
    texts: list[str], normalize: dict[str, Any], exact: bool, fuzzy: bool, signer_args: tuple[int, int, int, str]
) -> tuple[list[bytes], np.ndarray | None]:
    """Normalize, exact-hash and sign one shard (runs in a worker process for large inputs)."""
    encoded = Normalizer(**normalize).batch(texts)  # UTF-8 of the normalized texts
    digests = [hashlib.sha256(t).digest()[:16] for t in encoded] if exact else []
    sigs = Signer(*signer_args).sign(encoded) if fuzzy else None
    return digests, sigs


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
        self.best = array("q")  # cluster -> current kept row index
        self.best_score = array("d")
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


@functools.lru_cache(maxsize=64)  # validate, then run, in one process
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
    src = inputs["dataset"]
    workers = params.workers or os.cpu_count() or 1
    bands, rows_per_band = lsh_bands(params.threshold, params.num_perm, params.lsh_weights) if params.fuzzy else (None, None)
    # every cluster's first row, indexed as datasketch's MinHashLSH would index it (same bands, same answers)
    near = LSHIndex(params.num_perm, params.threshold, bands, rows_per_band) if bands and rows_per_band else None
    clusters = _Clusters(params.keep)
    exact_seen: dict[bytes, int] = {}
    ids: list[str] = []
    bad: list[str] = []
    stats = {"rows_in": 0, "exact_removed": 0, "fuzzy_removed": 0}
    lines = array("I")  # line number of each valid row, for the second (writing) pass
    numbered = read_numbered_rows(src.path, src.type, params.on_bad_rows, bad, params.columns)

    def counted() -> Iterator[dict[str, Any]]:
        for n, row in numbered:
            lines.append(n)
            yield row

    rows = counted()

    work_args = (params.normalize.model_dump(), params.exact, params.fuzzy, (params.num_perm, params.seed, params.ngram, params.unit))
    pool: ProcessPoolExecutor | None = None
    pending: deque[tuple[list[dict[str, Any]], Any]] = deque()
    try:
        for n, shard in enumerate(_shards(rows, params.shard_size)):
            fields = params.key or default_text_fields(src.type, shard[0])
            texts = [row_text(r, fields) for r in shard]
            if n == _POOL_AFTER_SHARDS and workers > 1:  # a large input: worth starting processes
                pool = ProcessPoolExecutor(max_workers=workers)
                for _ in range(len(pending)):  # shards read so far and not yet done: theirs too
                    earlier, earlier_texts = pending.popleft()
                    pending.append((earlier, pool.submit(_shard_work, earlier_texts, *work_args)))
            if pool:
                pending.append((shard, pool.submit(_shard_work, texts, *work_args)))
            else:
                pending.append((shard, texts))
            while len(pending) > 2 * workers:  # bounded: memory stays flat on large files
                _consume(pending.popleft(), params, near, clusters, exact_seen, ids, stats, work_args)
        while pending:
            _consume(pending.popleft(), params, near, clusters, exact_seen, ids, stats, work_args)
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
            "bands": bands,
            "rows_per_band": rows_per_band,
            "index": "numpy band index with MinHashLSH's answers" if near else None,
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


def _consume(item, params, near, clusters, exact_seen, ids, stats, work_args):  # type: ignore[no-untyped-def]
    """Decide the rows of one shard, in order: exact duplicate, near-duplicate, or a new cluster."""
    shard, work = item
    digests, sigs = work.result() if isinstance(work, Future) else _shard_work(work, *work_args)
    matcher = near.shard(sigs) if near is not None else None
    exact, best, field = params.exact, params.keep == "best", params.score_field
    h = b""
    for i, row in enumerate(shard):
        row_index = len(ids)
        ids.append(str(row["id"]))
        score = _score(row, field) if best else 0.0
        if exact:
            h = digests[i]
            cluster = exact_seen.get(h)
            if cluster is not None:
                clusters.add(cluster, row_index, score, "exact")
                stats["exact_removed"] += 1
                continue
        if matcher is not None:
            cluster = matcher.match(i)
            if cluster is not None:
                clusters.add(cluster, row_index, score, "fuzzy")
                stats["fuzzy_removed"] += 1
                if exact:
                    exact_seen[h] = cluster
                continue
        cluster = clusters.new(row_index, score)
        if exact:
            exact_seen[h] = cluster
        if matcher is not None:
            matcher.added(i, cluster)
    if matcher is not None:
        matcher.commit()
    stats["rows_in"] += len(shard)


def _lines_to_keep(fin: Iterable[str], lines: array, removed: dict[int, Any]) -> Iterator[str]:
    index = 0
    for lineno, line in enumerate(fin, 1):
        if index < len(lines) and lines[index] == lineno:
            if index not in removed:
                yield line
            index += 1


def _plot_cluster_sizes(sizes: list[int], path: Path) -> None:
    """A histogram of the cluster sizes, drawn with Pillow in matplotlib's look (its font, colors and
    layout): importing matplotlib took 0.3-0.4 s of CPU here, as long as the rest of the step on 10k rows."""
    from PIL import Image, ImageDraw

    counts = Counter(sizes)
    top, most = max(counts), max(counts.values())
    font, title = _font(13), _font(16)
    left = 38 + int(max(font.getlength(str(t)) for t in _ticks(0, most)))  # room for the y labels
    right, upper, lower = 485, 30, 252  # the axes, in pixels of a 500 x 300 image
    x0, x1 = 1.5 - 0.05 * (top - 1), top + 0.5 + 0.05 * (top - 1)  # matplotlib's 5% margins

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (right - left)

    def py(y: float) -> float:
        return lower - y / (most * 1.05) * (lower - upper)

    image = Image.new("RGB", (500, 300), "white")
    draw = ImageDraw.Draw(image)
    for size, n in counts.items():
        draw.rectangle((px(size - 0.5), py(n), px(size + 0.5), lower), fill="#4c72b0")
    draw.rectangle((left, upper, right, lower), outline="black")
    for tick in _ticks(2, top):
        draw.line((px(tick), lower, px(tick), lower + 4), fill="black")
        draw.text((px(tick), lower + 6), str(tick), fill="black", font=font, anchor="mt")
    for tick in _ticks(0, most):
        draw.line((left - 4, py(tick), left, py(tick)), fill="black")
        draw.text((left - 7, py(tick)), str(tick), fill="black", font=font, anchor="rm")
    draw.text(((left + right) / 2, upper - 7), "duplicate clusters", fill="black", font=title, anchor="ms")
    draw.text(((left + right) / 2, 294), "cluster size (rows)", fill="black", font=font, anchor="md")
    label = Image.new("RGB", (120, 20), "white")
    ImageDraw.Draw(label).text((60, 10), "clusters", fill="black", font=font, anchor="mm")
    image.paste(label.rotate(90, expand=True), (2, (upper + lower) // 2 - 60))
    image.save(path)


def _ticks(lo: int, hi: int) -> list[int]:
    """Whole-number ticks from lo to hi, 1, 2 or 5 times a power of ten apart, at most 8 of them."""
    step = 1
    while (hi - lo) / step > 7:
        step = step * 5 // 2 if str(step)[0] == "2" else step * 2
    return list(range(-(-lo // step) * step, hi + 1, step))


def _font(size: int) -> Any:
    from PIL import ImageFont

    spec = importlib.util.find_spec("matplotlib")  # its DejaVu Sans, read without importing matplotlib
    ttf = (
        Path(spec.submodule_search_locations[0]) / "mpl-data/fonts/ttf/DejaVuSans.ttf" if spec and spec.submodule_search_locations else None
    )
    return ImageFont.truetype(str(ttf), size) if ttf and ttf.exists() else ImageFont.load_default(size)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)
