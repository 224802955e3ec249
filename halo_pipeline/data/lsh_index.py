"""A compact MinHash LSH index that answers like datasketch's `MinHashLSH` (dedup's fuzzy stage).

datasketch keeps every band key of every entry as Python objects in dicts of sets (twice: per band
and per key): dedup peaked at 3.7 GB on 1M documents with it (docs/benchmarks.md). Here each band of a
signature becomes one 64-bit key (the band's number mixed in), kept in a few sorted numpy runs (key +
entry id: 12 bytes per band; runs of similar size are merged, as in a log-structured merge tree), and
the signatures in blocks of a uint32 array: 620 bytes per entry at num_perm=128 and 9 bands, plus a
one-bit-per-slot filter of 2-4 bytes per key that spares most absent keys a search of the runs.

`LSHIndex.shard` matches a batch of signatures as if each had been queried and then, if it started a
new cluster, inserted one after the other: candidates among the indexed entries are looked up for the
whole batch at once, candidates within the batch (shared band keys) are followed as rows are decided.
A candidate is a match when the signatures agree in at least `threshold` of their positions (dedup's
estimated Jaccard similarity). When several candidates match, the one chosen is the first that
datasketch's `query` would list: its result is `list()` of a Python set of the entry ids, built band
by band from the bucket sets, and the order of a set of ints is a pure function of its insertion
history, which `datasketch_order` replays. Results equal datasketch's up to collisions of the 64-bit
band keys (datasketch's own 8-byte blake2b band keys collide as rarely).
"""

from __future__ import annotations

import numpy as np

