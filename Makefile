# Every target creates .venv from pyproject.toml when it is missing or stale: no manual set-up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BUDGET ?= smoke

.PHONY: venv test lint demo reproduce-table bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,sweep]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests

# Train → evaluate on the bundled offline digits dataset (no download needed).
demo: $(STAMP)
	$(BIN)/nin train experiment=demo_digits hydra.run.dir=outputs/demo
	$(BIN)/nin info experiment=demo_digits

clean:
	rm -rf outputs .pytest_cache
