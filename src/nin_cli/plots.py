"""`nin plot RUN_OR_SWEEP...`: learning curves of runs, with a seed band.

`plot_runs(paths, out, x)` reads each run's metrics.jsonl (one line per epoch) and draws three panels — training
loss, validation error, learning rate — against the epoch or against training minutes (each epoch's
`epoch_time_s`, accumulated). A path is a run directory or a sweep directory (then every job in it that has
finished an epoch). Runs whose config.yaml differs only in `trainer.seed` (grouped as the sweep summary groups
jobs) are drawn as one line, the mean over seeds at each epoch, with the mean ± sample std shaded; against
minutes, a group's point for epoch k sits at the seeds' mean time to the end of epoch k. Run directories are
untrusted: config.yaml is read with yaml.safe_load, a malformed file is a DataError naming it (exit 3).

Matplotlib is imported here only, inside `plot_runs`, and used through its object API on an Agg canvas: no
pyplot, no global backend switch, nothing shown. The PNG is written whole (temp file + rename).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nin_cli.errors import ConfigError, DataError
from nin_cli.files import atomic_write, number, one_line
from nin_cli.results import (
    NOT_SETTINGS,
    flatten,
    group_by_seed,
    job_dirs,
    mean_std,
    read_config,
    read_metrics,
    run_labels,
)

X_AXES = ("epoch", "minutes")
PANELS = (("train_loss", "Training loss", "cross-entropy (nats)"),
          ("val_error", "Validation error", "error (%)"),
          ("lr", "Learning rate (end of each epoch)", "learning rate"))
# Line styles cycle with the colours' tens, and differ between neighbours, so lines that coincide (the same
# schedule) stay visible: a dashed line over a solid one shows both.
STYLES = ("-", "--", "-.", ":")
MAX_LABEL_KEYS = 3  # a legend entry names at most this many differing config keys, else the run's directory


@dataclass
class Curve:
    """One run's metrics.jsonl, one value per epoch (NaN where a line lacks it)."""

    path: Path
    config: dict[str, Any]
    epochs: list[int] = field(default_factory=list)
    minutes: list[float] = field(default_factory=list)  # training time to the end of each epoch
    values: dict[str, list[float]] = field(default_factory=dict)


def _number(value: Any) -> float:
    found = number(value)  # NaN, Infinity, strings and booleans are no value: a gap in the line
    return math.nan if found is None else found


def read_curve(run: Path) -> Curve:
    """One run's curve, read through results.py (bounded, typed: a value that is no finite number is NaN)."""
    config = flatten(read_config(run)) if (run / "config.yaml").exists() else {}
    rows = read_metrics(run, running=True)
    if not rows:
        raise DataError(f"{run / 'metrics.jsonl'}: missing or empty (no epoch finished in this run yet)")
    curve = Curve(run, config, values={key: [] for key, _, _ in PANELS})
    elapsed = 0.0
    for row in rows:
        seconds = _number(row.get("epoch_time_s"))
        elapsed += seconds if math.isfinite(seconds) else 0.0
        curve.epochs.append(row["epoch"])
        curve.minutes.append(elapsed / 60)
        for key in curve.values:
            curve.values[key].append(_number(row.get(key)))
    return curve


def expand_runs(paths: list[Path]) -> list[Path]:
    """Run directories (they hold metrics.jsonl), and every job with a metrics.jsonl of a sweep directory."""
    runs: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.is_dir():
            raise DataError(f"{path}: no such run or sweep directory")
        if (path / "metrics.jsonl").exists():
            runs[path] = None
            continue
        jobs = [job for job in job_dirs(path) if (job / "metrics.jsonl").exists()]
        if not jobs:
            raise DataError(f"{path}: no metrics.jsonl there nor in any sweep job below it (no epoch finished yet)")
        runs.update(dict.fromkeys(jobs))
    return list(runs)


@dataclass
class Group:
    curves: list[Curve]
    label: str = ""

    @property
    def seeds(self) -> str:
        """"3 seeds (0, 1, 2)" for a band, "" for a single run."""
        if len(self.curves) < 2:
            return ""
        known = [str(s) for c in self.curves if (s := c.config.get("trainer.seed")) is not None]
        return f"{len(self.curves)} seeds" + (f" ({', '.join(known)})" if len(known) == len(self.curves) else "")


def _labels(groups: list[Group]) -> None:
    """Each group is named by the config values that tell it from the other groups (trainer.seed aside), or by
    its first run's directory when there are none or too many."""

    def shown(value: Any) -> str:
        return json.dumps(value) if isinstance(value, list | dict) else str(value)

    keys = list(dict.fromkeys(k for g in groups for k in g.curves[0].config if k not in NOT_SETTINGS))
    differing = [k for k in keys if len({shown(g.curves[0].config.get(k)) for g in groups}) > 1]
    if len(differing) > MAX_LABEL_KEYS and "experiment" in differing and len(
            {shown(g.curves[0].config.get("experiment")) for g in groups}) == len(groups):
        differing = ["experiment"]
    names = run_labels([g.curves[0].path for g in groups])
    for group, name in zip(groups, names, strict=True):
        if differing and len(differing) <= MAX_LABEL_KEYS and all(g.curves[0].config for g in groups):
            group.label = ", ".join(f"{k}={shown(group.curves[0].config.get(k))}" for k in differing)
        else:
            group.label = name if len(group.curves) == 1 else f"{name} + {len(group.curves) - 1} more"
    if len({g.seeds for g in groups}) > 1:  # else the title says it once for all lines
        for group in groups:
            group.label += f" — mean ± std of {group.seeds}" if group.seeds else ""


