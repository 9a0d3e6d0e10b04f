"""The paper's numbers beside ours: the rows, reading run directories, mean ± std over seeds, verdicts, output.

A `Row` is one test error the paper prints (paper.md, "Results to reproduce") and the preset that reproduces it
(`experiment=KEY`). `collect(paths)` reads run directories — summary.json when finished, outcome.json when the
table runner recorded a collapse or missing data, reproduce.json for the budget and data it used — and
`build_lines` groups them per (row, budget, data) into a `Line` with a verdict. `render_rich`, `to_markdown` and
`to_csv` print the paper's layout. Nothing here imports torch: `nin table` on finished runs is instant.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from nin_cli.errors import DataError
from nin_cli.files import atomic_write, one_line

T1, T2, T3, T4 = "Table 1 · CIFAR-10", "Table 2 · CIFAR-100", "Table 3 · SVHN", "Table 4 · MNIST"
T5, T46, TZ = "Table 5 · GAP vs FC, CIFAR-10", "§4.6 · GAP on a conventional CNN, CIFAR-10", "Model zoo · ImageNet"
TABLES = (T1, T2, T3, T4, T5, T46, TZ)

# A row is reproduced when |ours − paper| <= max(5 % of the paper's error, 0.15 points): about 2 seed-standard
# deviations of a CIFAR-10 NIN, and no tighter than the 0.01-point rounding of tiny errors (MNIST) allows.
TOL_REL, TOL_ABS = 0.05, 0.15


@dataclass(frozen=True)
class Row:
    key: str  # the preset: experiment=KEY
    table: str
    label: str
    paper_error: float  # test error %, as the paper prints it
    data: str  # the dataset it needs: cifar10 | cifar100 | svhn | mnist | imagenet
    shares: str | None = None  # another row with the identical recipe whose runs this row reuses
    recipe_only: bool = False  # listed, never trained by the table runner


ROWS: tuple[Row, ...] = (
    Row("paper_cifar10", T1, "NIN + Dropout", 10.41, "cifar10"),
    Row("paper_cifar10_aug", T1, "NIN + Dropout + Data Augmentation", 8.81, "cifar10"),
    Row("paper_cifar10_nodropout", T1, "NIN without dropout (§4.2)", 14.51, "cifar10"),
    Row("paper_cifar100", T2, "NIN + Dropout (released config)", 35.68, "cifar100"),
    Row("paper_cifar100_same", T2, "NIN + Dropout (paper: same settings as CIFAR-10)", 35.68, "cifar100"),
    Row("paper_svhn", T3, "NIN + Dropout", 2.35, "svhn"),
    Row("paper_mnist", T4, "NIN + Dropout", 0.47, "mnist"),
    Row("gap_vs_fc/fc", T5, "mlpconv + fully connected", 11.59, "cifar10"),
    Row("gap_vs_fc/fc_dropout", T5, "mlpconv + fully connected + dropout", 10.88, "cifar10"),
    Row("gap_vs_fc/gap", T5, "mlpconv + global average pooling", 10.41, "cifar10", shares="paper_cifar10"),
    Row("cnn_gap/fc", T46, "conventional CNN + fully connected", 17.56, "cifar10"),
    Row("cnn_gap/dropout_fc", T46, "conventional CNN + dropout + fully connected", 15.99, "cifar10"),
    Row("cnn_gap/gap", T46, "conventional CNN + global average pooling", 16.46, "cifar10"),
    Row("imagenet_nin", TZ, "NIN, 4 mlpconv layers (top-1 error)", 40.64, "imagenet", recipe_only=True),
)
ROW_BY_KEY = {row.key: row for row in ROWS}

# The competing methods each paper table prints beside NIN, for context (paper.md).
CONTEXT: dict[str, tuple[tuple[str, float], ...]] = {
    T1: (("Stochastic Pooling", 15.13), ("CNN + Spearmint", 14.98), ("Conv. maxout + Dropout", 11.68),
         ("CNN + Spearmint + Data Augmentation", 9.50), ("Conv. maxout + Dropout + Data Augmentation", 9.38),
         ("DropConnect + 12 networks + Data Augmentation", 9.32)),
    T2: (("Learned Pooling", 43.71), ("Stochastic Pooling", 42.51), ("Conv. maxout + Dropout", 38.57),
         ("Tree based priors", 36.85)),
    T3: (("Stochastic Pooling", 2.80), ("Rectifier + Dropout", 2.78),
         ("Rectifier + Dropout + Synthetic Translation", 2.68), ("Conv. maxout + Dropout", 2.47),
         ("Multi-digit Number Recognition", 2.16), ("DropConnect", 1.94)),
    T4: (("2-Layer CNN + 2-Layer NN", 0.53), ("Stochastic Pooling", 0.47), ("Conv. maxout + Dropout", 0.45)),
}

DATA_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "svhn": "SVHN", "mnist": "MNIST",
              "imagenet": "ImageNet"}


def tolerance(paper_error: float) -> float:
    return max(TOL_REL * paper_error, TOL_ABS)


# --------------------------------------------------------------------------------------------- run directories


@dataclass
class RunRecord:
    """What the table needs from one run directory."""

    path: Path
    row: str
    status: str  # done | collapsed | diverged | no_data | incomplete
    test_error: float | None = None
    epochs: int | None = None
    wall_time_s: float | None = None
    device: str = ""
    seed: int | None = None
    budget: str = "custom"  # full | short | smoke from the table runner; custom for a run made by hand
    data: str = ""
    comparable: bool = True
    why_not: str = ""  # why the run cannot be held against the paper's number
    message: str = ""  # the outcome's one line (collapse, missing data)
    restarts: int = 0  # collapses restarted with the next seed (trainer.collapse_restarts)
    command: str = ""


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable JSON file ({one_line(err)})") from None


def _read_config(path: Path) -> dict:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"{path}: not a readable config ({one_line(err)})") from None


def _custom_meta(config: dict) -> dict:
    """Budget and data of a run made by hand (`nin train experiment=...`), from its resolved config."""
    ds, tr = config.get("dataset") or {}, config.get("trainer") or {}
    name = ds.get("name", "?")
    data = f"image folder {ds.get('root')}" if name == "imagefolder" else DATA_NAMES.get(name, name)
    if ds.get("train_on") == "train":
        data += " (train split only)"
    why = "steps per epoch capped" if tr.get("max_steps_per_epoch") else (
        f"{name} data" if name in ("synthetic", "digits") else "")
    return {"budget": "custom", "data": data, "comparable": not why, "why_not": why, "seed": tr.get("seed")}


def read_run(path: Path) -> RunRecord | None:
    """The record of one run directory, or None when it is not a run of one of the paper's rows."""
    config = _read_config(path / "config.yaml")
    summary = _read_json(path / "summary.json")
    meta = _read_json(path / "reproduce.json") or _custom_meta(config)
    row = meta.get("row") or (summary or {}).get("experiment") or config.get("experiment") or ""
    if row not in ROW_BY_KEY:
        return None
    record = RunRecord(path, row, "incomplete", seed=meta.get("seed"), budget=meta.get("budget", "custom"),
                       data=meta.get("data", ""), comparable=bool(meta.get("comparable", True)),
                       why_not=meta.get("why_not", ""), command=meta.get("command", ""))
    if summary is not None:
        record.status = "done"
        record.test_error = summary.get("test_error")
        record.epochs = summary.get("epochs")
        record.wall_time_s = summary.get("wall_time_s")
        record.device = str(summary.get("device") or "")
        record.seed = summary.get("seed", record.seed)
        record.restarts = len(summary.get("collapse_restarts") or [])
        return record
    outcome = _read_json(path / "outcome.json")
    if outcome is not None:
        record.status, record.message = outcome.get("status", "incomplete"), outcome.get("message", "")
    return record


