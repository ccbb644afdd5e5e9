# The two quick-start commands are `make demo` and `make test`; both install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.streamkit-installed
PYTHON ?= python3

.PHONY: setup demo test check lint typecheck package-check bench clean

setup: $(STAMP) node_modules/.streamkit-installed

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,kafka,parquet,prometheus,iceberg]' > $(VENV)/pip.log 2>&1 \
		|| { grep -v "is ignored: it is neither" $(VENV)/pip.log; exit 1; }
	$(PY) -c "import streamkit, confluent_kafka, pyarrow, pyiceberg, moto, pytest"
	touch $@

# kinesalite and kinesis-local (Kinesis stand-ins) and dynalite (a DynamoDB stand-in) come from the npm registry, pinned by package-lock.json.
node_modules/.streamkit-installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: setup
	$(VENV)/bin/streamkit demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	bash scripts/typecheck.sh

check: lint typecheck

# The wheel, installed with its extras in a clean venv outside the checkout: what `pip install streamkit` gets.
package-check: setup
	bash scripts/package_check.sh

# pytest runs last, so its summary closes the output.
test: check package-check
	$(VENV)/bin/pytest

bench: setup
	$(PY) benchmarks/pipeline_overhead.py

clean:
	rm -rf $(VENV) node_modules build *.egg-info .pytest_cache .mypy_cache .ruff_cache demo-output
