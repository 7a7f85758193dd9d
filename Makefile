# The two set-up commands of the README. Each creates .venv if missing,
# installs what it needs (a stamp file skips the install when nothing changed),
# then runs.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

LMMS_VENV := .venv-lmms

.PHONY: test demo bench test-lmms clean

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

# The lmms-eval plugin's test, in its own venv (lmms-eval's ~160 dependencies stay out of
# .venv). requirements-dev.txt's torch==2.13.0 in the same install keeps the resolver on the
# CPU wheel (and torchvision 0.28); without it lmms-eval pulls the newest, CUDA, torch.
# torchvision's PyPI wheel is then a CUDA build that fails to load beside the CPU torch
# (transformers imports it when present); nothing on the plugin's path needs it: removed.
$(LMMS_VENV)/.installed: pyproject.toml requirements.txt requirements-dev.txt
	$(PY) -m venv $(LMMS_VENV)
	$(LMMS_VENV)/bin/pip install --quiet --upgrade pip
	$(LMMS_VENV)/bin/pip install --quiet -r requirements-dev.txt -e ".[lmms]"
	$(LMMS_VENV)/bin/pip uninstall --quiet --yes torchvision
	touch $@

test-lmms: $(LMMS_VENV)/.installed
	$(LMMS_VENV)/bin/python -m pytest tests/test_lmms.py -q

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/prefill.py

clean:
	rm -rf $(VENV) $(LMMS_VENV) .pytest_cache
