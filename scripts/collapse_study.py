"""Collapse rate of the paper recipe: the authors' (classic) against PyTorch's (inverted) dropout, over seeds.

Each (arm, seed) is one `nin train experiment=paper_cifar10` on a CIFAR-10 image folder (the JPEG copy), for at
most STEPS optimizer steps with the collapse guard on (`trainer.collapse_steps=30`: 30 steps with one output for
every image stop the run with exit 5 and name the step). Writes OUT/collapse_study.json and OUT/collapse_study.md:
arm, seed, "collapsed at step N" or "alive", the training loss at the end.

    python scripts/collapse_study.py --root ~/.cache/nin/cifar10-jpeg --seeds 0 1 2 --steps 400 \
        --out docs/collapse_study [--extra schedule.warmup_epochs=1 --arm-name classic+warmup]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

ARMS = {"classic": ["model.dropout_style=classic"], "inverted": ["model.dropout_style=inverted"]}


def run_one(root: Path, arm: list[str], seed: int, steps: int, run_dir: Path, extra: list[str]) -> dict:
    overrides = ["experiment=paper_cifar10", "dataset=imagefolder", f"dataset.root={root}",
                 "dataset.image_shape=[3,32,32]", "dataset.num_classes=10", *arm, *extra, f"trainer.seed={seed}",
                 "trainer.epochs=1", f"trainer.max_steps_per_epoch={steps}", "trainer.collapse_steps=30",
                 "trainer.log_every=10", "trainer.progress=plain", f"hydra.run.dir={run_dir}"]
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "nin_cli", "train", *overrides], capture_output=True, text=True)
    wall = time.time() - start
    collapsed = re.search(r"collapsed at step (\d+)", proc.stderr)
    row = {"seed": seed, "exit_code": proc.returncode, "wall_s": round(wall, 1),
           "command": "nin train " + " ".join(overrides)}
    if collapsed:
        row.update(outcome="collapsed", step=int(collapsed.group(1)), loss=last_step_loss(run_dir))
    elif proc.returncode == 0:
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        row.update(outcome="alive", step=metrics[-1]["step"], loss=metrics[-1]["train_loss"],
                   val_error=metrics[-1]["val_error"])
    else:
        row.update(outcome=f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else '?'}")
    return row


def last_step_loss(run_dir: Path) -> float | None:
    """The last step/loss scalar TensorBoard holds (a collapsed run writes no epoch row)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    events = acc.Scalars("step/loss") if "step/loss" in acc.Tags().get("scalars", []) else []
    return events[-1].value if events else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="image folder with train/ and test/ class trees")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every arm")
    parser.add_argument("--arm-suffix", default="", help="appended to the arm names in the table")
    parser.add_argument("--out", type=Path, default=Path("docs/collapse_study"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "collapse_study.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else []
    done = {(r["arm"], r["seed"]) for r in results}
    for name in args.arms:
        for seed in args.seeds:
            arm = name + args.arm_suffix
            if (arm, seed) in done:  # measured before: kept (delete OUT/collapse_study.json to measure again)
                continue
            run_dir = Path("outputs") / "collapse_study" / arm / f"seed{seed}"
            row = {"arm": arm, **run_one(args.root.expanduser(), ARMS[name], seed, args.steps, run_dir, args.extra)}
            print(json.dumps(row), flush=True)
            results = [r for r in results if (r["arm"], r["seed"]) != (arm, seed)] + [row]
            results_file.write_text(json.dumps(results, indent=2) + "\n")
    write_table(results, args.out / "collapse_study.md", args.steps)


def write_table(results: list[dict], path: Path, steps: int) -> None:
    lines = [f"| arm | seed | outcome (at most {steps} steps) | training loss at the end | wall s |",
             "|---|---:|---|---:|---:|"]
    for r in sorted(results, key=lambda r: (r["arm"], r["seed"])):
        outcome = (f"collapsed at step {r['step']}" if r["outcome"] == "collapsed" else
                   f"alive at step {r['step']} (val error {r['val_error']:.2f} %)" if r["outcome"] == "alive" else
                   r["outcome"])
        loss = r.get("loss")
        lines.append(f"| {r['arm']} | {r['seed']} | {outcome} | "
                     f"{'' if loss is None or not math.isfinite(loss) else f'{loss:.4f}'} | {r['wall_s']:.0f} |")
    summary = {}
    for r in results:
        summary.setdefault(r["arm"], []).append(r["outcome"] == "collapsed")
    lines += ["", *(f"- {arm}: {sum(c)} of {len(c)} seeds collapsed" for arm, c in sorted(summary.items()))]
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
