# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Ray stays on loopback, sends no usage stats, and local clusters need no token; no hub downloads.
# The Serve controller's loop every 1 s instead of 0.1 s: on a small CPU box its idle polling
# slowed CPU inference by a fifth (bench/serving_overhead.py); reacting within a second is plenty.
RAY_ENV := RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled \
           RAY_SERVE_CONTROL_LOOP_INTERVAL_S=1.0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

.PHONY: serve serve-gpu test unit smoke tiny clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' -e ./clients/python  # the server, and the stations' client its tests use
	touch $(STAMP)

serve: $(STAMP)  ## (qwen-serve = serve run + graceful SIGTERM) serve the API on 127.0.0.1:8000 with the embedded tiny model (CPU)
	$(RAY_ENV) $(VENV)/bin/qwen-serve config/serve.yaml

serve-gpu: $(STAMP)  ## serve on a GPU machine with the real presets
	RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1 $(VENV)/bin/qwen-serve config/serve.gpu.yaml

# Two test sessions at once: alone, one session kept the two cores about half busy (waiting on
# replica starts, leases and timers). The integration tests as two sessions (pytest-xdist, a file at
# a time each), each with its own Ray cluster; then the Ray CLI cluster tests, whose `ray stop` stops
# every Ray process on the machine, beside the unit tests, which start no cluster (their output is
# shown when both have ended).
test: $(STAMP)  ## the whole suite: integration tests, then the Ray CLI cluster tests beside the unit tests
	$(RAY_ENV) $(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile tests/integration
	$(RAY_ENV) $(PY) -m pytest -q -p no:cacheprovider tests/unit > $(VENV)/unit-tests.log 2>&1 & unit=$$!; \
	  $(RAY_ENV) $(PY) -m pytest -q -p no:cacheprovider tests/cluster; cluster=$$?; \
	  wait $$unit; units=$$?; echo "--- tests/unit:"; cat $(VENV)/unit-tests.log; \
	  test $$cluster = 0 && test $$units = 0

unit: $(STAMP)
	$(RAY_ENV) $(PY) -m pytest -q tests/unit

smoke: $(STAMP)  ## `serve run config/serve.yaml` end to end: health, one job, result, SIGTERM, nothing left
	$(RAY_ENV) $(PY) tests/smoke_serve_run.py

tiny: $(STAMP)  ## build the embedded tiny model into state/models/tiny
	$(PY) -m serve_app.worker.tiny_model state/models/tiny

clean:
	rm -rf state .pytest_cache
