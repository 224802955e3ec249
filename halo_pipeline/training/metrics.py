"""Per-step metrics to metrics.jsonl, progress to the engine, and the training curves."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

CURVES = ("loss", "reward", "kl", "learning_rate", "rewards/accuracies", "accuracy", "probe/pass@1", "probe/mean_reward")


def callback(metrics_path: Path, on_progress: Callable[[int, int], None] | None) -> Any:
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args, state, control, logs=None, **kwargs):  # type: ignore[no-untyped-def]
            if not logs or "train_loss" in logs:  # the end-of-training summary, not a step
                return
            row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4)}
            row.update({k: v for k, v in logs.items() if isinstance(v, int | float)})
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if on_progress and state.max_steps:
                on_progress(state.global_step, state.max_steps)

    return Recorder()


def read(metrics_path: Path) -> list[dict[str, Any]]:
    if not metrics_path.exists():
        return []
    return [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Loss (and reward / KL / learning rate when logged) against the step; False when nothing was logged."""
    series = {k: [(r["step"], r[k]) for r in rows if k in r] for k in CURVES}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # without pyplot: no global state, a faster import

    fig = Figure(figsize=(3.2 * len(series), 2.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(series), squeeze=False)
    for ax, (name, points) in zip(axes[0], series.items(), strict=True):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None, color="#4c72b0")
        ax.set_title(name)
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def inline_image(path: Path) -> str:
    """Markdown image with the PNG inlined, so the Prefect artifact shows the curves."""
    return f"![training curves](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"