_BLOCK = 1 << 16  # signatures per storage block: growing never copies what is stored
_BIT = np.array([1, 2, 4, 8, 16, 32, 64, 128], dtype=np.uint8)  # a filter byte's bits
_COMPARE_VALUES = 1 << 22  # signature values compared at once (16 MB on each side): bounded memory
_MIX = np.uint64(0x9E3779B97F4A7C15)
_FMIX64 = (np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(33), np.uint64(0xC4CEB9FE1A85EC53), np.uint64(33))


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band of each signature, shape (len(sigs), bands): band i is the
    signature's values `[i * rows, (i + 1) * rows)` (datasketch's `hashranges`) hashed with i."""
    keys = np.empty((len(sigs), bands), dtype=np.uint64)
    columns = np.ascontiguousarray(sigs[:, : bands * rows].T)  # one signature position per row: contiguous reads
    s1, m1, s2, m2, s3 = _FMIX64
    with np.errstate(over="ignore"):
        for band in range(bands):
            h = np.full(len(sigs), np.uint64(band + 1) * _MIX, dtype=np.uint64)
            for col in range(band * rows, (band + 1) * rows):
                h ^= columns[col]
                h *= m1
                h ^= h >> s2
            h ^= h >> s1
            h *= m2
            h ^= h >> s3
            keys[:, band] = h
    return keys


def datasketch_order(bands: int, candidates: list[tuple[int, int]]) -> list[int]:
    """The entry ids of (band, id) candidates in the order `MinHashLSH.query` lists them.

    datasketch's bucket for a band key is a set that received its ids one by one as they were
    inserted (ascending ids here); `query` adds each band's bucket, in band order, to one set and
    returns `list()` of it."""
    members: list[set[int]] = [set() for _ in range(bands)]
    for band, entry in candidates:
        members[band].add(entry)
    found: set[int] = set()
    for ids in members:
        bucket: set[int] = set()
        for entry in sorted(ids):
            bucket.add(entry)
        for entry in bucket:
            found.add(entry)
    return list(found)


class LSHIndex:
    """Signatures of entries 0, 1, 2, ... and their band keys; see the module docstring."""

    def __init__(self, num_perm: int, threshold: float, bands: int, rows: int):
        self.num_perm, self.bands, self.rows = num_perm, bands, rows
        # dedup's test is `mean(sig_a == sig_b) >= threshold`: the least count of equal values that passes
        self.min_equal = int(np.argmax(np.arange(num_perm + 1) / num_perm >= threshold))
        self.size = 0
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted keys, entry ids), sizes decreasing
        self._blocks: list[np.ndarray] = []
        # a bit per 64-bit key prefix, >= 16 bits per key: most keys of a query are in no run, and this
        # says so for ~94% of them without a binary search in each run (cache misses in GBs of keys)
        self._filter = np.zeros(1 << 12, dtype=np.uint8)  # grown to a power of two as entries come
        self._filter_shift = np.uint64(64 - 15)

    def shard(self, sigs: np.ndarray) -> Shard:
        """Start matching a batch of signatures (rows in order); see `Shard`."""
        return Shard(self, sigs)

    def add(self, keys: np.ndarray, sigs: np.ndarray) -> None:
        """Index entries `size, size + 1, ...` with their band keys (n, bands) and signatures (n, num_perm)."""
        flat = keys.ravel()
        order = np.argsort(flat)
        self._add_sorted(flat[order], (self.size + order // self.bands).astype(np.int32), sigs)

    def _add_sorted(self, run_keys: np.ndarray, run_ids: np.ndarray, sigs: np.ndarray) -> None:
        """`add`, given the new entries' band keys sorted and the entry id of each key."""
        n = len(sigs)
        if n == 0:
            return
        done = 0
        while done < n:  # signatures: fill the last block, then new ones
            if len(self._blocks) * _BLOCK == self.size:
                self._blocks.append(np.empty((_BLOCK, self.num_perm), dtype=np.uint32))
            at = self.size % _BLOCK
            take = min(n - done, _BLOCK - at)
            self._blocks[-1][at : at + take] = sigs[done : done + take]
            self.size += take
            done += take
        run = (run_keys, run_ids)
        need = 2 * self.size * self.bands  # filter bytes: >= 16 bits per key
        if len(self._filter) >= need:
            self._set_filter(run[0])
        else:  # grown: the next power of two bytes, set again from all keys (once per doubling of the keys)
            bits = 3 + int(np.ceil(np.log2(need)))
            self._filter = np.zeros(1 << (bits - 3), dtype=np.uint8)
            self._filter_shift = np.uint64(64 - bits)
            for k in [run[0], *(k for k, _ in self._runs)]:
                self._set_filter(k)
        while self._runs and len(self._runs[-1][0]) <= 2 * len(run[0]):  # keep O(log n) runs of growing size
            run = _merge(self._runs.pop(), run)
        self._runs.append(run)

    def _set_filter(self, keys: np.ndarray) -> None:
        """Set the filter's bit of each key (the key's top bits)."""
        bit = keys >> self._filter_shift
        np.bitwise_or.at(self._filter, bit >> np.uint64(3), _BIT[bit & np.uint64(7)])

    def _maybe(self, keys: np.ndarray) -> np.ndarray:
        """False for keys certainly in no run."""
        bit = keys >> self._filter_shift
        return (self._filter[bit >> np.uint64(3)] & _BIT[bit & np.uint64(7)]) != 0

    def signatures(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.num_perm), dtype=np.uint32)
        block = ids // _BLOCK
        for b in np.unique(block).tolist():
            sel = block == b
            out[sel] = self._blocks[b][ids[sel] % _BLOCK]
        return out

    def lookup(self, keys: np.ndarray, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All indexed entries that share a band key with each row: (row, band, entry id) arrays.
        `order`: `np.argsort(keys.ravel())` when the caller has it."""
        flat = keys.ravel()
        order = np.argsort(flat) if order is None else order
        order = order[self._maybe(flat[order])]
        needles = flat[order]  # sorted needles: numpy's binary search reuses the previous position
        found_at: list[np.ndarray] = []
        found_ids: list[np.ndarray] = []
        for run_keys, run_ids in self._runs:
            lo = np.searchsorted(run_keys, needles, side="left")
            hit = run_keys[np.minimum(lo, len(run_keys) - 1)] == needles
            if not hit.any():
                continue
            first = lo[hit]
            count = np.searchsorted(run_keys, needles[hit], side="right") - first
            before = np.cumsum(count) - count
            found_at.append(np.repeat(order[hit], count))
            found_ids.append(run_ids[np.repeat(first - before, count) + np.arange(int(count.sum()))])
        if not found_at:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        at = np.concatenate(found_at)
        return at // self.bands, at % self.bands, np.concatenate(found_ids).astype(np.int64)


def _agree(index: LSHIndex, sigs: np.ndarray, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Whether each (batch row, indexed entry) pair's signatures agree in >= threshold of their positions;
    each distinct pair compared once (a pair shares several bands), in chunks: memory stays bounded when a
    band key is shared by many entries."""
    pairs, inverse = np.unique(rows * np.int64(1 << 32) + ids, return_inverse=True)
    ok = np.empty(len(pairs), dtype=bool)
    step = max(1, _COMPARE_VALUES // index.num_perm)
    for start in range(0, len(pairs), step):
        chunk = pairs[start : start + step]
        equal = np.count_nonzero(index.signatures(chunk & np.int64(0xFFFFFFFF)) == sigs[chunk >> np.int64(32)], axis=1)
        ok[start : start + step] = equal >= index.min_equal
    return ok[inverse.ravel()]


class Shard:
    """Matching of one batch of signatures, row by row in order.

    For each row that reaches the fuzzy stage, `match(i)` returns the entry it duplicates or None;
    a row that starts a new entry is reported with `added(i, entry)` (entries are numbered on from
    `index.size`, in order); `commit()` then indexes the batch's new entries.
    """

    def __init__(self, index: LSHIndex, sigs: np.ndarray):
        self.index, self.sigs = index, sigs
        self.keys = band_keys(sigs, index.bands, index.rows)
        self.new_rows: list[int] = []
        flat = self.keys.ravel()
        self.order = order = np.argsort(flat, kind="stable")
        # candidates among entries already indexed: the whole batch at once
        rows, bands, ids = index.lookup(self.keys, order)
        self.known: dict[int, list[tuple[int, int, bool]]] = {}  # row -> (band, entry, matches)
        if len(rows):
            ok = _agree(index, sigs, rows, ids)
            for row, band, entry, passes in zip(rows.tolist(), bands.tolist(), ids.tolist(), ok.tolist(), strict=True):
                self.known.setdefault(row, []).append((band, entry, passes))
        # band keys shared by rows of this batch: candidates once the earlier row becomes an entry
        ordered = flat[order]
        same = ordered[1:] == ordered[:-1]
        self.groups: dict[int, list[tuple[int, int]]] = {}  # row -> (band, group) of its shared keys
        self.members: dict[int, list[tuple[int, int]]] = {}  # group -> (entry, row) of new entries so far
        if same.any():
            shared = np.zeros(len(flat), dtype=bool)
            shared[1:] |= same
            shared[:-1] |= same
            group = np.cumsum(np.concatenate(([True], ~same)))  # equal keys share a group number
            positions = order[shared]
            for pos, g in zip(positions.tolist(), group[shared].tolist(), strict=True):
                self.groups.setdefault(pos // index.bands, []).append((pos % index.bands, g))

    def match(self, i: int) -> int | None:
        known, groups = self.known.get(i), self.groups.get(i)
        if known is None and groups is None:
            return None
        candidates = list(known or ())
        for band, g in groups or ():
            for entry, row in self.members.get(g, ()):
                equal = int(np.count_nonzero(self.sigs[row] == self.sigs[i]))
                candidates.append((band, entry, equal >= self.index.min_equal))
        passing = {entry for _, entry, ok in candidates if ok}
        if len(passing) <= 1:
            return passing.pop() if passing else None
        return next(e for e in datasketch_order(self.index.bands, [(b, e) for b, e, _ in candidates]) if e in passing)

    def added(self, i: int, entry: int) -> None:
        if entry != self.index.size + len(self.new_rows):
            raise ValueError(f"entries are numbered in order: expected {self.index.size + len(self.new_rows)}, got {entry}")
        self.new_rows.append(i)
        for _, g in self.groups.get(i, ()):
            self.members.setdefault(g, []).append((entry, i))

    def commit(self) -> None:
        """Index the batch's new entries (their keys taken from the batch's sorted keys: no second sort)."""
        rows = np.array(self.new_rows, dtype=np.int64)
        is_new = np.zeros(len(self.sigs), dtype=bool)
        is_new[rows] = True
        at = self.order[is_new[self.order // self.index.bands]]
        entry = np.cumsum(is_new, dtype=np.int64) - 1 + self.index.size  # a new row's entry id
        self.index._add_sorted(self.keys.ravel()[at], entry[at // self.index.bands].astype(np.int32), self.sigs[rows])


def _merge(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted runs (keys, ids) as one: b's items go after a's equal keys (a linear merge)."""
    at = np.searchsorted(a[0], b[0], side="right") + np.arange(len(b[0]))
    from_b = np.zeros(len(a[0]) + len(b[0]), dtype=bool)
    from_b[at] = True
    keys, ids = np.empty(len(from_b), dtype=a[0].dtype), np.empty(len(from_b), dtype=a[1].dtype)
    keys[at], ids[at] = b
    from_a = ~from_b
    keys[from_a], ids[from_a] = a
    return keys, ids
