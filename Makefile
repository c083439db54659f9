# c2a-jax: `make setup` once (idempotent, every target calls it), then `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.c2a-installed
# Other labs' RLDS reading stack, to prove our dataset reads with it (requirements-rlds.txt).
RLDS_VENV := .venv-rlds
RLDS_STAMP := $(RLDS_VENV)/.c2a-installed
# Extra pip options, e.g. PIP_OPTS="--extra-index-url https://download.pytorch.org/whl/cpu" where the
# torch 2.13.0 CPU wheel is not on the machine already.
PIP_OPTS ?=
PYTEST_OPTS ?=
# Extra demo options, e.g. DEMO_OPTS="--config.demos_per_task=48" or DEMO_OPTS="--from-stage vlm".
DEMO_OPTS ?=

.PHONY: setup system venv render-check test demo lint format lock clean help

help:
	@echo "make setup   system packages (Mesa lavapipe, ffmpeg), .venv with pinned deps, render smoke check"
	@echo "make test    setup + the whole test suite on CPU"
	@echo "make demo    setup + the main job end to end (demos, RLDS, VLM, two DPs, evaluation, report) in runs/demo"
	@echo "make lint    ruff"

setup: system $(STAMP) $(RLDS_STAMP) render-check

system:
	@tools/setup_system.sh

# The venv is rebuilt only when the requirements change (the stamp holds their hash).
$(STAMP): requirements.txt requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@hash=$$(cat requirements.txt requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1); \
	if [ -f $(STAMP) ] && [ "$$(cat $(STAMP))" = "$$hash" ]; then touch $(STAMP); exit 0; fi; \
	set -e; echo "venv: installing pinned dependencies into $(VENV) (a few minutes the first time)"; \
	$(PY) -m pip install -q --disable-pip-version-check $(PIP_OPTS) torch==2.13.0; \
	$(PY) -m pip install -q --disable-pip-version-check $(PIP_OPTS) -r requirements.txt -c requirements.lock; \
	$(PY) -m pip install -q --disable-pip-version-check --no-deps mani-skill==3.0.1; \
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .; \
	if $(PY) -m pip list 2>/dev/null | grep -qi '^mplib '; then echo "mplib must not be installed (numpy 2)"; exit 1; fi; \
	echo "$$hash" > $(STAMP)

$(RLDS_STAMP): requirements-rlds.txt
	@test -x $(RLDS_VENV)/bin/python || $(PYTHON) -m venv $(RLDS_VENV)
	@echo "venv: installing the reference RLDS reader (TF 2.15 + rlds) into $(RLDS_VENV)"
	@$(RLDS_VENV)/bin/python -m pip install -q --disable-pip-version-check $(PIP_OPTS) -r requirements-rlds.txt
	@touch $(RLDS_STAMP)

render-check: $(STAMP)
	@$(PY) -m c2a_jax.sim.render_check

test: setup
	$(PY) -m c2a_jax.host_memory $(PY) -m pytest -q $(PYTEST_OPTS) tests

demo: setup
	$(PY) -m c2a_jax.demo $(DEMO_OPTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Regenerate the transitive lock from the current venv.
lock: $(STAMP)
	@( echo "# Full transitive lock of the tested environment (pip freeze), used as constraints by make setup."; \
	   echo "# Regenerate after changing requirements.txt: make lock"; \
	   $(PY) -m pip freeze --exclude-editable | sed 's|^torch @ .*|torch==2.13.0|' ) > requirements.lock

clean:
	rm -rf $(VENV) $(RLDS_VENV) .pytest_cache .hypothesis .ruff_cache
