# Two commands a newcomer needs: `make demo` and `make test`. Everything else is for developers.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint typecheck lock lock-upgrade bench bench-quick chaos chaos-short clean

# Every install takes its versions from constraints.txt (the lock: `make lock` regenerates it).
# The tests need the sandbox and the embedded PostgreSQL: the `demo` extra brings both.
$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,demo]'
	touch $(STAMP)

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,demo,bench]'
	touch $(BENCH_STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cdc-invoice demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check cdc_invoice tests
	$(VENV)/bin/ruff format --check cdc_invoice tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The lock: every extra's dependencies pinned for Python 3.11. `make lock` keeps the pins already
# in constraints.txt and adds what pyproject.toml now needs; `make lock-upgrade` moves every pin
# to the newest release allowed. Commit constraints.txt with the change that needed it.
LOCK := $(VENV)/bin/uv pip compile pyproject.toml --all-extras --python-version 3.11 \
	--quiet --annotation-style line -o constraints.txt

lock: $(STAMP)
	$(LOCK)

lock-upgrade: $(STAMP)
	$(LOCK) --upgrade

# Benchmarks (docs/benchmarks.md): the machine's PostgreSQL at 127.0.0.1:5432 if it answers,
# else an embedded one. Writes bench-results.json and prints a table.
bench: $(BENCH_STAMP)
	$(PY) -m tests.bench

bench-quick: $(BENCH_STAMP)
	$(PY) -m tests.bench --quick

# Chaos (docs/reliability.md): its own PostgreSQL, two daemons SIGKILLed at random, database
# restarts, a cut and a half-open link, a faulty platform; then every order is compared with the
# platform and the local tables. Prints the figures and writes chaos-results.json. The short run
# is also tests/chaos/test_chaos_short.py (part of `make test`).
# The lifecycle model (tests/db/test_lifecycle_model.py) runs first with a longer budget.
chaos: $(STAMP)
	CDC_INVOICE_MODEL_EXAMPLES=300 $(PY) -m pytest -q --timeout 3600 tests/db/test_lifecycle_model.py
	$(PY) -m tests.chaos --full

chaos-short: $(STAMP)
	$(PY) -m tests.chaos

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build dist *.egg-info
