#!/usr/bin/env bash
# The GPU check in one lease (BENCHMARKS.md, "GPU check"): the install, then scripts/device_check.py (tests, short
# benches, one paper row planned from its own bench); everything lands in $OUT (five files).
#
# The install builds nothing and fetches nothing: the lent machine has no network, and `pip install -e .` would run
# pip's build isolation, which fetches setuptools and wheel (it failed there). The carried wheels (.device/wheels:
# hydra-core, omegaconf, antlr4-python3-runtime; nothing else is missing from the image, KINDS.md) are unpacked
# into $SITE, the project runs from src/ through PYTHONPATH, and `device_check.py --check-deps` proves every
# requirement of pyproject.toml is met before anything else runs.
#
# Prepare here first (`make device-prep`): the wheels (`pip wheel`, not `pip download`: antlr4 4.9.3 is a source
# archive only, which the image cannot build) and the CIFAR-10 JPEG tarball (20 MB; unpacked, 236 MB would not fit
# the 64 MiB carry). Then call the device tool with carry [".device"], timeout_s 600 and: bash scripts/device_check.sh
#
# DEVICE=cpu PYTHON=... WHEELS=... bash scripts/device_check.sh --work DIR --jpeg DIR --speeds 1:N,2:M is the dry run
# (tests/test_device_check.py): the same install into a throwaway interpreter with no index, then tiny CPU steps.
# Arguments go to device_check.py (--budget-s: seconds for the whole command, default 540 of the tool's 600).
set -euo pipefail
cd "$(dirname "$0")/.."
STARTED=$(date +%s)
OUT="${OUT:-outputs/device_check}"
DEVICE="${DEVICE:-cuda}"
PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-.device/wheels}"
SITE="${SITE:-/tmp/nin-site}"

shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ "${#wheels[@]}" -eq 0 ]; then
    echo "device check: no wheels in $WHEELS: run \`make device-prep\` and carry .device" >&2
    exit 3
fi
rm -rf "$SITE"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$SITE" "${wheels[@]}"
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" scripts/device_check.py --check-deps

if [ -f .device/cifar10-jpeg.tar.gz ] && [ ! -d .device/cifar10-jpeg ]; then
    mkdir -p .device/cifar10-jpeg && tar xzf .device/cifar10-jpeg.tar.gz -C .device/cifar10-jpeg
fi
DEVICE="$DEVICE" "$PYTHON" scripts/device_check.py --out "$OUT" --started "$STARTED" "$@"
