"""The limits every run gets (each verifier that runs code exposes them as settings)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Limits(BaseModel):
    """Per-sample resource limits (each verifier that runs code exposes them as settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    timeout_s: float = Field(10.0, gt=0, description="Wall-clock limit per run, enforced by the parent.")
    cpu_s: int = Field(10, ge=1, description="CPU seconds per process (RLIMIT_CPU).")
    memory_mb: int = Field(1024, ge=64, description="Address space per process (RLIMIT_AS).")
    file_size_mb: int = Field(16, ge=1, description="Largest file a process may write (RLIMIT_FSIZE).")
    open_files: int = Field(64, ge=16, description="Open file descriptors per process (RLIMIT_NOFILE).")
    processes: int = Field(32, ge=4, description="Processes and threads the sample may run at once (RLIMIT_NPROC).")
    output_kb: int = Field(256, ge=1, description="stdout/stderr kept per stream; more output kills the run.")
    tmp_mb: int = Field(64, ge=1, description="Size of the run's private /tmp, which holds its work dir (bubblewrap only).")
