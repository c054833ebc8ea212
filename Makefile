# The two commands: `make demo` and `make test`. Each sets up what it needs itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHROMIUM ?= /usr/bin/chromium

.PHONY: demo test bench lint typecheck pytest browser loadgen clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Console pages are tested in a real Chromium driven by Playwright; the browser
# comes from Debian's packages because browser downloads are not available.
browser:
	@test -x $(CHROMIUM) || (command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ) || \
	  echo "chromium not installed: browser tests will fail"

# The benchmark drives load with Debian's wrk when it can be installed, else with a
# Python load generator (the benchmark says which).
loadgen:
	@command -v wrk >/dev/null || (command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null) ) || \
	  echo "wrk not installed: the benchmark uses its Python load generator"

demo: $(STAMP)
	$(VENV)/bin/gateway demo

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway policies audit tests bench
	$(VENV)/bin/ruff format --check gateway policies audit tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP) browser
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

bench: $(STAMP) loadgen
	$(PY) -m bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache var
