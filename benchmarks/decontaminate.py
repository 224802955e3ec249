"""Decontamination benchmark: the check before a train step, on N training rows against M held-out items.

The corpus: training rows `{id, prompt, completion}` of ~40 + ~120 words and held-out items `{id, prompt, answer}` of
~60 + ~15 words, drawn from a Zipf-like vocabulary of 20,000 words; 1% of the training rows are contaminated on
purpose, a third each way: a held-out prompt copied (case and punctuation changed), a 20-word span of a held-out
prompt inside the completion, a held-out answer span inside the prompt. Reports rows/s and the recall of the
planted rows (and any other row found: a false positive of the corpus, 0 expected).

- ours: `decontaminate.screen` as the train step runs it — read and validate the JSONL rows, load the held-out file,
  build the index, check, write the verdict into a fresh cache (the `drop` copy too), `n = 13`. Also the
  `Index.check` part alone.
- baseline: the direct way (lm-eval's `Janitor` and most scripts): every held-out 13-gram as a tuple in a Python
  set, and every training 13-gram looked up, per row; same normalisation.

Each side runs in a fresh process; `--repeat` runs each that many times, interleaved, and reports medians.

Usage: python benchmarks/decontaminate.py [--rows 100000] [--held-out 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N = 13


def make_corpus(folder: Path, rows: int, held: int, seed: int = 0) -> None:
    import numpy as np

    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(20_000)])
    weights = 1 / (np.arange(len(vocab)) + 1) ** 0.9
    weights /= weights.sum()

    pool = nrng.choice(vocab, size=(rows * 170 + held * 90), p=weights).tolist()  # drawn at once: one call per text is slow
    taken = 0

    def text(n: int) -> list[str]:
        nonlocal taken
        taken += n
        return pool[taken - n : taken]

    items = [{"id": f"h{i}", "prompt": " ".join(text(rng.randint(40, 80))), "answer": " ".join(text(15))} for i in range(held)]
    with open(folder / "held_out.jsonl", "w") as f:
        f.writelines(json.dumps(item) + "\n" for item in items)
    planted = []
    with open(folder / "train.jsonl", "w") as f:
        for r in range(rows):
            row = {"id": f"r{r}", "prompt": " ".join(text(rng.randint(20, 60))), "completion": " ".join(text(rng.randint(80, 160)))}
            if rng.random() < 0.01:
                item = rng.choice(items)
                way = rng.randrange(3)
                if way == 0:
                    row["prompt"] = item["prompt"].upper().replace(" ", ",  ")
                elif way == 1:
                    words = item["prompt"].split()
                    start = rng.randrange(len(words) - 20)
                    row["completion"] += " " + " ".join(words[start : start + 20])
                else:
                    row["prompt"] = "Consider: " + item["answer"] + ". " + row["prompt"]
                planted.append(r)
            f.write(json.dumps(row) + "\n")
    (folder / "planted.json").write_text(json.dumps(planted))


def ours(folder: Path) -> dict[str, float]:
    from halo_pipeline.data import decontaminate as dc

    sets = [{"label": "held_out.jsonl", "ref": str(folder / "held_out.jsonl")}]
    src = [dc.Source("dataset", "train.jsonl", folder / "train.jsonl", "sft_dataset", None)]
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        screened = dc.screen(src, sets, "drop", N, Path(cache))
        seconds = time.perf_counter() - started
    assert screened is not None
    peak = _peak_mb()  # the screen's own, before the rows below are loaded
    # the check alone, on rows already in memory
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    items = [dc.item_from_row("h", json.loads(line), i) for i, line in enumerate((folder / "held_out.jsonl").read_text().splitlines())]
    started = time.perf_counter()
    index = dc.Index(items, N)
    built = time.perf_counter() - started
    found = index.check([dc.row_texts(r) for r in rows])
    check = time.perf_counter() - started - built
    return {
        "seconds": seconds,
        "index_s": built,
        "check_s": check,
        "found": screened.record["sources"][0]["overlapping"],
        "peak_mb": peak,
        "found_rows": [rows[o.row]["id"] for o in found],
    }  # type: ignore[dict-item]


def baseline(folder: Path) -> dict[str, float]:
    from halo_pipeline.data.decontaminate import normalise

    started = time.perf_counter()
    grams: set[tuple[str, ...]] = set()
    with open(folder / "held_out.jsonl") as f:
        for line in f:
            item = json.loads(line)
            for field in ("prompt", "answer"):
                ws = normalise(item[field]).split()
                grams.update(tuple(ws[i : i + N]) for i in range(len(ws) - N + 1))
    built = time.perf_counter() - started
    found = []
    with open(folder / "train.jsonl") as f:
        for line in f:
            row = json.loads(line)
            for field in ("prompt", "completion"):
                ws = normalise(row[field]).split()
                if any(tuple(ws[i : i + N]) in grams for i in range(len(ws) - N + 1)):
                    found.append(row["id"])
                    break
    return {"seconds": time.perf_counter() - started, "index_s": built, "found": len(found), "found_rows": found}  # type: ignore[dict-item]


def _peak_mb() -> float:
    """This process's own peak RSS (VmHWM): ru_maxrss carries the parent's peak over exec, and the parent made the corpus."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(side: str, folder: str) -> None:
    result = (ours if side == "ours" else baseline)(Path(folder))
    result.setdefault("peak_mb", _peak_mb())
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--held-out", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        make_corpus(folder, args.rows, args.held_out)
        planted = set(f"r{r}" for r in json.loads((folder / "planted.json").read_text()))
        words = sum(len(line.split()) for line in (folder / "train.jsonl").read_text().splitlines())
        print(f"corpus: {args.rows:,} training rows ({words / args.rows:.0f} words each), {args.held_out:,} held-out items, "
              f"{len(planted)} planted ({time.perf_counter() - started:.1f} s to make)")  # fmt: skip
        sides = ["ours"] + ([] if args.no_baseline else ["baseline"])
        runs: dict[str, list[dict]] = {s: [] for s in sides}
        for _ in range(args.repeat):
            for side in sides:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", side, str(folder)], capture_output=True, text=True, check=True
                ).stdout
                runs[side].append(json.loads(out.strip().splitlines()[-1]))
        for side in sides:
            seconds = statistics.median(r["seconds"] for r in runs[side])
            found = set(runs[side][0]["found_rows"])
            line = (
                f"{side:8s} {seconds:7.2f} s  {args.rows / seconds:9,.0f} rows/s  peak {max(r['peak_mb'] for r in runs[side]):6.0f} MB  "
                f"found {len(found)}: recall {len(found & planted) / max(len(planted), 1):.3f}, other rows {len(found - planted)}"
            )
            if side == "ours":
                line += (
                    f"  (index {statistics.median(r['index_s'] for r in runs[side]):.2f} s, "
                    f"check in memory {statistics.median(r['check_s'] for r in runs[side]):.2f} s)"
                )
            print(line)
        if not args.no_baseline:
            ratio = statistics.median(r["seconds"] for r in runs["baseline"]) / statistics.median(r["seconds"] for r in runs["ours"])
            print(f"ours is {ratio:.2f}x the baseline")


if __name__ == "__main__":
    main()
