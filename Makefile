# Every target builds the virtual environment first; it is rebuilt only when the pins change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.8
READY := $(VENV)/.ready

.PHONY: demo test lab train serve standins-up standins-down standins-status register \
	serve-mlflow stream score refresh-notebooks diagrams screenshots site bench bench-setup clean lint data

# Bytecode is compiled at install: with PYTHONDONTWRITEBYTECODE set, every process would
# otherwise compile scikit-learn's sources again (about 6 s instead of 1 s to import it here).
$(READY): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip sync --quiet --compile-bytecode --python $(PY) requirements.lock
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

## The two commands of the README
demo: $(READY)
	$(PY) -m ride_duration.local.demo

test: lint
	$(PY) -m pytest

## Checks that need no test run: style, Dockerfiles, the CI workflow (also a pre-commit hook)
lint: $(READY)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint web-service/Dockerfile web-service-mlflow/Dockerfile streaming/Dockerfile
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/ci.yml

## The TLC files the lessons use, into data/ (from TLC_MIRROR or the TLC's server), checked
data: $(READY)
	$(PY) -m ride_duration.data fetch

## One lesson at a time
# Jupyter's root is the repository, so the notebooks' ../imgs/ pictures are inside it and served;
# JupyterLab opens on notebooks/. LAB_FLAGS adds options, e.g. LAB_FLAGS="--no-browser --port=8888".
LAB_FLAGS ?=
lab: $(READY) standins-up
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks $(LAB_FLAGS)

train: $(READY)
	$(PY) -m ride_duration.train

serve: $(READY)
	test -f models/lin_reg.npz || $(PY) -m ride_duration.train
	cd web-service && ../$(VENV)/bin/gunicorn --config python:ride_duration.gunicorn_conf predict:app

standins-up: $(READY)
	$(PY) -m ride_duration.local.standins up

standins-down: $(READY)
	$(PY) -m ride_duration.local.standins down

standins-status: $(READY)
	$(PY) -m ride_duration.local.standins status

register: standins-up
	. $${STANDINS_DIR:-.standins}/env && $(PY) -m ride_duration.registry

serve-mlflow: register
	. $${STANDINS_DIR:-.standins}/env && cd web-service-mlflow && \
		../$(VENV)/bin/gunicorn --config python:ride_duration.gunicorn_conf --preload predict:app

stream: register
	. $${STANDINS_DIR:-.standins}/env && $(PY) streaming/run_local.py

score: $(READY)
	test -f models/lin_reg.npz || $(PY) -m ride_duration.train
	$(PY) batch/score.py --taxi-type green --year 2021 --month 2 --model models/lin_reg.npz

refresh-notebooks: $(READY)
	$(PY) -m ride_duration.local.notebooks refresh

diagrams: $(READY)
	$(PY) imgs/make_diagrams.py

# The lessons as a static HTML book in site/: README, folders' READMEs, executed notebooks.
site: $(READY)
	$(PY) -m ride_duration.local.book --out site

# The MLflow UI's run page (notebook 3), with headless Chromium against the stand-ins.
screenshots: $(READY)
	$(PY) imgs/screenshot_mlflow.py

# The stand-ins and a registered model are for web-service-mlflow's start-up row.
bench: register
	command -v wrk > /dev/null || (apt-get update -qq && apt-get install -y -qq wrk) \
		|| echo "wrk unavailable: the web benchmark falls back to its Python load generator"
	test -f models/lin_reg.npz || $(PY) -m ride_duration.train
	test -f models/random_forest.npz || $(PY) -m ride_duration.train --model forest
	$(PY) benchmarks/startup.py --results benchmarks/results.json
	$(PY) benchmarks/web_service.py --results benchmarks/results.json
	$(PY) benchmarks/web_service.py --slow-clients 50 --results benchmarks/results.json
	$(PY) benchmarks/streaming.py --results benchmarks/results.json
	$(PY) benchmarks/batch.py --spark --results benchmarks/results.json
	$(PY) benchmarks/results.py render

# The README's two commands on a fresh clone of HEAD (about 10 min): the Performance section's set-up table.
bench-setup: $(READY)
	$(PY) benchmarks/setup.py --results benchmarks/results.json
	$(PY) benchmarks/results.py render

clean:
	test -x $(PY) && $(PY) -m ride_duration.local.standins down || true
	rm -rf $(VENV) models output .standins
