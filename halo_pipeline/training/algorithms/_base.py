"""What every algorithm module declares: its settings (the `algorithm` group's node, unknown keys are errors),
what it trains on, and how it builds TRL's config and trainer (TRL's `<algo>_config` / `<algo>_trainer` pair)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from halo_pipeline.training.params import Settings, TrainingParams

Rows = list[dict[str, Any]]
Data = Literal["sft", "preference", "prompts", "labelled"]
ConfigFn = Callable[[Any, TrainingParams, dict[str, Any]], Any]
"""(settings, the train step's params, the arguments every TRL config takes) -> TRL's `<Algo>Config`."""
TrainerFn = Callable[[Any, TrainingParams, Rows, bool, dict[str, Any]], Any]
"""(settings, params, dataset rows, whether the chat template applies, the trainer's common arguments:
model, args, processing_class, callbacks, peft_config) -> TRL's `<Algo>Trainer`."""
LoopFn = Callable[[Any, TrainingParams, Rows, Any, "Path | None"], dict[str, Any]]
"""(settings, params, rows, the step's RunContext, an `init` adapter) -> the training summary: an algorithm that runs its own loop."""
CheckFn = Callable[[Any, TrainingParams], str | None]
"""(settings, params) -> what is wrong with the two together (raised when the train step's params are validated)."""


@dataclass(frozen=True)
class Algorithm:
    """One algorithm, as its module (`training/algorithms/<name>.py`, registered by file name) declares it."""

    settings: type[Settings]
    inputs: tuple[str, ...]  # the artifact types of the `dataset` input it trains on
    data: Data  # the rows it reads: prompt/completion, preference pairs, prompts, or labelled samples
    config: ConfigFn
    trainer: TrainerFn | None = None  # None: `train` runs its own loop
    train: LoopFn | None = None
    reward_model: bool = False  # trains a sequence classifier, saved merged (loads as verifier=reward_model)
    verifier: bool = False  # rewards with the recipe's verifier
    probe: bool = True  # takes `probe_every` (a callback in its TRL trainer)
    check: CheckFn | None = None

    @property
    def name(self) -> str:
        return str(self.settings.model_fields["name"].annotation.__args__[0])  # type: ignore[union-attr]


__all__ = ["Algorithm", "Data", "Rows", "Settings", "TrainingParams"]
