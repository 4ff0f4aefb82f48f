# Two commands do all set-up: `make run` (install + train the quickstart model) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/quickstart

.PHONY: install install-dev run test lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev,torch]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

run: install
	$(PY) -m catvae_jax.main --config configs/quickstart.py --workdir $(WORKDIR)

lint: install-dev
	$(PY) -m ruff check catvae_jax configs tests

test: install-dev lint
	$(PY) -m pytest --cov=catvae_jax --cov-report=term-missing:skip-covered --cov-fail-under=85

clean:
	rm -rf runs .pytest_cache .coverage
