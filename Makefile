# Every target creates .venv from pyproject.toml when it is missing or stale: no manual set-up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BUDGET ?= smoke

.PHONY: venv test lint demo reproduce-table bench host-table clean device-prep

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,sweep]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/lint-imports
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/lint-imports

# Train → info → eval → export (ONNX) → class maps on the bundled offline digits dataset (no download needed).
demo: $(STAMP)
	$(BIN)/nin train experiment=demo_digits hydra.run.dir=outputs/demo
	$(BIN)/nin info experiment=demo_digits
	$(BIN)/nin eval outputs/demo/checkpoints/best.pt
	$(BIN)/nin export outputs/demo/checkpoints/best.pt --format onnx
	$(BIN)/nin cam outputs/demo/checkpoints/best.pt --test 8 --out outputs/demo/cam

# The paper's tables with our numbers (results/table.md, results/table.csv). BUDGET=full (paper epochs, 3 seeds:
# GPU-days) | short (a few GPU-hours) | smoke (minutes on a CPU; not comparable). Resumable: finished runs under
# results/runs/ are kept. CIFAR10_JPEG=DIR trains the CIFAR-10 rows on a JPEG copy; ROWS=a,b limits the rows.
reproduce-table: $(STAMP)
	$(BIN)/nin table --run --budget $(BUDGET) $(if $(CIFAR10_JPEG),--cifar10-jpeg $(CIFAR10_JPEG)) \
		$(if $(ROWS),--rows $(ROWS))

# What a lent GPU needs carried (the device tool's carry [".device"]; then `bash scripts/device_check.sh` there):
# the wheels its image lacks (the list: scripts/device_check.py CARRIED, checked against the image's packages by
# tests/test_device_check.py; built, since antlr4 4.9.3 is a source archive) and the CIFAR-10 JPEG tarball.
device-prep: $(STAMP)
	rm -rf .device/wheels
	$(BIN)/pip wheel -q --no-deps -w .device/wheels $$($(BIN)/python scripts/device_check.py --carried)
	cp ../shared/data/cifar10-jpeg.tar.gz .device/

# BENCHMARKS.md's "Machine", "Training throughput" and "Time to accuracy" figures on this host (quiet machine;
# SKIP_TTA=1 leaves out the two 60-minute runs; OUT= and FIG_DIR= as in scripts/benchmarks.sh).
bench: $(STAMP)
	bash scripts/benchmarks.sh

# BENCHMARKS.md's per-host table (fp32 and bf16 img/s, the peak, the share) on this host, quiet: ~3 minutes.
host-table: $(STAMP)
	bash scripts/host_table.sh

clean:
	rm -rf outputs .pytest_cache
