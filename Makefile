# The two set-up commands: `make demo` and `make test`. Each creates .venv and installs
# the project (pip, from pyproject.toml) when missing. `make bench` measures every stage
# (5-9 minutes on 2 cores; BENCH_ARGS="--videos FILE ..." adds your own videos).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test browser lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,serve]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cmpdata demo --out demo-out

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# The browser tests of `cmpmodel serve` drive the system's Chromium and its driver; as root,
# they are installed from the system's packages when missing. Where that cannot be done the
# tests skip saying why (with CI=true they fail instead).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "make: chromium could not be installed: the browser tests will skip"; \
	else echo "make: no chromium (install chromium and chromium-driver as root): the browser tests will skip"; fi

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf demo-out bench-out .pytest_cache
