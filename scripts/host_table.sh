#!/usr/bin/env bash
# BENCHMARKS.md's per-host table, one command: `bash scripts/host_table.sh` (or `make host-table`) on a quiet
# machine (`uptime` load ≈ 0; ~10 minutes). It benches the paper NIN (batch 128) and `fast_cifar10_92` in fp32 and,
# where the CPU has native bf16 (AVX512-BF16 / AMX), in bf16, keeps the JSON under docs/benchmarks/hosts/<host>/ and
# rebuilds docs/benchmarks/hosts.md from every host's JSON committed there (one table per host kind).
set -euo pipefail
cd "$(dirname "$0")/.."
NIN=${NIN:-.venv/bin/nin}
PY=${PY:-.venv/bin/python}
HOST=$($PY scripts/host_table.py --slug)
DIR=docs/benchmarks/hosts/$HOST
mkdir -p "$DIR"
{
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; flags: $(grep -m1 -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | xargs)"
  echo "load before: $(uptime | sed 's/.*load average/load average/')"
} > "$DIR/machine.txt"
PRECISIONS=(fp32)
if [ "$($PY -c 'import torch; from nin_cli.bench import bf16_supported; print(bf16_supported(torch.device("cpu")))')" = True ]; then
  PRECISIONS+=(bf16)
fi
for experiment in paper_cifar10 fast_cifar10_92; do
  for precision in "${PRECISIONS[@]}"; do
    echo "+ nin bench experiment=$experiment trainer.precision=$precision --no-conventional --json"
    $NIN bench experiment=$experiment trainer.precision=$precision --no-conventional --json \
      > "$DIR/${experiment}_${precision}.json"
  done
done
echo "load after: $(uptime | sed 's/.*load average/load average/')" >> "$DIR/machine.txt"
$PY scripts/host_table.py docs/benchmarks/hosts | tee docs/benchmarks/hosts.md