def group_curves(curves: list[Curve]) -> list[Group]:
    """Runs whose configs differ only in trainer.seed, together (a run without config.yaml stands alone)."""

    groups = [Group(g) for g in group_by_seed(curves, lambda c: c.config or {"path": str(c.path)})]
    _labels(groups)
    return groups


def band(group: Group, key: str, x: str) -> tuple[list[float], list[float], list[float]]:
    """(x, mean, std) per epoch over the group's runs that reached it; std NaN where fewer than two did. Against
    minutes, x is the mean time to the end of that epoch. Linear in epochs: one pass over each curve."""
    by_epoch: dict[int, list[tuple[float, float]]] = {}
    for c in group.curves:
        for epoch, minutes, value in zip(c.epochs, c.minutes, c.values[key], strict=True):
            by_epoch.setdefault(epoch, []).append((minutes, value))
    xs, means, stds = [], [], []
    for epoch, at in sorted(by_epoch.items()):
        values = [v for _, v in at if math.isfinite(v)]
        mean, std = mean_std(values)
        xs.append(float(epoch) if x == "epoch" else mean_std([m for m, _ in at])[0])
        means.append(math.nan if mean is None else mean)
        stds.append(math.nan if std is None else std)
    return xs, means, stds


def _spans_decades(values: list[float]) -> bool:
    """Log scale for learning rates that are all positive and drop tenfold or more (a constant lr on a log axis
    leaves matplotlib no decade to draw)."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) >= 10 * min(finite)


def _same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(u == v or (math.isnan(u) and math.isnan(v)) for u, v in zip(a, b, strict=True))


def plot_runs(paths: list[Path], out: Path, x: str = "epoch") -> Path:
    """Draw the learning curves of the runs under `paths` into the PNG `out`; returns `out`."""
    if x not in X_AXES:
        raise ConfigError(f"--x {x}: must be one of {', '.join(X_AXES)}")
    curves = [read_curve(run) for run in expand_runs(paths)]
    groups = group_curves(curves)

    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2 + 0.3 * math.ceil(len(groups) / 2)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(PANELS))
    colours = [f"C{i}" for i in range(len(groups))] if len(groups) <= 10 else [
        colormaps["turbo"](i / (len(groups) - 1)) for i in range(len(groups))]
    for ax, panel in zip(axes, PANELS, strict=True):
        draw_panel(ax, panel, groups, colours, curves, x)
    runs = f"{len(curves)} run{'s' if len(curves) > 1 else ''}"
    seeds = {g.seeds for g in groups}
    shaded = ("" if seeds == {""} else f"; each line the mean of {seeds.pop()}, shaded ± std" if len(seeds) == 1
              else "; shaded: mean ± std over seeds")
    fig.suptitle(f"Learning curves of {runs}" + (f" ({len(groups)} lines{shaded})" if len(groups) > 1 else
                                                   f" ({shaded[2:]})" if shaded else ""))
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:  # a group with no training loss still gets its legend entry
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if labels:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(2, len(labels)), frameon=False)

    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda f: fig.savefig(f, format="png"))
    except OSError as err:
        raise DataError(f"{out}: cannot write the plot ({one_line(err)})") from None
    return out


def draw_panel(ax, panel: tuple[str, str, str], groups: list, colours: list, curves: list, x: str) -> None:
    """One metric's panel: a line per group (its seeds' mean, shaded ± std), or one black line when every group's
    is the same (e.g. the lr of runs that share a schedule)."""
    key, title, ylabel = panel
    few = max(len(c.epochs) for c in curves) <= 30  # markers, so a run of one or a few epochs is still visible
    epochs = sorted({e for c in curves for e in c.epochs})
    series = [(i, group, colour, *band(group, key, x)) for i, (group, colour) in
              enumerate(zip(groups, colours, strict=True))]
    series = [s for s in series if any(math.isfinite(m) for m in s[4])]
    same = len(series) > 1 and len(series) == len(groups) and all(
        _same(s[3], series[0][3]) and _same(s[4], series[0][4]) for s in series[1:])
    for i, group, colour, xs, means, stds in series[:1] if same else series:
        ax.plot(xs, means, color="black" if same else colour, linestyle="-" if same else STYLES[i % len(STYLES)],
                marker="o" if few else None, markersize=3, linewidth=1.6, label=None if same else group.label)
        if len(group.curves) > 1 and not same:
            ax.fill_between(xs, [m - s for m, s in zip(means, stds, strict=True)],
                            [m + s for m, s in zip(means, stds, strict=True)], color=colour, alpha=0.2,
                            linewidth=0)
    ax.set_xlabel("epoch" if x == "epoch" else "training time (min, summed epoch times)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.set_title(title + (f"\nthe same for all {len(groups)} lines" if same else ""))
    if x == "epoch":
        ax.xaxis.get_major_locator().set_params(integer=True)
        if epochs[-1] - epochs[0] < 4:  # a few epochs: ticks at them, not at 0.98, 1.00, 1.02
            ax.set_xticks(epochs)
            ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
    if not series:
        ax.text(0.5, 0.5, "no validation split (val_error is null)" if key == "val_error" else
                f"no {key} in metrics.jsonl", ha="center", va="center", transform=ax.transAxes, color="dimgrey")
        ax.set_yticks([])
    elif key == "lr" and _spans_decades([v for c in curves for v in c.values["lr"]]):
        ax.set_yscale("log")
        ax.set_ylabel("learning rate (log scale)")


def default_plot_path(paths: list[Path]) -> Path:
    """`nin plot` without --out: curves.png in the one run or sweep directory given, else in the current one."""
    return Path(paths[0]) / "curves.png" if len(paths) == 1 else Path("curves.png")
