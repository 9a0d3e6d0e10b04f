#!/usr/bin/env python3
"""Markdown tables (training, evaluation) from `nin bench --json` outputs, one row per file.

    .venv/bin/python scripts/bench_table.py OUT/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TRAIN = [("nin train img/s", "train_images_per_s", ",.1f"), ("bare img/s", "bare_train_images_per_s", ",.1f"),
         ("conventional img/s", "conventional_train_images_per_s", ",.1f"), ("nin GFLOP/s", "train_gflops", ",.1f"),
         ("fp32 mm peak GFLOP/s", "peak_fp32_gflops", ",.1f"), ("peak_share", "peak_share", ".3f"),
         ("3×3 conv GFLOP/s", "peak_fp32_conv_gflops", ",.1f"), ("share of the faster", "peak_share_strict", ".3f"),
         ("bare_loop_ratio", "bare_loop_ratio", ".3f"), ("conventional_ratio", "conventional_ratio", ".2f"),
         ("page faults / step", "page_faults_per_step", ",.0f"), ("system time", "system_time_share", ".1%")]
EVAL = [("nin eval img/s", "eval_images_per_s", ",.1f"), ("bare img/s", "bare_eval_images_per_s", ",.1f"),
        ("conventional img/s", "conventional_eval_images_per_s", ",.1f"), ("eval GFLOP/s", "eval_gflops", ",.1f"),
        ("eval peak share", "eval_peak_share", ".3f"), ("bare_loop_eval_ratio", "bare_loop_eval_ratio", ".3f"),
        ("conventional_eval_ratio", "conventional_eval_ratio", ".2f")]


def setting(r: dict) -> str:
    parts = [r["model"], f"batch {r['batch_size']}", r["precision"], "CL" if r["channels_last"] else "NCHW",
             f"{r['threads']} thr"]
    return ", ".join(parts + ([] if r["malloc_tuned"] else ["default malloc"]) + (["compiled"] if r["compile"] else []))


def table(rows: list[tuple[str, dict]], columns: list[tuple[str, str, str]]) -> list[str]:
    lines = ["| run | setting | " + " | ".join(c[0] for c in columns) + " |",
             "|---|---|" + "---:|" * len(columns)]
    for name, r in rows:
        cells = ["—" if r.get(key) is None else format(r[key], spec) for _, key, spec in columns]
        lines.append(f"| {name} | {setting(r)} | " + " | ".join(cells) + " |")
    return lines


def main(paths: list[Path]) -> str:
    rows = [(p.stem, json.loads(p.read_text())) for p in paths]
    first = rows[0][1]
    head = (f"{first['device_name']} ({first['device']}), torch {first['torch']}, {first['date']}; medians of "
            f"{len(first['rounds'])} interleaved rounds of {first['steps']} training steps each.")
    return "\n".join([head, "", *table(rows, TRAIN), "", *table(rows, EVAL)])


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(main([Path(p) for p in sys.argv[1:]]))
