#!/usr/bin/env python3
"""One time-to-accuracy run: `nin train` under a wall-clock budget, each epoch's checkpoint kept, every kept
checkpoint scored on the test split once training has ended (nothing during training looks at test; no point of
the curve is chosen by it).

    .venv/bin/python scripts/time_to_accuracy.py RUN_DIR [--budget-s 3600] [--tta] -- OVERRIDES...

While `nin train ... hydra.run.dir=RUN_DIR` runs, each new checkpoints/last.pt (saved at an epoch's end) is
hard-linked to RUN_DIR/snapshots/NNN.pt: no copy, no I/O inside the timed run. At the budget the run gets SIGTERM,
saves where it is (mid-epoch) and exits 143; that checkpoint is the "after the budget" point. Minutes count from
launching the process (Python start-up, imports and loading the dataset caches included) to each checkpoint's
save. With --tta each snapshot is scored with mirror test-time augmentation (`nin eval --tta`), after the run like
every score. Writes RUN_DIR/curve.jsonl: one row per snapshot {epoch, epoch_step, step, minutes, test_accuracy,
val_error, train_loss, deadline}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def snapshot(last: Path, snapshots: Path, seen: set[tuple[int, int]], start_wall: float, rows: list) -> None:
    """Hard-link last.pt when it is a new file (every save renames a fresh file into place)."""
    try:
        st = last.stat()
    except FileNotFoundError:
        return
    key = (st.st_ino, st.st_mtime_ns)
    if key in seen:
        return
    seen.add(key)
    target = snapshots / f"{len(rows):03d}.pt"
    try:
        os.link(last, target)
    except OSError:
        shutil.copy2(last, target)
    rows.append({"snapshot": str(target), "minutes": (st.st_mtime - start_wall) / 60})


def train_with_budget(run_dir: Path, overrides: list[str], budget_s: float) -> tuple[list[dict], int]:
    snapshots = run_dir / "snapshots"
    snapshots.mkdir(parents=True, exist_ok=True)
    last = run_dir / "checkpoints" / "last.pt"
    command = [sys.executable, "-m", "nin_cli", "train", *overrides, f"hydra.run.dir={run_dir}",
               "trainer.progress=plain"]
    print("+", " ".join(command), flush=True)
    rows: list[dict] = []
    seen: set[tuple[int, int]] = set()
    start_wall, start = time.time(), time.monotonic()
    proc = subprocess.Popen(command)
    signalled = False
    while proc.poll() is None:
        time.sleep(1.0)
        snapshot(last, snapshots, seen, start_wall, rows)
        if not signalled and time.monotonic() - start > budget_s:
            print(f"budget of {budget_s:.0f} s reached: SIGTERM (the run saves and exits 143)", flush=True)
            proc.send_signal(signal.SIGTERM)
            signalled = True
    snapshot(last, snapshots, seen, start_wall, rows)
    if signalled and rows:
        rows[-1]["deadline"] = True
    return rows, proc.returncode


def score(rows: list[dict], run_dir: Path, tta: bool) -> None:
    """Epoch, step and metrics of each snapshot from the checkpoint and metrics.jsonl; test accuracy from
    `nin eval SNAPSHOT --json` (the public evaluation path)."""
    from nin_cli.checkpoint import load_checkpoint

    path = run_dir / "metrics.jsonl"
    metrics = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    by_epoch = {m["epoch"]: m for m in metrics}
    for row in rows:
        state = load_checkpoint(Path(row["snapshot"]))["state"]
        out = Path(row["snapshot"]).with_suffix("")
        command = [sys.executable, "-m", "nin_cli", "eval", row["snapshot"], "--json", "--out", str(out)]
        result = subprocess.run(command + (["--tta"] if tta else []), capture_output=True, text=True, check=True)
        test = json.loads(result.stdout)
        epoch_row = by_epoch.get(state["epoch"], {}) if state["epoch_step"] == 0 else {}
        row |= {"epoch": state["epoch"], "epoch_step": state["epoch_step"], "step": state["step"],
                "test_accuracy": 100.0 - test["top1_error"], "val_error": epoch_row.get("val_error"),
                "train_loss": epoch_row.get("train_loss"), "deadline": row.get("deadline", False), "tta": tta}
        print(f"epoch {row['epoch']:3d} (+{row['epoch_step']} steps)  {row['minutes']:6.1f} min  "
              f"test accuracy {row['test_accuracy']:.2f}%", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--budget-s", type=float, default=3600.0)
    parser.add_argument("--tta", action="store_true", help="score with mirror test-time augmentation")
    parser.add_argument("--score", choices=("all", "last"), default="all",
                        help="score every snapshot (the curve) or only the last (the figure at the budget: minutes "
                             "instead of one `nin eval` per epoch)")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)  # nin train overrides follow --
    args = parser.parse_args(argv[:cut])
    args.overrides = argv[cut + 1:]
    if (args.run_dir / "checkpoints").exists():
        print(f"{args.run_dir} holds a run already: choose a new directory (a resumed run is not a timing)",
              file=sys.stderr)
        return 2
    rows, code = train_with_budget(args.run_dir, args.overrides, args.budget_s)
    if code not in (0, 143) or not rows:
        print(f"nin train exited {code} with {len(rows)} checkpoints", file=sys.stderr)
        return 1
    rows = rows if args.score == "all" else rows[-1:]  # curve.jsonl holds scored rows only (the plot reads them)
    score(rows, args.run_dir, args.tta)
    with open(args.run_dir / "curve.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
