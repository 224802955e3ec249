"""Vectorized MinHash signatures that match datasketch's `MinHash` (scheme affine32) bit for bit.

datasketch hashes each shingle with a Python call and permutes one document at a time. Here the
shingles of many documents are hashed together with numpy, datasketch's own permutations
(`MinHash(num_perm, seed).permutations`) and its own finalizer are applied to the whole batch, and
`np.minimum.reduceat` takes each document's minimum: the same signature as
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
_SPACE = re.compile(r"\s+")
# Multipliers that mix the word hashes of an n-gram into one 32-bit shingle hash (odd, fixed).
_NGRAM_MULT = np.array([0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1, 0xD3A2646C | 1, 0xFD7046C5, 0xB55A4F09], dtype=np.uint32)
MAX_CELLS = 4_000_000  # shingles x permutations per numpy batch (~16 MB of uint32)


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
            text = _SPACE.sub(" ", text).strip()
        return text


def shingle_hashes(text: str, ngram: int, unit: str = "word") -> np.ndarray:
    """32-bit hashes of a document's word (or character) n-grams; a short document is one shingle."""
    if unit == "char":
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint32)
        tokens = data * np.uint32(0x01000193) + np.uint32(0x811C9DC5)
    else:
        tokens = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in text.split()), dtype=np.uint32)
    n = len(tokens)
    if n == 0:
        return np.array([zlib.crc32(b"")], dtype=np.uint32)
    k = min(ngram, n)
    with np.errstate(over="ignore"):
        h = np.zeros(n - k + 1, dtype=np.uint32)
        for j in range(k):
            h = h * np.uint32(31) + tokens[j : n - k + 1 + j] * _NGRAM_MULT[j % len(_NGRAM_MULT)]
    return h


def shingle_hash_bytes(shingle_hash: int) -> int:
    """The `hashfunc` to give datasketch so that it sees the same shingle hashes (for checks)."""
    return int(shingle_hash)


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
        hashes = [shingle_hashes(t, self.ngram, self.unit) for t in texts]
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        per_batch = max(1, MAX_CELLS // self.num_perm)
        i = 0
        while i < len(hashes):
            j, total = i, 0
            while j < len(hashes) and (total == 0 or total + len(hashes[j]) <= per_batch):
                total += len(hashes[j])
                j += 1
            flat = np.concatenate(hashes[i:j])
            offsets = np.cumsum([0] + [len(h) for h in hashes[i : j - 1]])
            with np.errstate(over="ignore"):
                hv = self._fmix(flat.reshape(-1, 1), 32)
                phv = hv * self.a + self.b
            out[i:j] = np.minimum.reduceat(phv, offsets, axis=0)
            i = j
        return out

    def lean(self, signature: np.ndarray) -> object:
        from datasketch import LeanMinHash

        return LeanMinHash(seed=self.seed, hashvalues=signature, scheme=SCHEME)
