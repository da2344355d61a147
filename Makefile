# The two commands: `make run` and `make test`. Both set up .venv from the pinned lock file on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STATE_DIR ?= $(CURDIR)/.local
MANIFEST ?=
DRY_RUN ?=
DEVICES ?= 10000
SLOTS ?=
DAG ?=
CONF ?=
CDF_API_PORT ?= 8020
export STATE_DIR

.PHONY: venv run dag test bench lint format lock emulator cdf-api clean cluster cluster-stop

$(VENV)/.installed: requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q uv==0.13.9
	$(VENV)/bin/uv pip install -q --python $(PY) --compile-bytecode -r requirements.lock
	touch $@

venv: $(VENV)/.installed

run: venv
	$(PY) -m scripts.run_local $(if $(MANIFEST),--manifest "$(MANIFEST)") $(if $(DRY_RUN),--dry-run)

# Any DAG of the project through Airflow on the local state: make dag DAG=<id> CONF='<json>'
dag: venv
	@test -n "$(DAG)" || { echo "usage: make dag DAG=<dag id> [CONF='<json>']" >&2; exit 2; }
	$(PY) -m scripts.run_local --dag "$(DAG)" $(if $(CONF),--conf '$(CONF)')

test: venv
	$(PY) -m pytest

bench: venv
	$(PY) -m scripts.bench --devices $(DEVICES) $(if $(SLOTS),--slots $(SLOTS)) $(if $(INVENTORY),--inventory '$(INVENTORY)')

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

lock: venv
	$(VENV)/bin/uv pip compile requirements.txt --python-version 3.11 -o requirements.lock

# The CDF provisioning API standalone on http://127.0.0.1:$(CDF_API_PORT), on the local state (docs/cdf-api.md)
cdf-api: venv
	CDF_API_PORT=$(CDF_API_PORT) $(PY) -m scripts.cdf_api

emulator: venv
	$(PY) -m iot_emulator --host 127.0.0.1 --port 4566 --mqtt-port 8883 --state-dir $(STATE_DIR)/emulator

# The docker-compose services as processes on this machine's PostgreSQL and Redis (docs/deployment.md)
WORKERS ?= 2
cluster: venv
	$(PY) -m scripts.cluster up --workers $(WORKERS)

cluster-stop: venv
	$(PY) -m scripts.cluster down

clean:
	rm -rf $(VENV) .local .pytest_cache
