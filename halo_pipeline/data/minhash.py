"""Vectorized MinHash signatures that match datasketch's `MinHash` (scheme affine32) bit for bit.

datasketch hashes each shingle with a Python call and permutes one document at a time. Here the
shingles of many documents are hashed together with numpy, datasketch's own permutations
(`MinHash(num_perm, seed).permutations`) and its own finalizer are applied to the whole batch one
permutation at a time, and `np.minimum.reduceat` takes each document's minimum: the same signature as
`MinHash(num_perm, seed, hashfunc=shingle_hash).update_batch(shingles)`, at a fraction of the cost.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from dataclasses import dataclass

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


_P = np.uint32(0x01000193)  # odd: invertible mod 2**32
_Q = np.uint32(pow(0x01000193, -1, 1 << 32))
_WHITESPACE = np.frombuffer(b" \t\n\r\x0b\x0c", dtype=np.uint8)
_powers: dict[str, np.ndarray] = {"P": np.ones(1, dtype=np.uint32), "Q": np.ones(1, dtype=np.uint32)}


def _power_table(base: str, n: int) -> np.ndarray:
    table = _powers[base]
    if len(table) < n:
        size = max(n, 2 * len(table))
        mult = np.full(size, _P if base == "P" else _Q, dtype=np.uint32)
        mult[0] = 1
        with np.errstate(over="ignore"):
            table = np.cumprod(mult, dtype=np.uint32)
        _powers[base] = table
    return table[:n]


def _word_hashes(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """32-bit polynomial hashes of the whitespace-separated words of a byte array, and each word's start.

    hash(b[s:e]) = sum b_k * P**(e-1-k) mod 2**32, computed for all words at once from prefix sums
    weighted by powers of P's inverse (wrap-around uint32 arithmetic).
    """
    is_space = np.isin(data, _WHITESPACE)
    n = len(data)
    edges = np.diff(np.concatenate(([0], (~is_space).astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if len(starts) == 0:
        return np.zeros(0, dtype=np.uint32), starts
    with np.errstate(over="ignore"):
        weighted = (data.astype(np.uint32) + np.uint32(1)) * _power_table("Q", n)
        prefix = np.concatenate(([0], np.cumsum(weighted, dtype=np.uint32))).astype(np.uint32)
        hashes = (prefix[ends] - prefix[starts]) * _power_table("P", n)[ends - 1]
    return hashes.astype(np.uint32), starts


def _ngrams(tokens: np.ndarray, k: int) -> np.ndarray:
    n = len(tokens)
    with np.errstate(over="ignore"):
        h = np.zeros(n - k + 1, dtype=np.uint32)
        for j in range(k):
            h = h * np.uint32(31) + tokens[j : n - k + 1 + j] * _NGRAM_MULT[j % len(_NGRAM_MULT)]
    return h


def batch_shingle_hashes(texts: list[str], ngram: int, unit: str = "word") -> list[np.ndarray]:
    """Shingle hashes of many documents, hashed together with numpy; see `shingle_hashes`."""
    if unit == "char":
        return [shingle_hashes(t, ngram, unit) for t in texts]
    encoded = [t.encode("utf-8") for t in texts]
    data = np.frombuffer(b" ".join(encoded), dtype=np.uint8)
    words, starts = _word_hashes(data)
    doc_starts = np.cumsum([0] + [len(e) + 1 for e in encoded[:-1]])
    bounds = np.searchsorted(starts, doc_starts).tolist() + [len(words)]
    out = []
    for i in range(len(texts)):
        tokens = words[bounds[i] : bounds[i + 1]]
        if len(tokens) == 0:
            out.append(np.array([zlib.crc32(b"")], dtype=np.uint32))
        else:
            out.append(_ngrams(tokens, min(ngram, len(tokens))))
    return out


def shingle_hashes(text: str, ngram: int, unit: str = "word") -> np.ndarray:
    """32-bit hashes of a document's word (or character) n-grams; a short document is one shingle."""
    if unit == "word":
        return batch_shingle_hashes([text], ngram, unit)[0]
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint32)
    if len(data) == 0:
        return np.array([zlib.crc32(b"")], dtype=np.uint32)
    with np.errstate(over="ignore"):
        tokens = data * _P + np.uint32(0x811C9DC5)
    return _ngrams(tokens, min(ngram, len(tokens)))


class Signer:
    """Computes datasketch-compatible MinHash signatures for batches of documents."""

    def __init__(self, num_perm: int = 128, seed: int = 1, ngram: int = 3, unit: str = "word"):
        from datasketch import MinHash
        from datasketch.minhash import _fmix

        proto = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME)
        self.a, self.b = (np.asarray(p, dtype=np.uint32) for p in proto.permutations)
        self._fmix = _fmix
        self.num_perm, self.seed, self.ngram, self.unit = num_perm, seed, ngram, unit

    def sign(self, texts: list[str]) -> np.ndarray:
        """Signatures, shape (len(texts), num_perm), uint32."""
        hashes = batch_shingle_hashes(texts, self.ngram, self.unit)
        flat = np.concatenate(hashes)
        offsets = np.cumsum([0] + [len(h) for h in hashes[:-1]])
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        with np.errstate(over="ignore"):
            hv = self._fmix(flat, 32)
            column = np.empty_like(hv)
            # One permutation at a time over a 1-D array stays in cache: ~10x faster than a 2-D batch.
            for j in range(self.num_perm):
                np.multiply(hv, self.a[j], out=column)
                column += self.b[j]
                out[:, j] = np.minimum.reduceat(column, offsets)
        return out

    def lean(self, signature: np.ndarray) -> object:
        from datasketch import LeanMinHash

        return LeanMinHash(seed=self.seed, hashvalues=signature, scheme=SCHEME)
