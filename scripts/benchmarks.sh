#!/usr/bin/env bash
# `make bench`: regenerates the figures of BENCHMARKS.md's "Machine", "Training throughput" and "Time to accuracy"
# sections on this host, and no others (the loader, memory, GPU check and paper-fidelity sections name their own
# commands).
# Run it on a quiet machine (nothing else running; `uptime` load ≈ 0): throughput ~20 min, then the two 60-minute
# time-to-accuracy runs (SKIP_TTA=1 leaves those out). Raw JSON and logs go to OUT (default outputs/benchmarks),
# the tables and the plot BENCHMARKS.md shows to FIG_DIR (default docs/benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/benchmarks}
FIG_DIR=${FIG_DIR:-docs/benchmarks}
NIN=.venv/bin/nin
PY=.venv/bin/python
mkdir -p "$OUT" "$FIG_DIR"

# --- Machine -----------------------------------------------------------------------------------------------
{
  echo "date: $(date +%Y-%m-%d)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
  lscpu | grep -E '^(Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)|L2 cache|L3 cache)' | tr -s ' '
  echo "avx512 / bf16 / amx flags: $(grep -m1 -o -E 'avx512[a-z_0-9]*|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | xargs)"
  $PY - <<'PY'
import time, torch
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, kernels {torch.backends.cpu.get_cpu_capability()}, "
      f"oneDNN native bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
for dtype in (torch.float32, torch.bfloat16):  # bf16 without native support is emulated: ~100x below fp32
    a = torch.randn(1024, 1024, dtype=dtype); a @ a
    t = time.perf_counter(); a @ a; dt = time.perf_counter() - t
    print(f"1024² matmul {dtype}: {2 * 1024**3 / dt / 1e9:.1f} GFLOP/s")
PY
  echo "load: $(uptime)"
} | tee "$OUT/machine.txt"

# --- Training throughput: one `nin bench` per configuration, JSON kept --------------------------------------
bench() {
  local name=$1; shift
  echo "+ nin bench $* --json > $OUT/$name.json"
  $NIN bench "$@" --json > "$OUT/$name.json"
}
bench paper_aug experiment=paper_cifar10_aug --rounds 5                      # the headline: paper NIN, batch 128
bench paper_aug_nchw experiment=paper_cifar10_aug trainer.channels_last=false
bench paper_aug_default_malloc experiment=paper_cifar10_aug --no-tune-malloc
bench paper_aug_1thread experiment=paper_cifar10_aug trainer.num_threads=1
bench paper_noaug experiment=paper_cifar10                                   # no augmentation on either side
bench fast experiment=fast_cifar10                                           # the time-to-accuracy model
OMP_WAIT_POLICY=ACTIVE bench paper_aug_omp_active experiment=paper_cifar10_aug  # OpenMP threads spin, never sleep
BF16=()
if [ "$($PY -c 'import torch; from nin_cli.bench import bf16_supported; print(bf16_supported(torch.device("cpu")))')" = True ]; then
  bench paper_aug_bf16 experiment=paper_cifar10_aug trainer.precision=bf16  # emulated, ~100x slower, elsewhere
  BF16=("$OUT"/paper_aug_bf16.json)
fi
$PY scripts/bench_table.py "$OUT"/paper_aug.json "$OUT"/paper_aug_nchw.json "$OUT"/paper_aug_default_malloc.json \
    "$OUT"/paper_aug_1thread.json "$OUT"/paper_aug_omp_active.json "$OUT"/paper_noaug.json "$OUT"/fast.json \
    "${BF16[@]}" | tee "$FIG_DIR/throughput.md"

# --- Where the time goes --------------------------------------------------------------------------------------
echo "+ nin bench experiment=paper_cifar10_aug --profile --rounds 1 --no-conventional"
$NIN bench experiment=paper_cifar10_aug --profile --rounds 1 --no-conventional > "$FIG_DIR/profile_paper_aug.txt"
$NIN bench experiment=fast_cifar10 --profile --rounds 1 --no-conventional > "$FIG_DIR/profile_fast.txt"
for layout in true false; do  # which oneDNN implementation runs each conv (and the reorders around it)
  echo "+ ONEDNN_VERBOSE=1 nin bench experiment=paper_cifar10_aug trainer.channels_last=$layout --steps 1 --rounds 1"
  ONEDNN_VERBOSE=1 $NIN bench experiment=paper_cifar10_aug "trainer.channels_last=$layout" --steps 1 --rounds 1 \
      --no-conventional --json 2>&1 | grep 'primitive,exec' | cut -d, -f6-8 | sort | uniq -c \
      > "$FIG_DIR/onednn_channels_last_$layout.txt"
done
$PY scripts/profile_nin_vs_bare.py experiment=fast_cifar10 > "$FIG_DIR/profile_nin_vs_bare_fast.md"  # runner vs noise
$PY scripts/dropout_cost.py | tee "$FIG_DIR/dropout_cost.md"  # bernoulli_ masks against torch.rand masks
$PY scripts/memory_format_pair.py | tee "$FIG_DIR/memory_format_pair.md"  # CL vs NCHW, alternated in one process
for threads in 1 2; do  # every conv alone, NCHW against channels_last; 3-channel conv1 against zero-padded inputs
  $PY scripts/conv_layers.py experiment=paper_cifar10_aug --threads "$threads" --clock wall --batch 128 \
      | tee "$FIG_DIR/conv_layers_${threads}thread.md"
done

# --- Time to accuracy ---------------------------------------------------------------------------------------
if [ -z "${SKIP_TTA:-}" ]; then
  FIG_DIR=$FIG_DIR scripts/time_to_accuracy.sh
fi
