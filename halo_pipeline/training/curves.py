"""The training curves (`curves.png`), drawn by a process of their own that the train step starts as it begins: it
imports matplotlib and draws a first figure (most of what the curves cost: ~0.7 s) on another core while the model
loads and trains, then draws the step's curves when the step asks. A thread would not do: an import or a drawing
holds the interpreter's lock, which a torch training loop takes back after every kernel (an import of matplotlib on
a side thread slowed a torch loop by about what the import costs).

Usage (the process): python -m halo_pipeline.training.curves   (one request, a JSON object on stdin)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from halo_pipeline.training import metrics


class Plotter:
    """Started with the step; `draw` once, at its end; `close` in any case (a step that failed before it drew)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", __name__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            self._proc = None

    def draw(self, rows: list[dict[str, Any]], path: Path, title: str) -> bool:
        """`metrics.plot` by the process (by this one when the process is gone): False when nothing was logged."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.stdin is not None and proc.stdout is not None:
            try:
                proc.stdin.write(json.dumps({"rows": rows, "path": str(path), "title": title}))
                proc.stdin.close()
                answer = proc.stdout.readline()  # once the PNG is written: not waiting for the interpreter's exit
                return bool(json.loads(answer)["drawn"])
            except (OSError, ValueError, KeyError):
                pass
            finally:
                _stop(proc)
        return metrics.plot(rows, path, title)

    def close(self) -> None:
        if self._proc is not None:
            _stop(self._proc)
            self._proc = None


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _warm_up() -> None:
    """A first figure, drawn and thrown away: the imports, the font cache and the renderer's first use."""
    import os

    logged = [{"step": 1, "loss": 1.0, "rewards/a/mean": 0.2, "rewards/b/mean": 0.4}, {"step": 2, "loss": 0.5, "rewards/a/mean": 0.3}]
    metrics.plot(logged, Path(os.devnull), "warm-up")


def main() -> None:
    _warm_up()
    request = json.loads(sys.stdin.read() or "null")
    if request is None:  # the step ended before it drew (stdin closed)
        return
    drawn = metrics.plot(request["rows"], Path(request["path"]), request["title"])
    print(json.dumps({"drawn": drawn}), flush=True)


if __name__ == "__main__":
    main()
