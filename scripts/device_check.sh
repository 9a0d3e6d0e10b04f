#!/usr/bin/env bash
# The GPU check in one lease (BENCHMARKS.md, "GPU check"). On the lent machine: install the carried wheels
# (.device/wheels: hydra-core, omegaconf, antlr4-python3-runtime, import-linter's none) and this project with
# --no-deps into the image's python3, then run scripts/device_check.py; everything lands in $OUT.
# Prepare here first (`make device-prep` does both lines below); `pip wheel`, not `pip download`: antlr4 4.9.3 is
# published as a source archive only, and the image cannot build one:
#   .venv/bin/pip wheel --no-deps -w .device/wheels hydra-core==1.3.8 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3
#   cp ../shared/data/cifar10-jpeg.tar.gz .device/     # 20 MB; unpacked (236 MB) it would not fit the 64 MiB carry
# then call the device tool with carry [".device"] and: bash scripts/device_check.sh
# DEVICE=cpu bash scripts/device_check.sh is the dry run (nothing installed; tiny CPU settings).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-outputs/device_check}"
DEVICE="${DEVICE:-cuda}"
PYTHON="${PYTHON:-python3}"
if [ "$DEVICE" = cuda ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps .device/wheels/*.whl
    "$PYTHON" -m pip install -q --no-index --no-deps -e .
    if [ -f .device/cifar10-jpeg.tar.gz ] && [ ! -d .device/cifar10-jpeg ]; then
        mkdir -p .device/cifar10-jpeg && tar xzf .device/cifar10-jpeg.tar.gz -C .device/cifar10-jpeg
    fi
fi
DEVICE="$DEVICE" OUT="$OUT" "$PYTHON" scripts/device_check.py --out "$OUT"
