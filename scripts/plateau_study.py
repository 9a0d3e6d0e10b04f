"""The MNIST plateau, measured: the unmodified paper_mnist recipe (no warm-up, the absorbing-state step guard only,
no stall guard) on the official files, one `nin train` per seed, for up to --epochs epochs. A seed that has left the
plateau (an epoch's training loss below --exit-loss) runs --after more epochs to show it stays alive, then is stopped
with SIGTERM (it saves last.pt and exits 143). Seeds run --parallel at a time, one thread each.

    python scripts/plateau_study.py --seeds 0 1 2 --out docs/plateau_study   # writes plateau.md, plateau.json
    python scripts/plateau_study.py --report RUN_DIR... --out DIR            # the table of runs made before

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


def report(seed: int, rc: int, out: Path, exit_loss: float, wall: float, run_dir: Path | None = None) -> dict:
    run_dir = run_dir or out / f"seed{seed}"
    rows = epochs_of(run_dir)
    steps = step_losses(run_dir)
    left_epoch = next((r["epoch"] for r in rows if (r.get("train_loss") or 9) < exit_loss), None)
    left_step = next((s for s, v in steps if v < exit_loss), None)
    log = run_dir.parent / f"{run_dir.name}.out"
    text = log.read_text(errors="replace") if log.is_file() else (run_dir / "train.log").read_text(errors="replace")
    collapse = next((line for line in text.splitlines() if "collapsed at step" in line), None)
    return {"seed": seed, "run_dir": str(run_dir), "exit_code": rc, "epochs_run": len(rows),
            "left_plateau_epoch": left_epoch, "left_plateau_step": left_step,
            "train_loss_per_epoch": [round(r["train_loss"], 4) for r in rows],
            "last_val_error": rows[-1]["val_error"] if rows else None, "collapse": collapse, "wall_s": round(wall)}


def seed_of(run: Path) -> int:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())["trainer"]["seed"]


def exit_code_of(run: Path) -> int:
    """From what the run left: finished (summary.json) 0, its last line's exit, else 143 (stopped by SIGTERM)."""
    log = run.parent / f"{run.name}.out"
    text = log.read_text(errors="replace") if log.is_file() else ""
    if (run / "summary.json").is_file():
        return 0
    return 5 if "collapsed at step" in text else 143


def write(results: list[dict], out: Path, args) -> None:
    record = {"args": vars(args), "seeds": results}
    (out / "plateau.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    lines = [f"| seed | left the plateau (train loss < {args.exit_loss:g}): epoch / first logged step | train loss "
             "per epoch | val error at the end | outcome | wall s |", "|---:|---|---|---:|---|---:|"]
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
    parser.add_argument("--report", type=Path, nargs="+", help="only report these finished or stopped run dirs")
    parser.add_argument("overrides", nargs="*", help="extra nin train overrides")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report:
        write([report(seed_of(run), exit_code_of(run), args.out, args.exit_loss, 0, run) for run in args.report],
              args.out, args)
        return
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
