# Two commands: `make run` serves the embedded default, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
export LLMTUNER_DATA_DIR ?= ./data
# Signed download links of the local store point back at this server.
export LLMTUNER_PUBLIC_BASE_URL ?= http://$(HOST):$(PORT)
# No uvicorn access log line per request, as in the image and bench/api_load.py (it costs ~25-30% of
# the hot route's throughput): `make run UVICORN_ACCESS_LOG=true` to see them.
export UVICORN_ACCESS_LOG ?= false
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml llmtuner/pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run test lint typecheck migrate install-run install-dev clean bench web aws-smoke

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first and pinned: 2.13.0 is the CPU wheel on these machines (a bare `torch` pulls CUDA).
$(STAMP): $(VENV)/bin/python pyproject.toml llmtuner/pyproject.toml
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[local,dev]"
	$(PY) -m pip install -q -e ./llmtuner
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

migrate: install
	$(VENV)/bin/alembic upgrade head

# The dashboard (frontend/ -> frontend/dist, served at /): built when missing or stale (`npm ci` from the
# committed lockfile, then its typed client from the app's schema); skipped with a note without Node.js.
web: install
	$(PY) frontend/scripts/ensure_built.py

run: migrate web
	$(VENV)/bin/uvicorn app.main:create_app --factory --host $(HOST) --port $(PORT)

lint: install
	$(VENV)/bin/ruff check app llmtuner tests training_scripts bench migrations
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# A real-AWS smoke run (docs/cloud.md): trains the tiny model on SageMaker, deploys, invokes,
# downloads, deletes everything and prints the cost. Needs AWS credentials.
aws-smoke: install
	$(PY) scripts/aws_smoke.py --bucket "$(BUCKET)" --role "$(ROLE)" --region "$(or $(REGION),us-east-1)"

bench: install
	$(PY) -m pip install -q -e ".[local,dev,bench]"
	$(PY) bench/api_load.py && $(PY) bench/dataset_pipeline.py && $(PY) bench/train_throughput.py && $(PY) bench/inference_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
