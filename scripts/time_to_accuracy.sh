#!/usr/bin/env bash
# The time-to-accuracy runs of BENCHMARKS.md ("Time to accuracy"), one after the other, then the plot: on the
# CIFAR-10 JPEG copy, each under a 60-minute wall-clock budget, every epoch's checkpoint scored on test after the run.
#   RUNS (default "fast_cifar10 paper"): any of
#     fast_cifar10     experiment=fast_cifar10 (the 85 % recipe)
#     fast_cifar10_92  experiment=fast_cifar10_92 (the 92 % attempt), scored with mirror TTA (`nin eval --tta`)
#     paper            experiment=paper_cifar10_aug, the paper's recipe
# Needs a quiet machine (nothing else running): about 65 minutes a run. Environment knobs:
#   CIFAR10_JPEG (default ~/.cache/nin/cifar10-jpeg), OUT (default outputs/time_to_accuracy/<date>),
#   FIG_DIR (default docs/benchmarks/hosts/<this host's CPU>: the PNG and the Markdown table, named after RUNS, so
#   a run on one host never writes over another host's figures), BUDGET_S (3600),
#   TARGET (the plot's target line, default 85), PAPER_OVERRIDES (extra overrides for the paper run, e.g.
#   "model.final_relu=false": the remedy for its collapse) and PAPER_RUN (its directory under OUT and its label in
#   the plot; default paper_cifar10_aug), EXTRA_OVERRIDES (appended to every run's, e.g. the time-budgeted
#   recipe: "schedule.by_time=true trainer.max_time=3420 trainer.epochs=200").
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${CIFAR10_JPEG:-$HOME/.cache/nin/cifar10-jpeg}
OUT=${OUT:-outputs/time_to_accuracy/$(date +%Y-%m-%d_%H-%M-%S)}
FIG_DIR=${FIG_DIR:-docs/benchmarks/hosts/$(.venv/bin/python scripts/host_table.py --slug)}
BUDGET_S=${BUDGET_S:-3600}
PAPER_RUN=${PAPER_RUN:-paper_cifar10_aug}
PY=.venv/bin/python
NAME=time_to_accuracy_$(echo "${RUNS:-fast_cifar10 paper}" | tr ' ' '+')
# Freed memory stays in glibc's heap: no page faults on every step's large activations (BENCHMARKS.md,
# "Training throughput"). `nin bench` does the same in-process.
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647}

RUNS=${RUNS:-fast_cifar10 paper}
FAST=(experiment=fast_cifar10 "dataset.root=$DATA")
FAST92=(experiment=fast_cifar10_92 "dataset.root=$DATA")
PAPER=(experiment=paper_cifar10_aug dataset=imagefolder "dataset.root=$DATA" ${PAPER_OVERRIDES:-})

mkdir -p "$OUT" "$FIG_DIR"
DIRS=()
for run in $RUNS; do
    case $run in
        fast_cifar10) ARGS=("${FAST[@]}"); DIR=fast_cifar10; TTA=() ;;
        fast_cifar10_92) ARGS=("${FAST92[@]}"); DIR=fast_cifar10_92; TTA=(--tta) ;;
        paper) ARGS=("${PAPER[@]}"); DIR=$PAPER_RUN; TTA=() ;;
        *) echo "RUNS: unknown run '$run' (fast_cifar10 | fast_cifar10_92 | paper)" >&2; exit 2 ;;
    esac
    ARGS+=(${EXTRA_OVERRIDES:-})
    # One-time dataset work outside the timed run, like a download: decode the JPEGs, fit the preprocessing (cached)
    .venv/bin/nin data "${ARGS[@]}" > /dev/null
    $PY scripts/time_to_accuracy.py "$OUT/$DIR" --budget-s "$BUDGET_S" "${TTA[@]}" -- "${ARGS[@]}"
    DIRS+=("$OUT/$DIR")
done
$PY scripts/plot_time_to_accuracy.py "${DIRS[@]}" --budget-min "$((BUDGET_S / 60))" --target "${TARGET:-85}" \
    --png "$FIG_DIR/$NAME.png" --markdown "$FIG_DIR/$NAME.md"
echo "curves: $OUT/*/curve.jsonl; plot: $FIG_DIR/$NAME.png; table: $FIG_DIR/$NAME.md"
