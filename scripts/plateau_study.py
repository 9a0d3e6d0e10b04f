"""The MNIST plateau, measured: the unmodified paper_mnist recipe (no warm-up, the absorbing-state step guard only,
no stall guard) on the official files, one `nin train` per seed, for up to --epochs epochs. A seed that has left the
plateau (an epoch's training loss below --exit-loss) runs --after more epochs to show it stays alive, then is stopped
with SIGTERM (it saves last.pt and exits 143). Seeds run --parallel at a time, one thread each.

    python scripts/plateau_study.py --seeds 0 1 2 --out docs/plateau_study   # writes plateau.md, plateau.json

Per seed it reports: the epoch and the first logged step whose training loss is below --exit-loss, the training loss
after each epoch, the validation error at the end, and any collapse (exit 5) with its step.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def step_losses(run_dir: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("step/loss")] if "step/loss" in events.Tags()["scalars"] else []


def epochs_of(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def start(seed: int, args, out: Path) -> subprocess.Popen:
    run_dir = out / f"seed{seed}"
    cmd = [sys.executable, "-m", "nin_cli", "train", "experiment=paper_mnist", f"trainer.epochs={args.epochs}",
           f"trainer.seed={seed}", f"dataset.root={args.root}", "trainer.progress=plain", f"hydra.run.dir={run_dir}",
           *args.overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (out / f"seed{seed}.out").open("w")
    print(" ".join(cmd), flush=True)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def watch(procs: dict[int, subprocess.Popen], args, out: Path) -> None:
    """SIGTERM a seed --after epochs past its plateau exit; wait for all."""
    stopped = set()
    while any(p.poll() is None for p in procs.values()):
        for seed, proc in procs.items():
            rows = epochs_of(out / f"seed{seed}")
            left = [r["epoch"] for r in rows if (r.get("train_loss") or 9) < args.exit_loss]
            if proc.poll() is None and seed not in stopped and left and rows[-1]["epoch"] >= left[0] + args.after:
                proc.send_signal(signal.SIGTERM)
                stopped.add(seed)
        time.sleep(5)


def report(seed: int, rc: int, out: Path, exit_loss: float, wall: float) -> dict:
    run_dir = out / f"seed{seed}"
    rows = epochs_of(run_dir)
    steps = step_losses(run_dir)
    left_epoch = next((r["epoch"] for r in rows if (r.get("train_loss") or 9) < exit_loss), None)
    left_step = next((s for s, v in steps if v < exit_loss), None)
    text = (out / f"seed{seed}.out").read_text(errors="replace")
    collapse = next((line for line in text.splitlines() if "collapsed at step" in line), None)
    return {"seed": seed, "exit_code": rc, "epochs_run": len(rows), "left_plateau_epoch": left_epoch,
            "left_plateau_step": left_step, "train_loss_per_epoch": [round(r["train_loss"], 4) for r in rows],
            "last_val_error": rows[-1]["val_error"] if rows else None, "collapse": collapse, "wall_s": round(wall)}


def write(results: list[dict], out: Path, args) -> None:
    (out / "plateau.json").write_text(json.dumps({"args": vars(args), "seeds": results}, indent=2) + "\n")
    lines = ["| seed | left the plateau (train loss < %g): epoch / first logged step | train loss per epoch | "
             "val error at the end | outcome | wall s |" % args.exit_loss, "|---:|---|---|---:|---|---:|"]
    for r in results:
        left = f"{r['left_plateau_epoch']} / {r['left_plateau_step']}" if r["left_plateau_epoch"] else "not by the end"
        outcome = r["collapse"] or {0: "finished", 143: "stopped after the exit (SIGTERM)"}.get(r["exit_code"],
                                                                                           f"exit {r['exit_code']}")
        losses = ", ".join(f"{v:.3f}" for v in r["train_loss_per_epoch"])
        lines.append(f"| {r['seed']} | {left} | {losses} | {r['last_val_error']} | {outcome} | {r['wall_s']} |")
    (out / "plateau.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--after", type=int, default=2, help="epochs to run past the plateau exit")
    parser.add_argument("--exit-loss", type=float, default=2.0)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--root", default="~/.cache/nin/data")
    parser.add_argument("--out", type=Path, default=Path("docs/plateau_study"))
    parser.add_argument("overrides", nargs="*", help="extra nin train overrides")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results, pending = [], list(args.seeds)
    while pending:
        batch, pending = pending[:args.parallel], pending[args.parallel:]
        began = time.time()
        procs = {seed: start(seed, args, args.out) for seed in batch}
        watch(procs, args, args.out)
        results += [report(seed, p.returncode, args.out, args.exit_loss, time.time() - began)
                    for seed, p in procs.items()]
        write(results, args.out, args)


if __name__ == "__main__":
    main()
