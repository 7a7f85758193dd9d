# The two set-up commands of the README. Each creates .venv if missing,
# installs what it needs (a stamp file skips the install when nothing changed),
# then runs.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: test demo bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

test: $(VENV)/.dev-installed
	bash .ci/pytest.sh $(PYTEST_ARGS)

demo: $(VENV)/.dev-installed
	$(BIN)/python -m duet_jax.demo

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/prefill.py

clean:
	rm -rf $(VENV) .pytest_cache