def _is_run_dir(path: Path) -> bool:
    return path.name != ".hydra" and any((path / name).is_file() for name in ("config.yaml", "reproduce.json",
                                                                              "summary.json"))


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Run directories given directly, or found anywhere below the given folders."""
    found: dict[Path, None] = {}
    for path in paths:
        if not path.is_dir():
            raise DataError(f"{path}: no such run directory (`nin table --run` or `make reproduce-table` makes runs)")
        if _is_run_dir(path):
            found[path] = None
            continue
        for name in ("reproduce.json", "summary.json", "config.yaml"):
            for hit in sorted(path.rglob(name)):
                if _is_run_dir(hit.parent):
                    found[hit.parent] = None
    return list(found)


def collect(paths: list[Path]) -> list[RunRecord]:
    return [record for path in find_run_dirs(paths) if (record := read_run(path)) is not None]


# ------------------------------------------------------------------------------------------ lines and verdicts


BUDGET_ORDER = ("full", "short", "cpu", "custom", "smoke")


@dataclass
class Line:
    """One row of the paper with the runs of one (budget, data): mean ± std over seeds and a verdict."""

    row: Row
    budget: str = ""
    data: str = ""
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def done(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status == "done" and r.test_error is not None]

    @property
    def errors(self) -> list[float]:
        return [float(r.test_error) for r in self.done]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.errors) if self.errors else None

    @property
    def std(self) -> float | None:  # sample standard deviation over seeds; none from one seed
        return statistics.stdev(self.errors) if len(self.errors) > 1 else None

    @property
    def difference(self) -> float | None:
        return None if self.mean is None else self.mean - self.row.paper_error

    @property
    def comparable(self) -> bool:
        return all(r.comparable for r in self.runs)

    @property
    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.done if r.seed is not None)

    @property
    def epochs(self) -> str:
        values = sorted({r.epochs for r in self.done if r.epochs is not None})
        return "" if not values else str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"

    @property
    def wall_time_s(self) -> float | None:  # all seeds together
        times = [r.wall_time_s for r in self.done if r.wall_time_s is not None]
        return sum(times) if times else None

    @property
    def device(self) -> str:
        return ", ".join(sorted({r.device for r in self.done if r.device}))


def _failures(line: Line) -> str:
    """"2 of 3 seeds collapsed: <message>" style text for runs that did not finish."""
    parts = []
    for status, word in (("collapsed", "collapsed to chance"), ("diverged", "diverged"), ("no_data", "no data"),
                         ("incomplete", "unfinished")):
        hits = [r for r in line.runs if r.status == status]
        if hits:
            detail = f": {hits[0].message}" if hits[0].message else ""
            parts.append(f"{len(hits)} of {len(line.runs)} runs {word}{detail}")
    restarted = [r for r in line.runs if r.restarts]
    if restarted:  # nothing hidden: a seed that collapsed and was restarted is counted
        were = "was" if len(restarted) == 1 else "were"
        parts.append(f"{len(restarted)} of {len(line.runs)} seeds collapsed and {were} restarted "
                     f"({sum(r.restarts for r in restarted)} restarts)")
    return "; ".join(parts)


def verdict(line: Line) -> tuple[str, str]:
    """(text, rich style) judging the line against the paper within `tolerance`."""
    if not line.runs:
        return ("recipe only (not trained by the table)" if line.row.recipe_only else "not run"), "dim"
    failures = _failures(line)
    if line.mean is None:
        return failures, "yellow" if all(r.status in ("no_data", "incomplete") for r in line.runs) else "red"
    suffix = f" [{failures}]" if failures else ""
    if not line.comparable:
        why = next((r.why_not for r in line.runs if r.why_not), "")
        return f"not comparable{f' ({why})' if why else ''}{suffix}", "dim"
    tol, diff = tolerance(line.row.paper_error), line.difference or 0.0
    budget = f" at the {line.budget} budget" if line.budget in ("short", "cpu") else ""
    if abs(diff) <= tol:
        return f"reproduced: within ±{tol:.2f}{budget}{suffix}", "green"
    side = "worse" if diff > 0 else "better"
    return f"not reproduced: {side} by {abs(diff):.2f} (tolerance ±{tol:.2f}){budget}{suffix}", "red"


def build_lines(records: list[RunRecord], rows: tuple[Row, ...] = ROWS) -> list[Line]:
    """Every row of the paper, once per (budget, data) it has runs for; once, empty, when it has none."""
    groups: dict[tuple[str, str, str], list[RunRecord]] = {}
    for record in records:
        groups.setdefault((record.row, record.budget, record.data), []).append(record)
    lines = []
    for row in rows:
        sources = {row.key, row.shares} - {None}
        merged: dict[tuple[str, str], list[RunRecord]] = {}
        for (key, budget, data), runs in groups.items():
            if key in sources:
                merged.setdefault((budget, data), []).extend(runs)
        if not merged:
            lines.append(Line(row))
        order = sorted(merged, key=lambda bd: (BUDGET_ORDER.index(bd[0]) if bd[0] in BUDGET_ORDER else 9, bd[1]))
        lines += [Line(row, budget, data, sorted(merged[(budget, data)], key=lambda r: (r.seed is None, r.seed)))
                  for budget, data in order]
    return lines


# ---------------------------------------------------------------------------------------------------- output


COLUMNS = ("Method", "Paper", "Ours (mean ± std)", "Δ", "Seeds", "Epochs", "Wall time", "Device", "Data",
           "Budget", "Verdict")


def format_error(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def format_time(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def line_cells(line: Line) -> list[str]:
    """The table cells of one of our lines, in COLUMNS order."""
    diff = line.difference
    seeds = str(len(line.seeds)) if line.seeds else ""
    label = f"{line.row.label} (`{line.row.key}`)"
    return [label, f"{line.row.paper_error:.2f}", format_error(line.mean, line.std),
            "" if diff is None else f"{diff:+.2f}", seeds, line.epochs, format_time(line.wall_time_s), line.device,
            line.data, line.budget, verdict(line)[0]]


def _sections(lines: list[Line]) -> list[tuple[str, list[tuple[str, float]], list[Line]]]:
    return [(table, list(CONTEXT.get(table, ())), [ln for ln in lines if ln.row.table == table])
            for table in TABLES if any(ln.row.table == table for ln in lines)]


def short_verdict(line: Line) -> str:
    """The verdict in a few words, for the terminal (the full text goes below the table and into the files)."""
    text, _ = verdict(line)
    if line.mean is None:
        return text.split(":")[0] if line.runs else ("recipe only" if line.row.recipe_only else "not run")
    if not line.comparable:
        return "not comparable"
    mark = "✓ within" if text.startswith("reproduced") else "✗ outside"
    return f"{mark} ±{tolerance(line.row.paper_error):.2f}"


TERMINAL_COLUMNS = ("Method", "Paper", "Ours (mean ± std)", "Δ", "Seeds", "Epochs", "Wall time", "Verdict")


def render_rich(lines: list[Line], console) -> None:
    """The paper's layout: one table per paper table, its competing methods dimmed above our rows; each of our
    rows' data, budget, device and full verdict are listed under its table."""
    from rich.table import Table
    from rich.text import Text

    for title, context, ours in _sections(lines):
        table = Table(title=f"{title} — test error %", title_justify="left")
        for column in TERMINAL_COLUMNS:
            table.add_column(column, justify="right" if column in ("Paper", "Δ", "Seeds", "Epochs") else "left")
        for method, error in context:
            table.add_row(method, f"{error:.2f}", *[""] * (len(TERMINAL_COLUMNS) - 2), style="dim")
        if context:
            table.add_section()
        notes = Text()
        for line in ours:
            cells, (text, style) = line_cells(line), verdict(line)
            method = Text(line.row.label, style="bold")
            method.append(f"\n{line.row.key}", style="dim")
            table.add_row(method, *cells[1:7], Text(short_verdict(line), style=style))
            if line.runs:
                where = " · ".join(x for x in (line.budget, line.device, line.data) if x)
                notes.append(f"  {line.row.key}: {where} — {text}\n", style="dim")
        console.print(table)
        if notes:
            console.print(notes, end="")


