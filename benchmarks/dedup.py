"""Dedup benchmark: our dedup step vs the plain datasketch loop and rensa, on a corpus with known duplicates.

The corpus has N documents of ~200 words drawn from a Zipf-like vocabulary; 10% of them are
injected duplicates of earlier documents: exact copies, word edits (3 words replaced), reorders
(two quarters swapped) and truncations (last 10% dropped). Reports docs/s of each, peak memory,
and precision/recall of the removed rows against the injected truth.

All three use threshold 0.8, num_perm 128 and word 3-grams, and confirm an LSH candidate by its
estimated Jaccard similarity:
- datasketch: the seed project's loop, `MinHash()` + `update()` per shingle, then `MinHashLSH.query`
  and `insert` per document. It is timed on the first `--baseline-rows` documents (it is slow).
- rensa (an optional dependency: `pip install -e '.[bench]'`; skipped with a note without it): the
  same shingles, `RMinHash.from_token_sets` per batch of 4,096 documents, then `RMinHashLSH.query`,
  the candidates' `jaccard` and `insert` per document, over the whole corpus. Rensa only takes a
  band count that divides num_perm (datasketch picks 9 bands of 13 rows at 0.8): `--rensa-bands`.
- ours: the `dedup` step's function on the whole corpus (reading and validating rows, exact and fuzzy
  dedup, writing dataset.jsonl, clusters.jsonl and the plot), `--workers` processes (0: one per core).

Each measurement runs in a fresh process (peak RSS is its own, and the largest of its workers');
`--repeat` runs each that many times and reports the median time. Imports are done before the clock.

Usage: python benchmarks/dedup.py [--rows 10000,100000] [--repeat 3] [--baseline-rows 5000] [--corpus-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import statistics
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


def ours(path: Path, out: Path, workers: int, weights: tuple[float, float]) -> dict:
    from halo_pipeline.engine import registry
    from halo_pipeline.engine.step import Artifact, RunContext

    kind = registry.get("dedup")
    ctx = RunContext("dedup", "dedup", out, out, 0, logging.getLogger("bench"))
    out.mkdir(parents=True, exist_ok=True)
    params = kind.params.model_validate(
        {"threshold": THRESHOLD, "num_perm": NUM_PERM, "ngram": NGRAM, "workers": workers, "lsh_weights": weights}
    )
    t0, cpu = time.perf_counter(), cpu_seconds()
    outputs = kind.fn(params, {"dataset": Artifact("sft_dataset", path)}, ctx)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu
    removed = [json.loads(line)["id"] for line in Path(outputs["clusters"]).read_text().splitlines()]
    return {"seconds": seconds, "cpu_seconds": cpu, "removed": removed, "rows": ctx.metrics["rows_in"], "metrics": ctx.metrics}


def plain(path: Path, rows: int) -> dict:
    """The seed project's loop."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    removed = []
    t0, cpu = time.perf_counter(), cpu_seconds()
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
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": cpu_seconds() - cpu, "removed": removed, "rows": min(rows, n + 1)}


def rensa_loop(path: Path, rows: int, bands: int) -> dict:
    """rensa's R-MinHash and LSH, the same shingles, candidates confirmed by their estimated Jaccard."""
    from rensa import RMinHash, RMinHashLSH

    lsh = RMinHashLSH(THRESHOLD, NUM_PERM, bands)
    indexed: list = []  # the RMinHash of each indexed document, by key
    removed: list[str] = []

    def flush(batch: list[tuple[str, list[str]]]) -> None:
        for (doc_id, _), m in zip(batch, RMinHash.from_token_sets([t for _, t in batch], NUM_PERM, 42), strict=True):
            if any(indexed[key].jaccard(m) >= THRESHOLD for key in lsh.query(m)):
                removed.append(doc_id)
            else:
                lsh.insert(len(indexed), m)
                indexed.append(m)

    n = 0
    t0, cpu = time.perf_counter(), cpu_seconds()
    batch: list[tuple[str, list[str]]] = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            row = json.loads(line)
            words = row["completion"].lower().split()
            batch.append((row["id"], [" ".join(g) for g in zip(words, words[1:], words[2:], strict=False)] or [" ".join(words)]))
            if len(batch) == 4096:
                flush(batch)
                batch = []
            if n >= rows:
                break
    flush(batch)
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": cpu_seconds() - cpu, "removed": removed, "rows": n}


