# surge: `make run` serves the tiny model through the full cluster; `make test` sets up and runs every test.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.surge-installed
MODEL := .cache/models/surge-tiny/surge-model.json
FALLBACK_MODEL := .cache/models/surge-fallback/surge-model.json
PYTEST_ARGS ?=

.PHONY: run test lint venv models bench clean loadtest

venv: $(STAMP)

# pip, not uv: the CPU build of torch comes from this machine's pip configuration. Triton and the
# vision/audio packages have no use on CPU; removing them saves ~1 GB and ~8 s of engine start-up.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade -q pip
	$(PY) -m pip install -e ".[cpu,dev]"
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec triton || true
	touch $@

models: $(MODEL) $(FALLBACK_MODEL)

$(MODEL): | $(STAMP)
	$(PY) -m cluster.tiny_model --variant tiny

$(FALLBACK_MODEL): | $(STAMP)
	$(PY) -m cluster.tiny_model --variant fallback

run: venv models
	$(PY) -m cluster.run

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy cluster deployments autoscaling loadtests benchmarks

# Two sessions: one Ray per process, so the single-node app and the local multi-node cluster run apart.
test: venv models lint
	$(PY) -m pytest -m "not multinode" $(PYTEST_ARGS)
	$(PY) -m pytest -m multinode $(PYTEST_ARGS)

bench: venv models
	$(PY) -m benchmarks.overhead --quick

# A short promo day (compressed 120x: ~45 s) against the cluster `make run` serves, with its development key.
# Report, plots and per-SLO verdicts in $(LOADTEST_REPORT); exit code 0 when every SLO holds, 1 when one fails.
LOADTEST_HOST ?= http://127.0.0.1:8000
LOADTEST_REPORT ?= .cache/loadtest-report
LOADTEST_ARGS ?=
loadtest: venv
	$(PY) -m loadtests run --scenario promo-day --host $(LOADTEST_HOST) --compress 120 --rate 0.5 \
		--keys .cache/dev-api-key --tiers enterprise=1@1 --slo loadtests/data/slo-local.yaml \
		--report $(LOADTEST_REPORT) $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
