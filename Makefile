# cnnexp: `make train` and `make test` are all a fresh machine needs (they create .venv first).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
PY := .venv/bin/python
STAMP := .venv/.installed-stamp
UI_PORT ?= 5000
STORE := sqlite:///$(CURDIR)/outputs/mlflow.db

.PHONY: install train test test-fast ui lint format bench studies docs clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py constraints.txt   ## ranges from pyproject, exact versions from constraints.txt
	test -x $(PY) || $(PYTHON) -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -c "from cnnexp.tracking.template import make_template; make_template()"  # empty MLflow store, copied for each new one
	touch $(STAMP)

train: $(STAMP)          ## the default experiment: stacked3x3 on MNIST-5k
	$(PY) -m cnnexp $(ARGS)

test: $(STAMP)           ## the whole suite, slow end-to-end tests included, one worker per core (≤ 4); an idle worker takes over queued tests
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist worksteal $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist worksteal -m "not slow" $(PYTEST_ARGS)

ui: $(STAMP)             ## MLflow UI on 127.0.0.1 over the same store the runs write; prints the dashboard links
	mkdir -p outputs/mlartifacts
	$(PY) -m cnnexp.tracking $(STORE) $(UI_PORT)
	$(PY) -m mlflow ui --backend-store-uri $(STORE) --default-artifact-root $(CURDIR)/outputs/mlartifacts --host 127.0.0.1 --port $(UI_PORT)

lint: $(STAMP)
	$(PY) -m ruff check cnnexp tests
	$(PY) -m ruff format --check cnnexp tests

format: $(STAMP)
	$(PY) -m ruff format cnnexp tests
	$(PY) -m ruff check --fix cnnexp tests

bench: $(STAMP)          ## speed ratios against baselines, data-path memory; BENCH=data or BENCH=runner: one part
	$(PY) -m cnnexp.bench $(BENCH)

studies: $(STAMP)        ## rerun the ready studies at a small budget, write docs/studies/<study>.md; STUDIES=name, ARGS=key=value
	$(PY) -m cnnexp.studies $(STUDIES) $(ARGS)

docs: $(STAMP)           ## the documentation site into outputs/site/ (mkdocs --strict: a broken link fails)
	$(PY) -m mkdocs build --strict --site-dir outputs/site

clean:                   ## run outputs and caches (the MLflow store too); keeps .venv
	rm -rf outputs .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
