"""Vectorized MinHash signatures that match datasketch's `MinHash` (scheme affine32) bit for bit.

datasketch hashes each shingle with a Python call and permutes one document at a time. Here the
shingles of many documents are hashed together with numpy, datasketch's permutations (the same
`RandomState(seed)` draws as `MinHash(num_perm, seed).permutations`) and its finalizer are applied to
the whole batch one permutation at a time, and `np.minimum.reduceat` takes each document's minimum:
the same signature as `MinHash(num_perm, seed, hashfunc=shingle_hash).update_batch(shingles)`, at a
fraction of the cost. datasketch itself is not imported (it pulls in scipy: 0.6 s of CPU); tests
check the permutations and signatures against it.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from dataclasses import dataclass, replace

import numpy as np

SCHEME = "affine32"
_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
# Multipliers that mix the word hashes of an n-gram into one 32-bit shingle hash (odd, fixed).
_NGRAM_MULT = np.array(
    [0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1, 0xD3A2646C | 1, 0xFD7046C5, 0xB55A4F09], dtype=np.uint32
)


@dataclass(frozen=True)
class Normalizer:
    lowercase: bool = True
    collapse_whitespace: bool = True
    strip_punctuation: bool = False
    unicode_form: str | None = "NFKC"

    def __call__(self, text: str) -> str:
        if self.unicode_form:
            text = unicodedata.normalize(self.unicode_form, text)  # type: ignore[arg-type]
        if self.lowercase:
            text = text.lower()
        if self.strip_punctuation:
            text = _PUNCT.sub(" ", text)
        if self.collapse_whitespace:
            text = " ".join(text.split())
        return text

    def batch(self, texts: list[str]) -> list[bytes]:
        """`[self(t).encode("utf-8") for t in texts]`, faster: whitespace is collapsed only in the texts that
        need it (`" ".join(t.split())` costs ~10 µs for a 2 KB text), found with numpy for ASCII texts."""
        if not self.collapse_whitespace:
            return [self(t).encode("utf-8") for t in texts]
        partial = replace(self, collapse_whitespace=False)
        out: list[bytes] = []
        ascii_at: list[int] = []
        for text in texts:
            text = partial(text).strip()
            if text.isascii():
                ascii_at.append(len(out))
                out.append(text.encode("ascii"))
            else:
                out.append(" ".join(text.split()).encode("utf-8"))
        for start in range(0, len(ascii_at), 256):
            at = ascii_at[start : start + 256]
            for i in _uncollapsed([out[i] for i in at]):
                out[at[i]] = " ".join(out[at[i]].decode("ascii").split()).encode("ascii")
        return out


def _uncollapsed(docs: list[bytes]) -> list[int]:
    """Which of these stripped ASCII documents hold whitespace other than single spaces (str.split's ASCII
    whitespace: 9-13, 28-31 and 32)."""
    data = np.frombuffer(b"".join(docs), dtype=np.uint8)
    space = (data == 32) | (np.subtract(data, 9, dtype=np.uint8) <= 4) | (np.subtract(data, 28, dtype=np.uint8) <= 3)
    odd = space & (data != 32)
    odd[1:] |= space[1:] & space[:-1]  # a run (documents never start with whitespace: no run spans two)
    at = np.flatnonzero(odd)
    if len(at) == 0:
        return []
    return np.unique(np.searchsorted(np.cumsum([len(d) for d in docs]), at, side="right")).tolist()


_P = np.uint32(0x01000193)  # odd: invertible mod 2**32
_Q = np.uint32(pow(0x01000193, -1, 1 << 32))
_EMPTY = np.uint32(zlib.crc32(b""))  # the one shingle of an empty document
_GROUP_BYTES = 1 << 18  # bytes of text hashed at once
_powers: dict[str, np.ndarray] = {"P": np.ones(1, dtype=np.uint32), "Q": np.ones(1, dtype=np.uint32)}
# datasketch's MurmurHash3 finalizer, 32-bit (`datasketch.minhash._fmix(hv, 32)`).
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))


def _power_table(base: str, n: int) -> np.ndarray:
    """base**0 .. base**(n-1) mod 2**32, cached: blocks of 4096 powers times powers of base**4096
    (vectorized; a plain cumprod over millions of values is sequential)."""
    table = _powers[base]
    if len(table) < n:
        blocks = -(-max(n, 2 * len(table)) // 4096)
        mult = np.full(4096, _P if base == "P" else _Q, dtype=np.uint32)
        mult[0] = 1
        with np.errstate(over="ignore"):
            small = np.cumprod(mult, dtype=np.uint32)
            mult = np.full(blocks, small[-1] * mult[1], dtype=np.uint32)
            mult[0] = 1
            table = np.multiply.outer(np.cumprod(mult, dtype=np.uint32), small).ravel()
        _powers[base] = table
    return table[:n]


def _word_hashes(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """32-bit polynomial hashes of the whitespace-separated words of a byte array, and each word's start.

    hash(b[s:e]) = sum (b_k + 1) * P**(e-1-k) mod 2**32, computed for all words at once from prefix
    sums weighted by powers of P's inverse (wrap-around uint32 arithmetic).
    """
    n = len(data)
    # word bytes: all but b" \t\n\x0b\x0c\r" (9..13 and 32); two comparisons beat np.isin or a lookup 5x
    is_word = np.zeros(n + 2, dtype=bool)
    is_word[1:-1] = (data != 32) & (np.subtract(data, 9, dtype=np.uint8) > 4)
    edges = np.flatnonzero(is_word[1:] != is_word[:-1])  # bool: numpy's fast nonzero
    starts, ends = edges[0::2], edges[1::2]  # a word starts, ends, the next starts, ...
    if len(starts) == 0:
        return np.zeros(0, dtype=np.uint32), starts
    prefix = np.empty(n + 1, dtype=np.uint32)
    prefix[0] = 0
    with np.errstate(over="ignore"):
        np.add(data, 1, out=prefix[1:], dtype=np.uint32)
        np.multiply(prefix[1:], _power_table("Q", n), out=prefix[1:])
        np.cumsum(prefix[1:], out=prefix[1:])
        hashes = (prefix[ends] - prefix[starts]) * _power_table("P", n)[ends - 1]
    return hashes, starts


def _ngrams(tokens: np.ndarray, k: int) -> np.ndarray:
    n = len(tokens)
    with np.errstate(over="ignore"):
        h = np.zeros(n - k + 1, dtype=np.uint32)
        for j in range(k):
            h = h * np.uint32(31) + tokens[j : n - k + 1 + j] * _NGRAM_MULT[j % len(_NGRAM_MULT)]
    return h


def flat_shingle_hashes(texts: list[str] | list[bytes], ngram: int, unit: str = "word") -> tuple[np.ndarray, np.ndarray]:
    """The shingle hashes of many documents (str, or their UTF-8) in one array, and where each document's start.

    Word n-grams are hashed for a group of documents at once: the n-gram hash runs over the words of
    the whole group, and the n-grams that straddle two documents are dropped. A document with fewer
    words than `ngram` is one shingle of all its words; an empty one is the hash of no bytes.
    """
    parts: list[tuple[np.ndarray, np.ndarray]] = []  # (hashes, shingles per document)
    if unit == "char" and texts:
        hashes = [shingle_hashes(t, ngram, unit) for t in texts]
        parts.append((np.concatenate(hashes), np.array([len(h) for h in hashes])))
    elif texts:
        group: list[bytes] = []
        size = 0
        for text in texts:  # groups of ~_GROUP_BYTES: their temporaries stay in cache and are reused
            group.append(text if isinstance(text, bytes) else text.encode("utf-8"))
            size += len(group[-1]) + 1
            if size >= _GROUP_BYTES:
                parts.append(_word_shingles(group, ngram))
                group, size = [], 0
        if group:
            parts.append(_word_shingles(group, ngram))
    if not parts:
        return np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=np.int64)
    counts = np.concatenate([c for _, c in parts]).astype(np.int64)
    flat = np.concatenate([h for h, _ in parts]) if len(parts) > 1 else parts[0][0]
    return flat, np.cumsum(counts) - counts


def _word_shingles(encoded: list[bytes], k: int) -> tuple[np.ndarray, np.ndarray]:
    data = np.frombuffer(b" ".join(encoded), dtype=np.uint8)
    words, starts = _word_hashes(data)
    doc_starts = np.cumsum([0] + [len(e) + 1 for e in encoded[:-1]])
    bounds = np.append(np.searchsorted(starts, doc_starts), len(words))
    n_words = np.diff(bounds)
    counts = np.where(n_words >= k, n_words - k + 1, 1)  # shingles per document
    offsets = np.cumsum(counts) - counts
    total = int(counts.sum())
    if len(words) >= k:
        grams = _ngrams(words, k)  # every window of k words, straddling or not
        # document i's shingles are windows bounds[i] .. bounds[i] + counts[i] - 1
        take = np.arange(total) + np.repeat(bounds[:-1] - offsets, counts)
        flat = grams[np.minimum(take, len(grams) - 1)]
    else:
        flat = np.empty(total, dtype=np.uint32)
    for i in np.flatnonzero(n_words < k).tolist():  # short documents: one shingle of all their words
        flat[offsets[i]] = _ngrams(words[bounds[i] : bounds[i + 1]], n_words[i])[0] if n_words[i] else _EMPTY
    return flat, counts


def batch_shingle_hashes(texts: list[str] | list[bytes], ngram: int, unit: str = "word") -> list[np.ndarray]:
    """Shingle hashes of many documents, hashed together with numpy; see `shingle_hashes`."""
    flat, offsets = flat_shingle_hashes(texts, ngram, unit)
    return np.split(flat, offsets[1:])


def shingle_hashes(text: str | bytes, ngram: int, unit: str = "word") -> np.ndarray:
    """32-bit hashes of a document's word (or character) n-grams; a short document is one shingle."""
    if unit == "word":
        one: list[str] | list[bytes] = [text] if isinstance(text, str) else [text]
        return batch_shingle_hashes(one, ngram, unit)[0]
    data = np.frombuffer(text if isinstance(text, bytes) else text.encode("utf-8"), dtype=np.uint8).astype(np.uint32)
    if len(data) == 0:
        return np.array([_EMPTY], dtype=np.uint32)
    with np.errstate(over="ignore"):
        tokens = data * _P + np.uint32(0x811C9DC5)
    return _ngrams(tokens, min(ngram, len(tokens)))


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutations (a, b): `MinHash(num_perm, seed=seed).permutations`."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def fmix32(hv: np.ndarray) -> np.ndarray:
    """datasketch's pre-mix of every input hash (MurmurHash3's finalizer)."""
    s1, m1, s2, m2, s3 = _FMIX32
    with np.errstate(over="ignore"):
        hv = hv ^ (hv >> s1)
        hv = hv * m1
        hv = hv ^ (hv >> s2)
        hv = hv * m2
        return hv ^ (hv >> s3)


class Signer:
    """Computes datasketch-compatible MinHash signatures for batches of documents."""

    def __init__(self, num_perm: int = 128, seed: int = 1, ngram: int = 3, unit: str = "word"):
        self.a, self.b = permutations(num_perm, seed)
        self.num_perm, self.seed, self.ngram, self.unit = num_perm, seed, ngram, unit

    def sign(self, texts: list[str] | list[bytes]) -> np.ndarray:
        """Signatures of documents (str, or their UTF-8), shape (len(texts), num_perm), uint32."""
        if not texts:
            return np.empty((0, self.num_perm), dtype=np.uint32)
        flat, offsets = flat_shingle_hashes(texts, self.ngram, self.unit)
        hv = fmix32(flat)
        column = np.empty_like(hv)
        out = np.empty((self.num_perm, len(texts)), dtype=np.uint32)
        with np.errstate(over="ignore"):
            # One permutation at a time over a 1-D array stays in cache: ~10x faster than a 2-D batch.
            for j in range(self.num_perm):
                np.multiply(hv, self.a[j], out=column)
                column += self.b[j]
                np.minimum.reduceat(column, offsets, out=out[j])
        return np.ascontiguousarray(out.T)