def peak_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return own / 1024, kids / 1024


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (workers, the plot helper)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def child(mode: str, path: str, out: str, n: int, bands: int, weights: tuple[float, float]) -> None:
    if mode == "ours":
        result = ours(Path(path), Path(out), n, weights)
    elif mode == "rensa":
        result = rensa_loop(Path(path), n, bands)
    else:
        result = plain(Path(path), n)  # mode "datasketch"
    result["peak_mb"], result["workers_peak_mb"] = peak_mb()
    print(json.dumps(result))


def score(removed: list[str], truth: dict[str, str], rows: int) -> tuple[float, float]:
    injected = {k for k in truth if int(k[1:]) < rows}
    got = set(removed)
    tp = len(got & injected)
    return (tp / len(got) if got else 1.0), (tp / len(injected) if injected else 1.0)


def corpus_for(rows: int, corpus_dir: Path) -> tuple[Path, dict[str, str]]:
    corpus, truth_path = corpus_dir / f"corpus-{rows}.jsonl", corpus_dir / f"truth-{rows}.json"
    if corpus.exists() and truth_path.exists():
        return corpus, json.loads(truth_path.read_text())
    t0 = time.time()
    truth = make_corpus(corpus, rows)
    truth_path.write_text(json.dumps(truth))
    print(
        f"corpus: {rows:,} docs, {len(truth):,} injected duplicates, {corpus.stat().st_size / 1e6:,.0f} MB, built in {time.time() - t0:.0f} s",
        file=sys.stderr,
    )
    return corpus, truth


def run_once(mode: str, n: int, corpus: Path, args: argparse.Namespace, tmp: Path) -> dict:
    """One measurement in a fresh process."""
    cmd = [sys.executable, __file__, "--child", mode, str(corpus), str(tmp / mode), str(n), str(args.rensa_bands), args.lsh_weights]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"  {corpus.name} {mode}: {result['seconds']:.2f} s ({result['cpu_seconds']:.2f} s CPU), {result['peak_mb']:,.0f} MB",
        file=sys.stderr,
    )
    return result


def summarize(runs: list[dict], truth: dict[str, str]) -> dict:
    """The median time and the largest peak RSS of the runs of one measurement."""
    result = runs[0]
    prec, rec = score(result["removed"], truth, result["rows"])
    times = [r["seconds"] for r in runs]
    return {
        "rows": result["rows"],
        "seconds": statistics.median(times),
        "all_seconds": times,
        "docs_per_s": result["rows"] / statistics.median(times),
        "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
        "peak_mb": max(r["peak_mb"] for r in runs),
        "workers_peak_mb": max(r["workers_peak_mb"] for r in runs),
        "precision": prec,
        "recall": rec,
        "removed": len(result["removed"]),
        **({"metrics": result["metrics"]} if "metrics" in result else {}),
    }


