"""How a training worker process ends once its work is written: without the interpreter's teardown."""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def exit_now() -> NoReturn:
    """Everything the step reads (the adapter, metrics.jsonl, the reports on stdout) is written and flushed: leave
    without tearing down MLX, mlx-lm, transformers and torch module by module, which took ~1.1 s after every MLX run
    here, on the train step's clock (it waits for its worker to exit)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
