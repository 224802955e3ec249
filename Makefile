# The few commands people type. `make run` and `make test` set everything up on a fresh machine
# (Python 3.11 and the package registries are all they need).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
LLAMA_VERSION := 0.3.36
# llama.cpp's default build uses the build machine's newest CPU features (it crashed in AMX matmuls
# here); a portable build runs everywhere. Built once and kept as a wheel (pip's cache ignores CMAKE_ARGS).
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF
WHEELS := $(HOME)/.cache/halo-pipeline/wheels/llama-cpp-python-$(LLAMA_VERSION)-portable
# The sdist is kept: it carries llama.cpp's GGUF converter (convert_hf_to_gguf.py + gguf-py), which
# the convert step extracts once (the wheel does not ship it).
SDISTS := $(HOME)/.cache/halo-pipeline/sdists
SDIST := $(SDISTS)/llama_cpp_python-$(LLAMA_VERSION).tar.gz
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export DO_NOT_TRACK ?= 1

.PHONY: setup system-deps run test test-fast test-slow lint bench clean

setup: system-deps $(STAMP)

# System packages the code verifiers use: bubblewrap (the sandbox; without it running model-written
# code is refused) and the C/C++ compilers. Installed with apt-get when it is there and we are root or
# have passwordless sudo (as .ci/run does); otherwise the exact install line is printed and setup
# goes on (compiler tests are then skipped, code verifiers refuse to run until bubblewrap is there).
SYSTEM_PACKAGES := bwrap:bubblewrap clang:clang g++:g++
system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
		command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO=sudo; else SUDO=none; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$SUDO" != none ]; then \
		echo "installing system packages:$$missing"; \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null \
			|| echo "apt-get could not install$$missing: install them yourself (sudo apt-get install$$missing)" >&2; \
	else \
		echo "missing system packages:$$missing. Install them: sudo apt-get install$$missing (Fedora: sudo dnf install bubblewrap clang gcc-c++)." >&2; \
		echo "Until then code verifiers refuse to run without bubblewrap (or opt down: sandbox: rlimits) and compiler tests are skipped." >&2; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	test -f $(SDIST) || $(BIN)/pip download --quiet --no-deps --no-binary :all: -d $(SDISTS) llama-cpp-python==$(LLAMA_VERSION)
	@if ! ls $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1; then \
		echo "building llama-cpp-python $(LLAMA_VERSION) (portable, ~6 min, once)"; \
		CMAKE_BUILD_PARALLEL_LEVEL=2 CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
		$(BIN)/pip wheel --no-cache-dir --no-deps -w $(WHEELS) $(SDIST); \
	fi
	$(BIN)/pip install --quiet $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/python -c "from halo_pipeline.export.gguf import ensure_converter; print('GGUF converter:', ensure_converter())"
	touch $(STAMP)

run: setup
	$(BIN)/halo-pipeline run recipes/quickstart.yaml

test: setup
	$(BIN)/pytest -m "not slow and not gpu"

# The fast loop while editing: the engine and unit tests, no servers, browsers or models (CI runs everything).
test-fast: setup
	$(BIN)/pytest -m "not integration and not slow and not gpu" -q

test-slow: setup
	$(BIN)/pytest -m "slow"

lint: setup
	$(BIN)/ruff check halo_pipeline tasks tests benchmarks
	$(BIN)/ruff format --check halo_pipeline tasks tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python benchmarks/engine.py
	$(BIN)/python benchmarks/dedup.py
	$(BIN)/python benchmarks/decontaminate.py
	$(BIN)/python benchmarks/verifiers.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/export.py
	$(BIN)/python benchmarks/serve.py

# Removes the environment only. Runs link into the cache, so it is never wiped here:
# `halo-pipeline cache gc [--dry-run] [--older-than 7d]` removes what no run references.
clean:
	rm -rf $(VENV)