def run_sizes(args: argparse.Namespace, has_rensa: bool, tmp: Path) -> list[dict]:
    corpus_dir = args.corpus_dir or tmp
    corpus_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in [int(r) for r in args.rows.split(",")]:
        corpus, truth = corpus_for(rows, corpus_dir)

        sizes = {"ours": args.workers, "rensa": rows if has_rensa else 0, "datasketch": 0 if args.skip_baseline else args.baseline_rows}
        runs: dict[str, list[dict]] = {mode: [] for mode, n in sizes.items() if n or mode == "ours"}
        for _ in range(args.repeat):  # interleaved: a change in the machine's load hits all of them
            for mode in runs:
                runs[mode].append(run_once(mode, sizes[mode], corpus, args, tmp))
        entry = {"rows": rows, "injected": len(truth), **{mode: summarize(r, truth) for mode, r in runs.items()}}
        results.append(entry)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="100000", help="corpus size(s), comma-separated: 10000,100000,1000000")
    parser.add_argument("--baseline-rows", type=int, default=5_000, help="documents the datasketch loop is timed on")
    parser.add_argument("--workers", type=int, default=0, help="our step's `workers` (0: one per core)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the median time is reported")
    parser.add_argument("--rensa-bands", type=int, default=16, help="rensa's LSH bands (a divisor of num_perm)")
    parser.add_argument(
        "--lsh-weights", default="0.5,0.5", help="our step's lsh_weights (0.05,0.95 gives rensa's 16 bands of 8 rows at 0.8 and 128)"
    )
    parser.add_argument("--skip-baseline", action="store_true", help="no datasketch loop (for very large corpora)")
    parser.add_argument("--corpus-dir", type=Path, help="keep and reuse the generated corpora here")
    parser.add_argument("--json", type=Path, default=Path("outputs/bench-dedup.json"))
    parser.add_argument("--child", nargs=6, metavar=("MODE", "PATH", "OUT", "N", "BANDS", "WEIGHTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, path, out, n, bands, weights = args.child
        fp, fn = (float(w) for w in weights.split(","))
        child(mode, path, out, int(n), int(bands), (fp, fn))
        return
    try:
        import rensa  # noqa: F401

        has_rensa = True
    except ImportError:
        has_rensa = False
        print("note: rensa is not installed (pip install -e '.[bench]'): the rensa column is skipped", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="halo-dedup-bench-") as scratch:  # the step's outputs (GBs at 1M rows)
        results = run_sizes(args, has_rensa, Path(scratch))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    config = {"repeat": args.repeat, "rensa_bands": args.rensa_bands, "lsh_weights": args.lsh_weights}
    args.json.write_text(json.dumps({**config, "results": results}, indent=2))
    print_table(results)


def print_table(results: list[dict]) -> None:
    def rate(e: dict, k: str) -> str:
        return f"{e[k]['docs_per_s']:,.0f} docs/s" if k in e else "—"

    def ratio(e: dict, k: str) -> str:
        return f"{e['ours']['docs_per_s'] / e[k]['docs_per_s']:.2f}x" if k in e else "—"

    def each(e: dict, field: str) -> str:
        if field == "peak_mb":
            cells = [f"{e[k]['peak_mb']:,.0f} MB" if k in e else "—" for k in ("datasketch", "rensa", "ours")]
        else:
            cells = [f"{e[k]['precision']:.3f} / {e[k]['recall']:.3f}" if k in e else "—" for k in ("datasketch", "rensa", "ours")]
        return " · ".join(cells)

    print(
        "| corpus | datasketch loop | rensa | ours | ours vs datasketch | ours vs rensa | peak RSS datasketch · rensa · ours | precision / recall datasketch · rensa · ours |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for e in results:
        cells = [f"{e['rows']:,}", rate(e, "datasketch"), rate(e, "rensa"), rate(e, "ours"), ratio(e, "datasketch"), ratio(e, "rensa")]
        print("| " + " | ".join([*cells, each(e, "peak_mb"), each(e, "pr")]) + " |")
    if not any("rensa" in e for e in results):
        print("\nrensa is not installed (pip install -e '.[bench]'): its column is skipped.")
    print("\nCPU time (user + sys, worker processes included), per 10,000 documents:\n")
    print("| corpus | datasketch loop | rensa | ours | ours vs rensa by CPU time |\n|---|---|---|---|---|")
    for e in results:
        cpu = {k: e[k]["cpu_seconds"] / e[k]["rows"] * 10_000 for k in ("datasketch", "rensa", "ours") if k in e}
        cells = [f"{cpu[k]:.2f} s" if k in cpu else "—" for k in ("datasketch", "rensa", "ours")]
        vs = f"{cpu['rensa'] / cpu['ours']:.2f}x" if "rensa" in cpu else "—"
        print(f"| {e['rows']:,} | " + " | ".join([*cells, vs]) + " |")


if __name__ == "__main__":
    main()
