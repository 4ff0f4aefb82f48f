# Two commands do all set-up: `make run` (install + train the quickstart model) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/quickstart

# constraints.txt pins every dependency (tools/constraints.py writes it); pyproject.toml has ranges.
# PYTHONWARNINGS reaches the build backend: setuptools' 11-line notice on every editable install
# ("Editable installation. Please be careful with folders ...") stays off the terminal.
PIP_INSTALL := PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q -c constraints.txt

.PHONY: install install-dev run test lint docs clean browser postgres docker docker-test \
	accelerator-check pretrained

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	@echo "installing catvae_jax and its pinned dependencies into $(VENV) (the first time: a few minutes)"
	@start=$$(date +%s); $(PIP_INSTALL) -e . && echo "installed in $$(( $$(date +%s) - start )) s"
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(PY)
	@echo "installing catvae_jax with the test, docs and torch extras into $(VENV) (the first time: several minutes)"
	@start=$$(date +%s); $(PIP_INSTALL) -e '.[dev,torch]' && echo "installed in $$(( $$(date +%s) - start )) s"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

run: install
	$(PY) -m catvae_jax.main --config configs/quickstart.py --workdir $(WORKDIR)
	@echo
	@echo "Open $(WORKDIR)/samples.png (new cats) and $(WORKDIR)/reconstructions.png. Next:"
	@echo "  $(PY) -m catvae_jax.generate --workdir $(WORKDIR) --n 64 --seed 1 --out cats.png"
	@echo "  $(PY) -m catvae_jax.serve --workdir $(WORKDIR)    # then open http://127.0.0.1:8000"
	@echo "More: README.md, and docs/ (make docs builds the site)."

# A model shipped in the package as pretrained:NAME (catvae_jax/pretrained/README.md), NAME one of
# quickstart | default: configs/NAME.py trained, evaluated and exported (float16, with NAME.json
# beside it) by these commands. `make pretrained NAME=default`.
NAME ?= quickstart
PRETRAINED_RUN ?= runs/pretrained_$(NAME)
pretrained: install
	$(PY) -m catvae_jax.main --config configs/$(NAME).py --workdir $(PRETRAINED_RUN)
	$(PY) -m catvae_jax.evaluate --workdir $(PRETRAINED_RUN) --nolikelihood --num_samples 1000
	$(PY) -m catvae_jax.export --workdir $(PRETRAINED_RUN) --dtype float16 --ship \
	  --out catvae_jax/pretrained/$(NAME).catvae

lint: install-dev
	$(PY) -m ruff check catvae_jax configs tests benchmarks tools experiments
	$(PY) -m ruff format --check catvae_jax configs tests benchmarks tools experiments

# The documentation site (mkdocs.yml, docs/) in strict mode: a broken link or reference fails.
# tests/e2e/test_docs.py builds it too, so `make test` checks it.
docs: install-dev
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# Chromium for tests/serve/test_page.py: installed with apt-get when missing and run as root.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium chromium-driver) || echo "warning: chromium not installed; browser test skips"; \
	  else echo "note: no chromium/chromedriver and not root: the browser test skips"; fi; \
	fi

# PostgreSQL for tests/sweep/test_study.py's many-worker test (the test starts its own server on
# loopback as user postgres): installed with apt-get when missing.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      postgresql) || echo "warning: postgresql not installed; its sweep test skips"; \
	  else echo "note: no PostgreSQL and not root: the PostgreSQL sweep test skips"; fi; \
	fi

# One pytest worker per core (at most 4): most tests are compile-bound, i.e. single-threaded.
# --dist loadfile: a file's tests run in one worker, so a module-scoped fixture (most train a
# tiny run) is built once, not once per worker (pytest 9.2 ignores xdist_group marks: xdist 3.8
# renames items through a field pytest no longer reads); --no-loadscope-reorder keeps the order
# of tests/conftest.py, the longest files first.
test: install-dev lint browser postgres
	$(PY) -m pytest -n auto --maxprocesses=4 --durations=25 --dist loadfile --no-loadscope-reorder --cov=catvae_jax --cov-report=term-missing:skip-covered --cov-fail-under=85

# Container images catvae-jax:train and :serve (docker/Dockerfile) with docker or podman, whichever
# works; JAX_EXTRA=cuda12|tpu for the accelerator variants, BASE=image for another base.
docker:
	BASE='$(BASE)' JAX_EXTRA='$(JAX_EXTRA)' docker/build.sh

# Builds both CPU images and proves them: a tiny run in `train`, then `serve` on it. Needs no
# venv; installs podman with apt-get when missing (as root), and caches a local Debian base.
docker-test:
	docker/test.sh

# The accelerator check (benchmarks/README.md, "Accelerator check"): at most 8 minutes on a GPU or
# TPU machine, with the venv's python or else python3 (an accelerator image's own stack);
# ACCEL_ARGS=--quick runs it on CPU with tiny settings.
accelerator-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) benchmarks/accelerator.py $(ACCEL_ARGS)

clean:
	rm -rf runs site .pytest_cache .coverage
