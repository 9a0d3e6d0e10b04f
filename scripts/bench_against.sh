#!/usr/bin/env bash
# The training step of this checkout against another commit's, interleaved in one session so both see the same
# machine (a quiet one: nothing else running). Issue #16's check that the restructuring cost no throughput:
#   scripts/bench_against.sh 449d2c4 experiment=paper_cifar10_aug
# Each side runs `nin bench OVERRIDES --json --no-conventional` from its own source tree and conf/ (PYTHONPATH into
# a git worktree of COMMIT), with this checkout's venv; PAIRS (default 3) old/new pairs. Prints one JSON object:
# each side's training images/s per run, their medians and new/old.
set -euo pipefail
cd "$(dirname "$0")/.."
COMMIT=${1:?usage: scripts/bench_against.sh COMMIT [OVERRIDES...]}
shift
PAIRS=${PAIRS:-3}
OLD=$(mktemp -d)
git worktree add --detach -q "$OLD" "$COMMIT"
trap 'git worktree remove --force "$OLD"' EXIT
OUT=$(mktemp -d)
for i in $(seq "$PAIRS"); do
    for side in old new; do
        src=$PWD/src
        [ "$side" = old ] && src=$OLD/src
        PYTHONPATH=$src .venv/bin/python -m nin_cli bench "$@" --json --no-conventional > "$OUT/$side-$i.json"
    done
done
.venv/bin/python - "$OUT" "$COMMIT" "$(git rev-parse --short HEAD)" <<'PY'
import json, statistics, sys
from pathlib import Path
out, old, new = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
runs = {side: [json.loads(p.read_text()) for p in sorted(out.glob(f"{side}-*.json"))] for side in ("old", "new")}
speed = {side: [r["train_images_per_s"] for r in rs] for side, rs in runs.items()}
median = {side: statistics.median(v) for side, v in speed.items()}
print(json.dumps({"old_commit": old, "new_commit": new, "train_images_per_s": speed, "median": median,
                  "new_over_old": median["new"] / median["old"], "model": runs["new"][0]["model"],
                  "device_name": runs["new"][0]["device_name"], "date": runs["new"][-1]["date"]}))
PY
