"""Per-step metrics to metrics.jsonl, progress to the engine, and the training curves."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CURVES = (
    "loss",
    "reward",
    "signal_groups",
    "kl",
    "learning_rate",
    "rewards/accuracies",
    "accuracy",
    "probe/pass@1",
    "probe/mean_reward",
)
PANEL_INCHES = (3.2, 2.8)
MARGINS = {"left": 0.7, "right": 0.15, "bottom": 0.5, "top": 0.75, "between": 0.85}  # inches: tick labels, titles, "step"
PER_REWARD = re.compile(r"rewards/(.+)/mean")  # GRPO: each reward function's mean (TRL names it after the function)


class Pace:
    """Live progress of a training loop: a line in the step's log per logged step (step, loss/reward, pace,
    ETA) and the same figures beside the terminal's progress bar (`on_progress(done, total, **figures)`)."""

    LOGGED = ("loss", "reward", "signal_groups", "rewards/accuracies", "accuracy", "kl", "learning_rate")  # in the log line, when logged
    SHOWN = {"loss": "loss", "reward": "reward", "rewards/accuracies": "accuracy", "accuracy": "accuracy"}  # beside the bar

    def __init__(self, log: Any = None, on_progress: Callable[..., None] | None = None):
        self.log, self.on_progress = log, on_progress
        self.started: float | None = None
        self.first_step = 0
        self.figures: dict[str, float] = {}

    def begin(self, step: int) -> None:
        self.started, self.first_step = time.time(), step  # a resumed run's pace counts from where it resumed

    def eta_s(self, step: int, total: int) -> float | None:
        done = step - self.first_step
        if self.started is None or done <= 0 or total <= 0:
            return None
        return max(0.0, (time.time() - self.started) / done * (total - step))

    def step(self, step: int, total: int) -> None:
        if self.on_progress and total:
            eta = self.eta_s(step, total)
            self.on_progress(step, total, **self.figures, **({"eta_s": round(eta, 1)} if eta is not None else {}))

    def logged(self, step: int, total: int, row: dict[str, Any]) -> None:
        self.figures = {label: round(float(row[k]), 4) for k, label in self.SHOWN.items() if isinstance(row.get(k), int | float)}
        if self.log is None:
            return
        parts = [f"step {step}/{total}" if total else f"step {step}"]
        parts += [f"{k} {row[k]:.4g}" for k in self.LOGGED if isinstance(row.get(k), int | float)]
        eta = self.eta_s(step, total)
        if eta is not None and self.started is not None:
            parts.append(f"{(time.time() - self.started) / max(step - self.first_step, 1):.2f} s/step, ETA {format_seconds(eta)}")
        self.log.info(" · ".join(parts))


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def callback(metrics_path: Path, on_progress: Callable[..., None] | None, log: Any = None) -> Any:
    from transformers import TrainerCallback

    pace = Pace(log, on_progress)

    class Recorder(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            pace.begin(state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "train_loss" in logs or not state.is_world_process_zero:  # a summary, or a rank other than 0
                return
            row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4)}
            row.update({k: v for k, v in logs.items() if isinstance(v, int | float)})
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            pace.logged(state.global_step, state.max_steps, row)
            pace.step(state.global_step, state.max_steps)  # on_step_end came first, with the previous figures

        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:  # distributed: progress comes from rank 0 only
                pace.step(state.global_step, state.max_steps)

    return Recorder()


def read(metrics_path: Path) -> list[dict[str, Any]]:
    if not metrics_path.exists():
        return []
    return [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Loss (and reward / groups with signal / KL / learning rate when logged) against the step, and GRPO's reward
    functions side by side when it has several; False when nothing was logged."""
    panels: dict[str, dict[str, list[tuple[Any, Any]]]] = {k: {k: [(r["step"], r[k]) for r in rows if k in r]} for k in CURVES}
    per_reward = sorted({m.group(1) for r in rows for k in r if (m := PER_REWARD.fullmatch(k))})
    if len(per_reward) > 1:  # one alone is `reward`
        panels["reward per verifier"] = {
            n: [(r["step"], r[f"rewards/{n}/mean"]) for r in rows if f"rewards/{n}/mean" in r] for n in per_reward
        }
    panels = {k: lines for k, lines in panels.items() if any(lines.values())}
    if not panels:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # without pyplot: no global state, a faster import

    n = len(panels)
    width, height = PANEL_INCHES[0] * n, PANEL_INCHES[1]
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    # margins fixed in inches rather than tight_layout's (a third of the drawing's cost: it draws the figure to measure it)
    axis_width = (width - MARGINS["left"] - MARGINS["right"] - MARGINS["between"] * (n - 1)) / n
    fig.subplots_adjust(
        left=MARGINS["left"] / width,
        right=1 - MARGINS["right"] / width,
        bottom=MARGINS["bottom"] / height,
        top=1 - MARGINS["top"] / height,
        wspace=MARGINS["between"] / axis_width,
    )
    axes = fig.subplots(1, n, squeeze=False)
    for ax, (name, lines) in zip(axes[0], panels.items(), strict=True):
        for label, points in lines.items():
            marker = "." if len(points) < 30 else None
            color = "#4c72b0" if len(lines) == 1 else None
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, color=color, label=label)
        if len(lines) > 1:
            ax.legend(fontsize="x-small")
        ax.set_title(name)
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.savefig(path, dpi=90)
    return True


def inline_image(path: Path) -> str:
    """Markdown image with the PNG inlined, so the Prefect artifact shows the curves."""
    return f"![training curves](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"
