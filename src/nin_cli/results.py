"""The one reader of run directories: what `nin sweep --summary`, `compare`, `plot`, `table`, `sweep --trials` and
the Python API read back from runs someone (maybe someone else) made. It never writes (runs.py does).

Every file goes through `files.read_json` / `read_yaml` / `read_text`: regular files only (no link, FIFO or
device), bounded in size and nesting, UTF-8, of the expected type; anything else is a DataError (exit 3) naming
the file. Values are read back typed (`files.number`: a metric that is a string, NaN or Infinity is no number).

- `read_config`, `read_summary`, `read_provenance`, `read_metrics`: one run's files.
- `read_outcome`: why a run did not finish (one record, outcome.json: failed | pruned | collapsed | diverged |
  no_data, reason, exit code); run directories of earlier versions (failure.json, pruned.json) still read.
- `job_dirs`: the jobs of a sweep directory. `group_by_seed`, `mean_std`: runs that differ only in the seed and
  their statistics. `flatten`, `run_labels`: configs as dotted keys and short names for runs.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from nin_cli.errors import DataError
from nin_cli.files import number, one_line, read_json, read_text, read_yaml

OUTCOME = "outcome.json"
OLD_OUTCOMES = {"failure.json": "failed", "pruned.json": "pruned"}  # before one record (still read)
STATUSES = ("failed", "pruned", "collapsed", "diverged", "no_data")
SEED_KEY = "trainer.seed"
# Settings that never make two runs different experiments: the seed, and where a run was resumed from.
NOT_SETTINGS = frozenset({SEED_KEY, "resume"})
# summary.json metrics in this order first, then any others alphabetically.
METRIC_ORDER = ("best_val_error", "test_error", "best_test_error", "test_loss", "final_train_loss", "wall_time_s",
                "images_per_s", "epochs", "steps", "best_epoch", "params")
T = TypeVar("T")


# ------------------------------------------------------------------------------------------------ one run


def read_config(run: Path) -> dict:
    """RUN/config.yaml, the resolved config as run (plain data: yaml.safe_load)."""
    try:
        return read_yaml(Path(run) / "config.yaml")
    except FileNotFoundError:
        raise DataError(f"{Path(run) / 'config.yaml'}: missing (a run directory's resolved config)") from None


def read_summary(run: Path) -> dict | None:
    """RUN/summary.json, written when a run finishes; None while it has not."""
    try:
        return read_json(Path(run) / "summary.json")
    except FileNotFoundError:
        return None


def read_provenance(run: Path) -> dict:
    try:
        return read_json(Path(run) / "provenance.json")
    except FileNotFoundError:
        raise DataError(f"{Path(run) / 'provenance.json'}: missing (written when a run starts)") from None


def read_metrics(run: Path, running: bool = False) -> list[dict]:
    """RUN/metrics.jsonl, one dict per finished epoch (each with an integer epoch). `running`: the run may be
    appending right now, so a last line cut short ends the list instead of being an error."""
    path = Path(run) / "metrics.jsonl"
    try:
        text = read_text(path)
    except FileNotFoundError:
        return []
    lines, writing = text.splitlines(), running and not text.endswith("\n")  # a row half-appended right now
    rows = []
    for index, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as err:
            if writing and index == len(lines):
                break
            raise DataError(f"{path}: line {index} is not JSON ({one_line(err, 80)})") from None
        epoch = row.get("epoch") if isinstance(row, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise DataError(f"{path}: line {index} is not an epoch's row (no integer epoch)")
        rows.append(row)
    return rows


@dataclass(frozen=True)
class Outcome:
    status: str  # failed | pruned | collapsed | diverged | no_data
    reason: str  # one line
    exit_code: int | None = None
    epoch: int | None = None  # pruned: the last epoch reported
    best_val_error: float | None = None  # pruned: its best validation error


def read_outcome(run: Path) -> Outcome | None:
    """Why the run stopped short (None: it did not, or it has not yet): outcome.json, else an earlier version's
    failure.json or pruned.json."""
    run = Path(run)
    for name, status in ((OUTCOME, None), *OLD_OUTCOMES.items()):
        try:
            record = read_json(run / name)
        except FileNotFoundError:
            continue
        return _outcome(record, status or record.get("status"), run / name)
    return None


def _outcome(record: dict, status: Any, path: Path) -> Outcome:
    if status not in STATUSES:
        raise DataError(f"{path}: status {one_line(status, 40)!s} is none of {', '.join(STATUSES)}")
    code, epoch = record.get("exit_code"), record.get("epoch")
    reason = record.get("reason", record.get("message", ""))
    if status == "pruned" and not reason:
        reason = f"pruned after epoch {epoch}"
    return Outcome(status, one_line(str(reason), 300),
                   code if isinstance(code, int) and not isinstance(code, bool) and 0 < code < 256 else None,
                   epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
                   number(record.get("best_val_error")))


# ------------------------------------------------------------------------------------------------- many runs


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job directory under a sweep directory (whatever hydra.sweep.subdir made them), in natural order."""
    sweep_dir = Path(sweep_dir)
    found = [p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")]

    def key(path: Path) -> list:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.relative_to(sweep_dir).as_posix())]

    return sorted(found, key=key)


def read_overrides(run: Path) -> list[str]:
    """RUN/.hydra/overrides.yaml as strings ([] when missing)."""
    try:
        items = read_yaml(Path(run) / ".hydra" / "overrides.yaml", expect=None)
    except FileNotFoundError:
        return []
    if items is not None and not isinstance(items, list):
        raise DataError(f"{Path(run) / '.hydra' / 'overrides.yaml'}: not a list of overrides")
    return [str(o) for o in items or []]


def numeric_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a summary.json (not the seed, not booleans), in METRIC_ORDER then alphabetically."""
    found = {k: v for k, v in summary.items() if k != "seed" and number(v) is not None}  # ints stay ints
    return {k: found[k] for k in sorted(found, key=lambda k: (METRIC_ORDER.index(k) if k in METRIC_ORDER
                                                              else len(METRIC_ORDER), k))}


def override_values(overrides: list[str]) -> dict[str, str]:
    """`key=value` overrides as a dict; `+key` and `++key` count as `key`."""
    return {k.lstrip("+"): v for k, _, v in (o.partition("=") for o in overrides)}


def group_by_seed(items: list[T], settings: Callable[[T], Mapping[str, Any]]) -> list[list[T]]:
    """Items whose settings (overrides, or a flattened config) differ only in trainer.seed (or resume), in the order
    each group first appears."""
    groups: dict[str, list[T]] = {}
    for item in items:
        key = json.dumps({k: v for k, v in settings(item).items() if k not in NOT_SETTINGS}, sort_keys=True,
                         default=str)
        groups.setdefault(key, []).append(item)
    return list(groups.values())


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation over seeds (the paper table's): (None, None) for no value, no standard
    deviation from one."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def format_error(mean: float | None, std: float | None) -> str:
    """"mean ± std" as the paper's tables print an error (2 decimals); "—" for none."""
    if mean is None:
        return "—"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys ({"model": {"dropout": 0.5}} -> {"model.dropout": 0.5}); lists stay values.
    An empty mapping stays a value ({} under its key), so it is not lost."""
    if not isinstance(data, dict) or (not data and prefix):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def run_labels(paths: list[Path]) -> list[str]:
    """The shortest path suffix that tells each run from the others (seed0, seed1; or cifar10/seed0, svhn/seed0)."""
    parts = [Path(p).resolve().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = [Path(*p[-depth:]).as_posix() for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{i}:{Path(p).name}" for i, p in enumerate(paths, 1)]  # the same directory given twice
