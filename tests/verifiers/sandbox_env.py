"""What the verifier tests need from the machine, said once (every test module here imports this first).

- bubblewrap: with HALO_PIPELINE_REQUIRE_BWRAP=1 (CI) a missing or broken bubblewrap fails the
  tests that need it; elsewhere they are skipped, and the suite runs code under the explicit
  `rlimits` opt-in instead (a notice says so), so `make test` still means something there.
- compilers: tests that compile say which one they need and skip, with the install line, when absent.
"""

from __future__ import annotations

import os
import shutil

import pytest

import halo_pipeline.sandbox as sandbox

REQUIRE_BWRAP = bool(os.environ.get("HALO_PIPELINE_REQUIRE_BWRAP"))
BWRAP_PROBE = sandbox.isolation("bubblewrap")
if not BWRAP_PROBE.available and not REQUIRE_BWRAP and "HALO_PIPELINE_SANDBOX" not in os.environ:
    os.environ["HALO_PIPELINE_SANDBOX"] = "rlimits"
    print(f"\nnote: bubblewrap is unavailable ({BWRAP_PROBE.reason}): verifier tests run code under `rlimits` instead")
BWRAP = sandbox.effective_mode() == "bubblewrap" and BWRAP_PROBE.available

INSTALL = {"gcc": "gcc", "g++": "g++", "clang": "clang", "clang++": "clang", "rustc": "rustc (rustup, or the distribution's package)"}


def bubblewrap_only(why: str) -> pytest.MarkDecorator:
    """Skip without bubblewrap, except where it is required (CI): there the test runs and fails."""
    return pytest.mark.skipif(not BWRAP and not REQUIRE_BWRAP, reason=f"{why} needs bubblewrap ({BWRAP_PROBE.reason or 'rlimits mode'})")


def needs(*tools: str) -> pytest.MarkDecorator:
    missing = [t for t in tools if shutil.which(t) is None]
    hint = ", ".join(f"{t} (apt-get install {INSTALL.get(t, t)})" for t in missing)
    return pytest.mark.skipif(bool(missing), reason=f"needs {hint}")


def needs_rust() -> pytest.MarkDecorator:
    from halo_pipeline.verifiers.code_native import _need_toolchain

    problems = _need_toolchain("rust", None)
    return pytest.mark.skipif(bool(problems), reason="; ".join(problems))
