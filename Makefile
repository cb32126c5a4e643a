# Two commands do everything on a fresh machine (Python 3.11, no GPU, PyPI only):
#   make demo   install, then run the whole pipeline on the embedded synthetic data
#   make test   install, then run the test suite (what .ci/run calls)
#   make serve  the clinician web app on http://127.0.0.1:8000 (serves the registry's champion)
#   make real DATASET=<ham10000|malaria|dermnet> DATA=<root of the native layout>
#               train the recommended configuration (configs/<dataset>.yaml) and promote a champion
#   make plots  the DVC plots of the workspace (REVS="exp-a exp-b" compares revisions) in
#               dvc_plots/index.html, offline (Vega vendored in vendor/vega/offline.html)
#   make services-up / services-down   the scale-out services on 127.0.0.1 (docs/scale-out.md):
#               PostgreSQL, Redis, SeaweedFS S3, an MLflow server, Airflow 3 with Celery (.services/)
#   make test-services  one retrain cycle and the failure cases on those services (starts and stops them)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export GIT_PYTHON_REFRESH := quiet
# No usage telemetry from any tool (same switches as pipelines/__init__.py).
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false

.PHONY: install demo test real plots lock lock-services serve mlflow-ui airflow airflow-stop bench clean \
	services-up services-down test-services

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.9
	$(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode -r requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	python -m pipelines.intake --init
	dvc repro
	python -m pipelines.summary

test: install
	python -m pytest -q

real: install
	@test -n "$(DATASET)" -a -n "$(DATA)" || { echo "usage: make real DATASET=<ham10000|malaria|dermnet> DATA=<root> [SET='train.epochs=1 ...']"; exit 2; }
	python -m pipelines.intake --init
	python scripts/real.py $(DATASET) --data "$(DATA)" $(foreach s,$(SET),--set $(s))

plots: install
	dvc plots $(if $(REVS),diff $(REVS),show) --html-template vendor/vega/offline.html -o dvc_plots

lock:
	$(BIN)/uv pip compile -q requirements.in -o requirements.lock --python-version 3.11

# The services' extras on top of requirements.lock; its celery pin is the one they move (see the .in).
lock-services:
	grep -v '^celery==' requirements.lock > .services-constraints.txt
	$(BIN)/uv pip compile -q requirements-services.in -c .services-constraints.txt -o requirements-services.lock --python-version 3.11
	rm -f .services-constraints.txt

# The clinician app on 127.0.0.1:8000 (MEDSCAN_PORT overrides; MEDSCAN_ADMIN_PASSWORD seeds the first admin).
serve: install
	python -m pipelines.webapp

mlflow-ui: install
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

airflow: install
	scripts/airflow-standalone.sh

# Stops everything `make airflow` started (its whole session), from any shell.
airflow-stop:
	scripts/airflow-standalone.sh stop

# Installs what they need (apt postgresql redis-server, requirements-services.lock), then starts them.
services-up: install
	scripts/services-up.sh

services-down:
	scripts/services-down.sh

test-services: install
	python -m pytest -q tests/services

bench: install
	python -m bench.bench_ingest --repeat 2
	python -m bench.bench_training_speed
	python -m bench.compare_real malaria --image-size 64 --epochs 10 --archs malaria_cnn cnn_medium cnn_small
	python -m bench.compare_real ham10000 --image-size 64 --epochs 12 --archs cnn_small cnn_medium cnn_medium_attention

clean:
	rm -rf data/images data/manifest.parquet data/splits.parquet models metrics plots reports mlflow.db mlartifacts
