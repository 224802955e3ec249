"""Trainers TRL 1.16 keeps in `trl.experimental` (CPO, and ORPO): imported without its notice that the API is
unstable: the pinned TRL version is what the tests train with."""

from __future__ import annotations

import functools
import importlib
import warnings
from typing import Any


@functools.cache  # catch_warnings once: it swaps the process's filters, which another thread may be changing
def experimental(module: str, *names: str) -> tuple[Any, ...]:
    """`names` from `trl.experimental.<module>`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*trl\.experimental.*")
        found = importlib.import_module(f"trl.experimental.{module}")
    return tuple(getattr(found, name) for name in names)


def on_tokenized_pairs(trainer: Any) -> Any:
    """ORPOTrainer or CPOTrainer taking pairs already tokenized (`data.preference_examples`: the prompt as inference
    tokenizes it, each side on its own). Their own `tokenize_row` tokenizes the prompt joined with each side and
    moves the prompt's last token to the completion where the two merge, so the model would train after a prompt
    it never sees at inference."""
    from halo_pipeline.training import data

    class TokenizedPairs(trainer):
        def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, list[int]]:
            return data.pair_features(feature, self.max_length)

    TokenizedPairs.__name__ = TokenizedPairs.__qualname__ = f"Tokenized{trainer.__name__}"
    return TokenizedPairs
