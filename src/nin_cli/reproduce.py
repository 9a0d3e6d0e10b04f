"""The table runner behind `nin table --run` and `make reproduce-table`: every paper row × seeds, resumable.

Protocol. Each preset holds out the paper's validation split (the last 10,000 CIFAR training images, ...): that is
where settings are chosen (`nin train experiment=...`, `nin sweep`). The paper's numbers come from retraining on
train+val with the chosen settings, and the presets already carry the authors' choices, so the runner trains that
final phase only: every run adds `dataset.train_on=train+val` and the table reports the final model's test error
(never a checkpoint picked on images it trained on).

Budgets. full: the presets as they are (paper epochs), 3 seeds — GPU-days. short: the authors' 200/230/260 shape
shrunk to 60 CIFAR epochs (12 SVHN, 30 MNIST), 2 seeds — a few GPU-hours. cpu: the same shape sized for about an
hour per row and seed on a 2-core CPU (28 MNIST epochs, 12 CIFAR, 1 SVHN), 2 seeds (`--seeds 1` runs one slot:
two processes side by side). smoke: one epoch of two 16-image steps on tiny data with mean/std input, 1 seed —
minutes on a CPU, for CI.

Comparability (report.comparability, per row, budget and data): only the official files at the paper's schedule
for the row are held against the paper. full is; short, cpu and smoke are not, except MNIST at cpu (the paper
gives no MNIST schedule, and the cpu budget's is the documented MNIST measurement). Synthetic stand-ins and the
lossy CIFAR-10 JPEG copy never are.

Data. full and short use the official files (a row whose files are missing is recorded as "no data" with the
loader's message, and retried next time); CIFAR-10 rows use the JPEG copy instead when `cifar10_jpeg` points at
one, labelled as such. smoke uses a small symlinked subset of that JPEG copy for CIFAR-10 rows when given, else
synthetic images of the row's shape ("synthetic stand-in"): it never loads a full official set.

Resume. A run directory holding summary.json (finished) or an outcome.json recording a collapse or divergence is
not run again; one holding checkpoints/last.pt continues from it.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from nin_cli.errors import CheckFailed, CollapsedError, ConfigError, DataError, DiskFullError, DivergedError
from nin_cli.report import DATA_NAMES, ROW_BY_KEY, ROWS, Row, comparability, failed_checks, line_records, show_table
from nin_cli.results import read_outcome, read_summary
from nin_cli.runs import clear_outcome, write_json, write_outcome

log = logging.getLogger("nin")


@dataclass(frozen=True)
class Budget:
    seeds: int
    about: str


BUDGETS = {
    "full": Budget(3, "the presets as they are (paper epochs), 3 seeds"),
    "short": Budget(2, "60 CIFAR / 12 SVHN / 30 MNIST epochs, lr ÷10 at 77 % and 88 %, 2 seeds"),
    "cpu": Budget(2, "about one hour per row and seed on a 2-core CPU: 12 CIFAR / 1 SVHN / 28 MNIST epochs, lr ÷10 "
                  "at 77 % and 88 %, 2 seeds; comparable with the paper for MNIST only"),
    "smoke": Budget(1, "1 epoch of 2 steps of 16 images, mean/std input, 1 seed; not comparable"),
}
SHORT_SCHEDULES = {"cifar10": (60, [46, 53]), "cifar100": (60, [46, 53]), "svhn": (12, [9, 11]),
                   "mnist": (30, [23, 27])}  # (epochs, lr ÷10 milestones): 200/230/260 scaled down
CPU_SCHEDULES = {"cifar10": (12, [9, 11]), "cifar100": (12, [9, 11]), "svhn": (1, [1]),
                 "mnist": (28, [22, 25])}  # sized for ~1 hour per row on the 2-core CPU (BENCHMARKS.md)
SMOKE = ["trainer.epochs=1", "trainer.max_steps_per_epoch=2", "trainer.batch_size=16", "trainer.eval_batch_size=100",
         "dataset.preprocessing=mean_std"]  # GCN+ZCA's 3072×3072 eigendecomposition alone takes minutes on a CPU
SHAPES = {"cifar10": ([3, 32, 32], 10), "cifar100": ([3, 32, 32], 100), "svhn": ([3, 32, 32], 10),
          "mnist": ([1, 28, 28], 10), "imagenet": ([3, 224, 224], 1000)}
SMOKE_JPEG_PER_CLASS = (16, 10)  # train, test images per class in the smoke subset of the JPEG copy


@dataclass
class DataPlan:
    overrides: list[str]
    label: str  # what the table prints in its "data" column
    tag: str  # official | cifar10-jpeg | synthetic: part of the run directory's path; only official is comparable


@dataclass
class PlannedRun:
    row: Row
    seed: int
    run_dir: Path
    overrides: list[str]
    meta: dict  # written to RUN/reproduce.json: what `nin table` reads besides summary.json

    @property
    def command(self) -> str:
        return "nin train " + " ".join(shlex.quote(o) for o in self.overrides)


def budget_overrides(row: Row, budget: str) -> list[str]:
    if budget in ("short", "cpu"):
        epochs, milestones = (SHORT_SCHEDULES if budget == "short" else CPU_SCHEDULES)[row.data]
        return ["schedule=milestones", f"schedule.milestones=[{','.join(map(str, milestones))}]",
                f"trainer.epochs={epochs}"]
    return list(SMOKE) if budget == "smoke" else []


def smoke_subset(source: Path, dest: Path, per_class: tuple[int, int] = SMOKE_JPEG_PER_CLASS) -> Path:
    """A train/<class>/ + test/<class>/ tree of symlinks to the first images (sorted names) of each class."""
    source = source.expanduser()
    for split in ("train", "test"):
        if not (source / split).is_dir():
            raise DataError(f"{source}: not an image-folder tree (no {split}/<class>/ folders); point --cifar10-jpeg "
                            "at the folder holding train/ and test/")
    for split, count in zip(("train", "test"), per_class, strict=True):
        for class_dir in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            target = dest / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for image in sorted(p for p in class_dir.iterdir() if p.is_file())[:count]:
                link = target / image.name
                if not link.exists():
                    os.symlink(image.resolve(), link)
    return dest


def data_plan(row: Row, budget: str, cifar10_jpeg: Path | None, runs_root: Path) -> DataPlan:
    """Which images a row trains on at this budget, and how the table labels them."""
    if row.data == "cifar10" and cifar10_jpeg is not None:
        root, label = cifar10_jpeg.expanduser(), "CIFAR-10 JPEG copy (lossy)"
        if budget == "smoke":
            root = smoke_subset(root, runs_root / budget / "data" / "cifar10-jpeg-subset")
            label += f", {SMOKE_JPEG_PER_CLASS[0]} train + {SMOKE_JPEG_PER_CLASS[1]} test per class"
        overrides = ["dataset=imagefolder", f"dataset.root={root}", "dataset.image_shape=[3,32,32]",
                     "dataset.num_classes=10"] + (["dataset.val_size=16"] if budget == "smoke" else [])
        return DataPlan(overrides, label, "cifar10-jpeg")
    if budget == "smoke":
        shape, classes = SHAPES[row.data]
        overrides = ["dataset=synthetic", f"dataset.image_shape=[{','.join(map(str, shape))}]",
                     f"dataset.num_classes={classes}", "dataset.size=96", "dataset.val_size=16"]
        label = f"synthetic stand-in ({DATA_NAMES[row.data]} shape)"
        return DataPlan(overrides, label, "synthetic")
    return DataPlan([], f"{DATA_NAMES[row.data]} (official files)", "official")


def plan(budget: str, keys: list[str] | None, cifar10_jpeg: Path | None, runs_root: Path,
         seeds: list[int] | None = None) -> list[PlannedRun]:
    """Every (row, seed) run of this budget (or only the seed slots `seeds`: one process per slot, side by side);
    rows that share another row's recipe and recipe-only rows are left out (the table reads the shared row's runs)."""
    if budget not in BUDGETS:
        raise ConfigError(f"--budget {budget}: must be one of {', '.join(BUDGETS)}")
    slots = range(BUDGETS[budget].seeds)
    if any(seed not in slots for seed in seeds or []):
        raise ConfigError(f"--seeds: the {budget} budget has seed slots {', '.join(map(str, slots))}")
    unknown = [k for k in keys or [] if k not in ROW_BY_KEY]
    if unknown:
        raise ConfigError(f"--rows: no row {', '.join(unknown)}; rows are {', '.join(ROW_BY_KEY)}")
    wanted = {ROW_BY_KEY[k].shares or k for k in keys} if keys else None
    runs = []
    for row in ROWS:
        if row.shares or row.recipe_only or (wanted is not None and row.key not in wanted):
            continue
        data = data_plan(row, budget, cifar10_jpeg, runs_root)
        comparable, why_not = comparability(row.key, budget, data.tag)  # the rule, in report.py
        for seed in seeds if seeds is not None else slots:
            run_dir = runs_root / budget / data.tag / row.key / f"seed{seed}"
            overrides = [f"experiment={row.key}", *data.overrides, "dataset.train_on=train+val",
                         *budget_overrides(row, budget), f"trainer.seed={seed}", "trainer.collapse_restarts=2",
                         f"hydra.run.dir={run_dir}"]
            meta = {"row": row.key, "budget": budget, "data": data.label, "data_tag": data.tag,
                    "comparable": comparable, "why_not": why_not, "seed": seed, "overrides": overrides}
            runs.append(PlannedRun(row, seed, run_dir, overrides, meta))
    return runs


def finished(run_dir: Path) -> bool:
    """A finished run is never trained again: it has a summary, or it collapsed or diverged (a rerun would only
    resume into the same state). Missing data and unfinished runs are tried again."""

    if read_summary(run_dir) is not None:
        return True
    outcome = read_outcome(run_dir)
    return outcome is not None and outcome.status in ("collapsed", "diverged")


def _train(overrides: list[str]) -> dict:
    """What `nin train OVERRIDES` does, in this process (Hydra run directory, train.log, provenance)."""
    from nin_cli.hydra_app import hydra_run  # training deps: --run only
    from nin_cli.overrides import load_config  # training deps: --run only
    from nin_cli.train import train_run  # torch: --run only

    load_config(overrides)
    return hydra_run(overrides, train_run)


def run_one(run: PlannedRun) -> tuple[str, str]:
    """Train one planned run; returns (status, one line). Missing data, collapse and divergence are recorded in
    RUN/outcome.json for the table instead of stopping the other rows."""

    run.run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run.run_dir / "reproduce.json", {**run.meta, "command": run.command})
    clear_outcome(run.run_dir)
    try:
        summary = _train(run.overrides)
    except DiskFullError:  # every next row would meet the same disk: stop the table here
        raise
    except DataError as err:
        status, message, code = "no_data", str(err), err.exit_code
    except DivergedError as err:
        status, message = ("collapsed" if isinstance(err, CollapsedError) else "diverged"), str(err)
        code = err.exit_code
    else:
        return "done", f"test error {summary['test_error']:.2f}% in {summary['wall_time_s']:.0f} s"
    write_outcome(run.run_dir, status, message, code)
    return status, message


def reproduce(budget: str, keys: list[str] | None, cifar10_jpeg: Path | None, runs_root: Path, console,
              seeds: list[int] | None = None) -> list[Path]:
    """Run every planned run that is not finished yet; returns the run directories of this budget for the table."""
    runs = plan(budget, keys, cifar10_jpeg, runs_root, seeds)
    console.print(f"reproduce-table, budget {budget} ({BUDGETS[budget].about}): {len(runs)} runs under "
                  f"{runs_root / budget}", highlight=False, markup=False)
    for i, run in enumerate(runs, 1):
        where = f"[{i}/{len(runs)}] {run.row.key} seed {run.seed}"
        if finished(run.run_dir):
            console.print(f"{where}: finished before, kept ({run.run_dir})", highlight=False, markup=False)
            continue
        console.print(f"{where}: {run.command}", highlight=False, markup=False, soft_wrap=True)
        status, message = run_one(run)
        console.print(f"{where}: {status}: {message}", highlight=False, markup=False, soft_wrap=True)
    return [run.run_dir for run in runs]


def table_command(run_dirs: list[Path] | None, run: bool, budget: str | None, rows: str | None,
                  seeds: list[int] | None, cifar10_jpeg: Path | None, out: Path, check: bool, as_json: bool) -> None:
    """`nin table`: train what `--run` asks for, then the table (terminal, OUT/table.md, OUT/table.csv), its JSON
    with --json, and the --check gate (exit 6 when a comparable row that was run is not reproduced)."""
    import sys

    from rich.console import Console


    stream = sys.stderr if as_json else sys.stdout
    console = Console(width=None if stream.isatty() else 150, stderr=as_json)  # piped or logged: don't fold at 80
    if run:
        if run_dirs:
            raise ConfigError("--run trains into OUT/runs; give RUN_DIRS without --run")
        run_dirs = reproduce(budget or "smoke", rows.split(",") if rows else None, cifar10_jpeg, out / "runs", console,
                             seeds)
    elif rows or cifar10_jpeg or seeds:
        raise ConfigError("--rows, --seeds and --cifar10-jpeg choose what --run trains: add --run")
    lines = show_table(run_dirs or [p for p in [out / "runs"] if p.is_dir()], out, console, budget)  # none: paper only
    if as_json:
        print(json.dumps({"rows": line_records(lines), "table_md": str(out / "table.md")}))
    failed = failed_checks(lines) if check else []
    if failed:
        raise CheckFailed(f"{len(failed)} row(s) not reproduced: " + "; ".join(failed))
