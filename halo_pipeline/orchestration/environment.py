"""The environment a run gets, wherever it starts: the terminal, a sweep job, a served or worker deployment."""

from __future__ import annotations

import os

DEFAULTS = {
    "PREFECT_LOGGING_LEVEL": "CRITICAL",  # step errors are shown by us, with their log file
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",  # libraries' bars garble the step table and the logs; steps report progress themselves
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "DASK_LOGGING__DISTRIBUTED": "warning",
}


def apply_defaults() -> None:
    """Quiet, local-first defaults; anything the user set wins."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
