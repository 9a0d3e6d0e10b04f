"""`nin compare RUN_A RUN_B [...]`: what differs between run directories.

`compare_runs(paths)` reads each run's config.yaml (flattened to dotted keys), summary.json and provenance.json and
returns one JSON-ready dict: the config keys whose values differ, every numeric metric with its delta from the
first run, and the provenance fields (git commit and dirty flag, package versions, Python, device) that differ.
`render_compare(result, console)` draws it as rich tables. Run directories are untrusted input, read through
results.py (regular files, bounded, plain data: a missing or unreadable file is a DataError naming it, exit 3).
Nothing here imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nin_cli.errors import ConfigError, DataError
from nin_cli.results import flatten, numeric_metrics, read_config, read_provenance, read_summary, run_labels

PROVENANCE_KEYS = ("git_commit", "git_dirty", "versions", "python", "device")


# ------------------------------------------------------------------------------------------------ comparing


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _differing(flats: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Keys whose values are not all equal; a key that a run lacks counts as null there."""
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    out = {}
    for key in keys:
        values = [flat.get(key) for flat in flats]
        if any(json.dumps(v, sort_keys=True, default=str) != json.dumps(values[0], sort_keys=True, default=str)
               for v in values[1:]):
            out[key] = values
    return out


def compare_runs(paths: list[Path]) -> dict:
    """What differs between run directories, relative to the first:

    {"runs": [path, ...], "labels": [short name, ...],
     "config": {dotted key: [value per run]}                  only the keys that differ,
     "metrics": {name: {"values": [...], "deltas": [...]}}     every number in summary.json; delta = run − first
                                                               (0 for the first, null where either is missing),
     "provenance": {field: [value per run]}}                   git_commit, git_dirty, versions.*, python, device:
                                                               only those that differ
    """
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise ConfigError(f"compare needs two or more run directories (got {len(paths)})")
    configs, summaries, provenances = [], [], []
    for path in paths:
        if not path.is_dir():
            raise DataError(f"{path}: no such run directory")
        configs.append(flatten(read_config(path)))
        summary = read_summary(path)
        if summary is None:
            raise DataError(f"{path / 'summary.json'}: missing (written when a run finishes: is it finished?)")
        summaries.append(summary)
        provenances.append(read_provenance(path))

    names = list(numeric_metrics({k: 0 for s in summaries for k, v in s.items() if _numeric(v)}))
    metrics = {}
    for name in names:
        values = [s.get(name) if _numeric(s.get(name)) else None for s in summaries]
        first = values[0]
        deltas = [None if first is None or v is None else v - first for v in values]
        metrics[name] = {"values": values, "deltas": deltas}

    provenance = _differing([flatten({k: p[k] for k in PROVENANCE_KEYS if k in p}) for p in provenances])
    return {"runs": [str(p) for p in paths], "labels": run_labels(paths), "config": _differing(configs),
            "metrics": metrics, "provenance": provenance}


# ------------------------------------------------------------------------------------------------- output


def format_value(value: Any) -> str:
    """A config or provenance value as YAML would show it; numbers compact."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return str(value)


def format_delta(delta: float | None) -> str:
    if delta is None:
        return ""
    if delta == 0:
        return "±0"
    return "+" + format_value(delta) if delta > 0 else "−" + format_value(-delta)


def render_compare(result: dict, console) -> None:
    """Three tables: config differences, metrics with deltas from the first run, provenance differences."""
    from rich.table import Table
    from rich.text import Text

    labels = result["labels"]
    console.print(Text.assemble(("runs: ", "bold"), ", ".join(f"{label} = {run}" for label, run in
                                                              zip(labels, result["runs"], strict=True))))

    def table(title: str, first: str, numbers: bool = False) -> Table:
        t = Table(title=title, title_justify="left")
        t.add_column(first, overflow="fold")
        for i, label in enumerate(labels):
            t.add_column(f"{label} (Δ)" if numbers and i else label, overflow="fold",
                         justify="right" if numbers else "left")
        return t

    if result["config"]:
        t = table(f"config: {len(result['config'])} key(s) differ", "key")
        for key, values in result["config"].items():
            t.add_row(key, *(Text(format_value(v), style=None if i == 0 else "yellow")
                             for i, v in enumerate(values)))
        console.print(t)
    else:
        console.print("config: identical")

    if result["metrics"]:
        t = table("metrics (summary.json), Δ from the first run", "metric", numbers=True)
        for name, m in result["metrics"].items():
            cells = []
            for i, (value, delta) in enumerate(zip(m["values"], m["deltas"], strict=True)):
                text = "—" if value is None else format_value(value)
                if i and delta:
                    text += f" ({format_delta(delta)})"
                cells.append(text)
            t.add_row(name, *cells)
        console.print(t)
    else:
        console.print("metrics: none in summary.json")

    if result["provenance"]:
        t = table("provenance: fields that differ", "field")
        for key, values in result["provenance"].items():
            t.add_row(key, *(format_value(v) for v in values))
        console.print(t)
    else:
        console.print("provenance: same commit, dirty flag, versions, Python and device")
