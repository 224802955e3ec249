"""Dedup benchmark: our dedup step vs the plain datasketch loop, on a corpus with known duplicates.

The corpus has N documents of ~200 words drawn from a Zipf-like vocabulary; 10% of them are
injected duplicates of earlier documents: exact copies, word edits (3 words replaced), reorders
(two quarters swapped) and truncations (last 10% dropped). Reports docs/s of both, peak memory,
and precision/recall of the removed rows against the injected truth.

The plain loop is the seed project's implementation: `MinHash()` + `update()` per token, then
`MinHashLSH.query` and `insert` per document. It is timed on the first `--baseline-rows` documents.

Usage: python benchmarks/dedup.py [--rows 100000] [--baseline-rows 5000]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THRESHOLD, NUM_PERM, NGRAM = 0.8, 128, 3


def make_corpus(path: Path, rows: int, seed: int = 0) -> dict[str, str]:
    import numpy as np

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    vocab = np.array([f"{w}{i}" for i, w in enumerate(["alpha", "beta", "gamma", "delta", "omega"] * 4000)])
    weights = 1 / (np.arange(len(vocab)) + 1) ** 0.8
    weights /= weights.sum()
    truth: dict[str, str] = {}
    docs: list[str] = []
    originals: list[int] = []  # row index of each original document
    chunk = 5000
    with open(path, "w") as f:
        fresh: list[str] = []
        for i in range(rows):
            if docs and rng.random() < 0.10:
                j = rng.randrange(len(docs))
                words = docs[j].split()
                kind = rng.choice(["exact", "edit", "reorder", "truncate"])
                if kind == "edit":
                    for _ in range(3):
                        words[rng.randrange(len(words))] = str(vocab[rng.randrange(len(vocab))])
                elif kind == "reorder":
                    q = len(words) // 4
                    words = words[q : 2 * q] + words[:q] + words[2 * q :]
                elif kind == "truncate":
                    words = words[: int(len(words) * 0.9)]
                text = " ".join(words)
                truth[f"d{i}"] = f"d{originals[j]}"
            else:
                if not fresh:
                    ids = nrng.choice(len(vocab), size=(chunk, 200), p=weights)
                    fresh = [" ".join(vocab[row]) for row in ids][::-1]
                text = fresh.pop()
                if len(docs) < 200_000:  # duplicates are drawn from the first 200k originals (bounded memory)
                    docs.append(text)
                    originals.append(i)
            f.write(json.dumps({"id": f"d{i}", "prompt": "", "completion": text}) + "\n")
    return truth


def ours(path: Path, out: Path, workers: int) -> dict:
    from halo_pipeline.engine import registry
    from halo_pipeline.engine.step import Artifact, RunContext

    kind = registry.get("dedup")
    ctx = RunContext("dedup", "dedup", out, out, 0, logging.getLogger("bench"))
    out.mkdir(parents=True, exist_ok=True)
    params = kind.params.model_validate({"threshold": THRESHOLD, "num_perm": NUM_PERM, "ngram": NGRAM, "workers": workers})
    t0 = time.time()
    outputs = kind.fn(params, {"dataset": Artifact("sft_dataset", path)}, ctx)
    seconds = time.time() - t0
    removed = {json.loads(line)["id"] for line in Path(outputs["clusters"]).read_text().splitlines()}
    return {"seconds": seconds, "removed": sorted(removed), "metrics": ctx.metrics}


def plain(path: Path, rows: int) -> dict:
    """The seed project's loop."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    removed = []
    t0 = time.time()
    with open(path) as f:
        for n, line in enumerate(f):
            if n >= rows:
                break
            row = json.loads(line)
            words = row["completion"].lower().split()
            m = MinHash(num_perm=NUM_PERM)
            for i in range(max(1, len(words) - NGRAM + 1)):
                m.update(" ".join(words[i : i + NGRAM]).encode())
            if lsh.query(m):
                removed.append(row["id"])
            else:
                lsh.insert(row["id"], m)
    return {"seconds": time.time() - t0, "removed": removed, "rows": min(rows, n + 1)}


def peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def child(mode: str, path: str, out: str, n: int) -> None:
    result = ours(Path(path), Path(out), n) if mode == "ours" else plain(Path(path), n)
    result["peak_mb"] = peak_mb()
    print(json.dumps(result))


def score(removed: list[str], truth: dict[str, str], limit_ids: set[str] | None = None) -> tuple[float, float]:
    injected = {k for k in truth if limit_ids is None or k in limit_ids}
    got = set(removed)
    tp = len(got & injected)
    return (tp / len(got) if got else 1.0), (tp / len(injected) if injected else 1.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--baseline-rows", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-baseline", action="store_true", help="only our dedup (for very large corpora)")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "PATH", "OUT", "N"))
    args = parser.parse_args()
    if args.child:
        mode, path, out, n = args.child
        child(mode, path, out, int(n))
        return
    tmp = Path(tempfile.mkdtemp(prefix="halo-dedup-bench-"))
    corpus = tmp / "corpus.jsonl"
    t0 = time.time()
    truth = make_corpus(corpus, args.rows)
    print(
        f"corpus: {args.rows} docs, {len(truth)} injected duplicates, {corpus.stat().st_size / 1e6:.0f} MB, built in {time.time() - t0:.0f} s",
        file=sys.stderr,
    )

    def run_child(mode: str, n: int) -> dict:
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, str(corpus), str(tmp / mode), str(n)], capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    o = run_child("ours", args.workers)
    if args.skip_baseline:
        prec, rec = score(o["removed"], truth)
        print(
            f"| rows | throughput | peak memory | precision / recall |\n|---|---|---|---|\n| {args.rows:,} | {args.rows / o['seconds']:,.0f} docs/s | {o['peak_mb']:,.0f} MB | {prec:.3f} / {rec:.3f} |"
        )
        return
    p = run_child("plain", args.baseline_rows)
    o_rate, p_rate = args.rows / o["seconds"], p["rows"] / p["seconds"]
    o_prec, o_rec = score(o["removed"], truth)
    first = {f"d{i}" for i in range(p["rows"])}
    p_prec, p_rec = score(p["removed"], truth, first)
    result = {
        "rows": args.rows,
        "injected": len(truth),
        "ours": {**o, "removed": len(o["removed"])},
        "plain": {**p, "removed": len(p["removed"])},
    }
    Path("outputs").mkdir(exist_ok=True)
    Path("outputs/bench-dedup.json").write_text(json.dumps(result, indent=2))
    print("| | ours (dedup step) | plain datasketch loop |\n|---|---|---|")
    print(f"| documents | {args.rows:,} | {p['rows']:,} (first of the same corpus) |")
    print(f"| throughput | {o_rate:,.0f} docs/s | {p_rate:,.0f} docs/s |")
    print(f"| speed-up | {o_rate / p_rate:.1f}x | 1.0x |")
    print(f"| peak memory | {o['peak_mb']:,.0f} MB | {p['peak_mb']:,.0f} MB |")
    print(f"| precision / recall vs injected duplicates | {o_prec:.3f} / {o_rec:.3f} | {p_prec:.3f} / {p_rec:.3f} |")
    print(f"| exact / fuzzy removed | {o['metrics']['exact_removed']:,} / {o['metrics']['fuzzy_removed']:,} | — |")


if __name__ == "__main__":
    main()