def to_markdown(lines: list[Line], header: str = "") -> str:
    out = [header.rstrip() + "\n"] if header else []
    for title, context, ours in _sections(lines):
        out += [f"### {title} (test error %)", "", "| " + " | ".join(COLUMNS) + " |",
                "|" + "|".join("---:" if c in ("Paper", "Δ", "Seeds", "Epochs") else "---" for c in COLUMNS) + "|"]
        out += [f"| {method} *(paper)* | {error:.2f} |" + " |" * (len(COLUMNS) - 2) for method, error in context]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line_cells(line)) + " |" for line in ours]
        out.append("")
    commands = [(line.row.key, line.runs[0].command, line.seeds) for line in lines if line.runs and
                line.runs[0].command]
    if commands:
        out += ["### Commands", "", "One run per seed (trainer.seed=S, its own hydra.run.dir); the first seed's:", ""]
        out += [f"- `{key}` (seeds {', '.join(map(str, seeds)) or '—'}): `{command}`"
                for key, command, seeds in commands]
        out.append("")
    return "\n".join(out)


CSV_FIELDS = ("row", "table", "method", "paper_error", "ours_mean", "ours_std", "difference", "seeds", "epochs",
              "wall_time_s", "device", "data", "budget", "tolerance", "verdict")


def to_csv(lines: list[Line]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in line_records(lines):
        writer.writerow(row)
    return buffer.getvalue()


def line_records(lines: list[Line]) -> list[dict]:
    """One flat record per line of the table: table.csv's rows, and `nin table --json`'s."""
    records = []
    for line in lines:
        def num(x: float | None) -> str:
            return "" if x is None else f"{x:.4f}"

        records.append({"row": line.row.key, "table": line.row.table, "method": line.row.label,
                         "paper_error": f"{line.row.paper_error:.2f}", "ours_mean": num(line.mean),
                         "ours_std": num(line.std), "difference": num(line.difference),
                         "seeds": " ".join(map(str, line.seeds)), "epochs": line.epochs,
                         "wall_time_s": "" if line.wall_time_s is None else f"{line.wall_time_s:.1f}",
                         "device": line.device, "data": line.data, "budget": line.budget,
                         "tolerance": f"{tolerance(line.row.paper_error):.2f}", "verdict": verdict(line)[0]})
    return records


def header_text(budgets: list[str]) -> str:
    return (f"Network In Network (Lin et al., ICLR 2014): the paper's test errors beside ours "
            f"(budget: {', '.join(budgets) or 'none run'}).\n\n"
            f"Ours = mean ± sample std over seeds of the final model's test error, trained on train+val (the "
            f"paper's protocol). A row is reproduced when |ours − paper| ≤ max({TOL_REL:.0%} of the paper's "
            f"error, {TOL_ABS} points). Smoke-budget rows and stand-in data are not comparable.\n")


def failed_checks(lines: list[Line]) -> list[str]:
    """`nin table --check`: the rows that were run, are comparable with the paper, and did not reproduce it (or
    whose every run collapsed or diverged). Budget-limited and stand-in-data rows are labelled, not failed."""
    failed = []
    for line in lines:
        if not line.runs or not line.comparable:
            continue
        text, style = verdict(line)
        if style == "red":
            failed.append(f"{line.row.key} ({line.budget}, {line.data}): {text}")
    return failed


def write_outputs(lines: list[Line], out_dir: Path) -> tuple[Path, Path]:
    """results/table.md and results/table.csv, each written whole (temp file + rename)."""

    out_dir.mkdir(parents=True, exist_ok=True)
    budgets = sorted({ln.budget for ln in lines if ln.budget}, key=lambda b: BUDGET_ORDER.index(b)
                     if b in BUDGET_ORDER else 9)
    paths = (out_dir / "table.md", out_dir / "table.csv")
    for path, text in zip(paths, (to_markdown(lines, header_text(budgets)), to_csv(lines)), strict=True):
        atomic_write(path, text)
    return paths


def show_table(paths: list[Path], out_dir: Path, console, budget: str | None = None) -> list[Line]:
    """`nin table`: read the runs under `paths`, print the paper's layout, write table.md and table.csv."""
    from nin_cli.errors import ConfigError

    if budget not in (None, *BUDGET_ORDER):
        raise ConfigError(f"--budget {budget}: must be one of {', '.join(BUDGET_ORDER)}")
    records = [r for r in collect(paths) if budget is None or r.budget == budget]
    lines = build_lines(records)
    render_rich(lines, console)
    md, csv_path = write_outputs(lines, out_dir)
    console.print(f"wrote {md} and {csv_path}", highlight=False)
    return lines
