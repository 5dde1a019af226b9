# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint imports typecheck pytest pytest-fast bench peers clean links

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/tissue-oracle demo --out demo-out

lint: install
	$(VENV)/bin/ruff check .

# mypy can't see setuptools' package-dir mapping, so it checks a tree of links
# that spells the real import names (tissue_oracle.<folder>).
links:
	rm -rf build/typecheck && mkdir -p build/typecheck/tissue_oracle
	for d in agent tools oracles policies prompts store bench; do ln -s ../../../$$d build/typecheck/tissue_oracle/$$d; done

# The layer table and the no-cycles rule: [tool.importlinter] in pyproject.toml.
imports: install
	$(VENV)/bin/lint-imports --no-cache

typecheck: install links
	cd build/typecheck && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml \
		-p tissue_oracle.agent -p tissue_oracle.tools -p tissue_oracle.oracles -p tissue_oracle.policies \
		-p tissue_oracle.prompts -p tissue_oracle.store -p tissue_oracle.bench

# Every test (CI). `make test-fast` skips the `slow` tier (torch training, long wire and CLI runs).
pytest: install
	$(VENV)/bin/pytest -q

pytest-fast: install
	$(VENV)/bin/pytest -q -m "not slow"

test: lint imports typecheck pytest

test-fast: lint imports pytest-fast

bench: install
	$(VENV)/bin/tissue-oracle bench --suite quick --out bench-out

# Optional peer tissue detectors for `bench --suite peers`, each in its own env under .peers/ (not CI).
peers:
	bash bench/peers/install.sh

clean:
	rm -rf build demo-out bench-out .pytest_cache .mypy_cache .ruff_cache
