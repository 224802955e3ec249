"""The training curves are drawn by a process of their own (matplotlib never enters the process that trains), and
drawn still when that process is gone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROWS = [{"step": s, "loss": 1.0 / s, "learning_rate": 1e-5 * (4 - s), "rewards/a/mean": 0.1 * s, "rewards/b/mean": 0.2} for s in (1, 2, 3)]


def _draw_in_a_fresh_process(tmp_path: Path, kill_first: bool) -> dict:
    script = f"""
import json, sys
from pathlib import Path
from halo_pipeline.training.curves import Plotter
plotter = Plotter()
if {kill_first}:
    plotter._proc.kill()
    plotter._proc.wait()
drawn = plotter.draw(json.loads({json.dumps(json.dumps(ROWS))}), Path({str(tmp_path / "curves.png")!r}), "grpo · lora")
print(json.dumps({{"drawn": drawn, "matplotlib_here": "matplotlib" in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_curves_are_drawn_by_their_own_process(tmp_path: Path) -> None:
    result = _draw_in_a_fresh_process(tmp_path, kill_first=False)
    assert result == {"drawn": True, "matplotlib_here": False}
    png = (tmp_path / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000  # three panels: loss, learning rate, reward per verifier


def test_the_curves_are_drawn_here_when_their_process_is_gone(tmp_path: Path) -> None:
    result = _draw_in_a_fresh_process(tmp_path, kill_first=True)
    assert result == {"drawn": True, "matplotlib_here": True}
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_a_step_that_ends_before_drawing_leaves_no_process_behind() -> None:
    from halo_pipeline.training.curves import Plotter

    plotter = Plotter()
    proc = plotter._proc
    assert proc is not None and proc.poll() is None
    plotter.close()
    assert proc.poll() is not None and plotter._proc is None
    plotter.close()  # twice is harmless
