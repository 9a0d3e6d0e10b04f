#!/usr/bin/env bash
# What trainer.ema_decay costs per training step (BENCHMARKS.md, "EMA"): `nin bench` of a preset without and with
# the moving average, alternated PAIRS times (default 2) so both see the same machine; a quiet machine.
#   scripts/ema_cost.sh [PRESET...]            (default: paper_cifar10_aug fast_cifar10)
# Prints one JSON object per preset: training images/s of each run, the medians and the cost per step in percent.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${PAIRS:-2}
OUT=$(mktemp -d)
PRESETS=("$@")
[ ${#PRESETS[@]} -gt 0 ] || PRESETS=(paper_cifar10_aug fast_cifar10)
for preset in "${PRESETS[@]}"; do
    for i in $(seq "$PAIRS"); do
        .venv/bin/nin bench "experiment=$preset" --json --no-conventional > "$OUT/$preset-off-$i.json"
        .venv/bin/nin bench "experiment=$preset" trainer.ema_decay=0.999 --json --no-conventional \
            > "$OUT/$preset-on-$i.json"
    done
    .venv/bin/python - "$OUT" "$preset" <<'PY'
import json, statistics, sys
from pathlib import Path
out, preset = Path(sys.argv[1]), sys.argv[2]
speed = {arm: [json.loads(p.read_text())["train_images_per_s"] for p in sorted(out.glob(f"{preset}-{arm}-*.json"))]
         for arm in ("off", "on")}
median = {arm: statistics.median(v) for arm, v in speed.items()}
first = json.loads(next(out.glob(f"{preset}-on-*.json")).read_text())
print(json.dumps({"experiment": preset, "train_images_per_s": speed, "median": median,
                  "ema_cost_per_step_percent": 100 * (median["off"] / median["on"] - 1),
                  "params": first["params"], "device_name": first["device_name"], "date": first["date"]}))
PY
done
