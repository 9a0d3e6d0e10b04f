#!/usr/bin/env bash
# The two time-to-accuracy runs of BENCHMARKS.md ("Time to accuracy"), one after the other, then the plot:
#   experiment=fast_cifar10 and the paper recipe (experiment=paper_cifar10_aug) on the CIFAR-10 JPEG copy, each
#   under a 60-minute wall-clock budget, every epoch's checkpoint scored on test after the run.
# Needs a quiet machine (nothing else running): ~2 h 10 min. Environment knobs:
#   CIFAR10_JPEG (default ~/.cache/nin/cifar10-jpeg), OUT (default outputs/time_to_accuracy/<date>),
#   FIG_DIR (default docs/benchmarks: the PNG and the Markdown table BENCHMARKS.md shows), BUDGET_S (3600),
#   PAPER_OVERRIDES (extra overrides for the paper run, e.g. "model.final_relu=false": the remedy for its collapse)
#   and PAPER_RUN (its directory under OUT and its label in the plot; default paper_cifar10_aug).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${CIFAR10_JPEG:-$HOME/.cache/nin/cifar10-jpeg}
OUT=${OUT:-outputs/time_to_accuracy/$(date +%Y-%m-%d_%H-%M-%S)}
FIG_DIR=${FIG_DIR:-docs/benchmarks}
BUDGET_S=${BUDGET_S:-3600}
PAPER_RUN=${PAPER_RUN:-paper_cifar10_aug}
PY=.venv/bin/python
# Freed memory stays in glibc's heap: no page faults on every step's large activations (BENCHMARKS.md,
# "Training throughput"). `nin bench` does the same in-process.
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647}

FAST=(experiment=fast_cifar10 "dataset.root=$DATA")
PAPER=(experiment=paper_cifar10_aug dataset=imagefolder "dataset.root=$DATA" ${PAPER_OVERRIDES:-})

# One-time dataset work outside the timed runs, like a download: decode the JPEGs, fit GCN+ZCA (both cached).
.venv/bin/nin data "${FAST[@]}" > /dev/null
.venv/bin/nin data "${PAPER[@]}" > /dev/null

mkdir -p "$OUT" "$FIG_DIR"
$PY scripts/time_to_accuracy.py "$OUT/fast_cifar10" --budget-s "$BUDGET_S" -- "${FAST[@]}"
$PY scripts/time_to_accuracy.py "$OUT/$PAPER_RUN" --budget-s "$BUDGET_S" -- "${PAPER[@]}"
$PY scripts/plot_time_to_accuracy.py "$OUT/fast_cifar10" "$OUT/$PAPER_RUN" --budget-min "$((BUDGET_S / 60))" \
    --png "$FIG_DIR/time_to_accuracy.png" --markdown "$FIG_DIR/time_to_accuracy.md"
echo "curves: $OUT/*/curve.jsonl; plot: $FIG_DIR/time_to_accuracy.png; table: $FIG_DIR/time_to_accuracy.md"
