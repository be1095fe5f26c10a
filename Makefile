# Every target builds the virtual environment first; it is rebuilt only when the pins change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.8
READY := $(VENV)/.ready

.PHONY: demo test notebooks refresh-notebooks lab train bench standins-up standins-down clean

$(READY): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip sync --quiet --python $(PY) requirements.lock
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $@

demo: $(READY)
	$(PY) -m ride_duration.demo

test: $(READY)
	$(PY) -m pytest

refresh-notebooks: $(READY)
	$(PY) -m ride_duration.notebooks refresh

lab: $(READY)
	$(VENV)/bin/jupyter lab notebooks/

train: $(READY)
	$(PY) -m ride_duration.train

clean:
	rm -rf $(VENV) models
