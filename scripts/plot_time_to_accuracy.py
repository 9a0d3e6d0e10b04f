#!/usr/bin/env python3
"""Accuracy-vs-minutes plot (PNG, PIL only) and a Markdown table from time-to-accuracy runs' curve.jsonl.

    .venv/bin/python scripts/plot_time_to_accuracy.py RUN_DIR... --png FILE [--markdown FILE] [--target 85]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE, MARGIN = (960, 600), (80, 40, 30, 70)  # left, top, right, bottom
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def load(run_dir: Path) -> list[dict]:
    path = run_dir / "curve.jsonl"
    if not path.exists():
        raise SystemExit(f"{path}: missing (run scripts/time_to_accuracy.py first)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def axes(draw: ImageDraw.ImageDraw, font, x_max: float, y_lo: float, target: float, budget: float):
    """Frame, grid and labels; returns the data → pixel mapping."""
    left, top, right, bottom = MARGIN[0], MARGIN[1], SIZE[0] - MARGIN[2], SIZE[1] - MARGIN[3]

    def to_px(minutes: float, accuracy: float) -> tuple[float, float]:
        return (left + (right - left) * minutes / x_max, bottom - (bottom - top) * (accuracy - y_lo) / (100 - y_lo))

    for y in range(int(y_lo), 101, 10):
        draw.line([to_px(0, y), to_px(x_max, y)], fill=(225, 225, 225))
        draw.text((left - 40, to_px(0, y)[1] - 7), f"{y}%", fill="black", font=font)
    step = 10 if x_max <= 120 else 30
    for x in range(0, int(x_max) + 1, step):
        draw.line([to_px(x, y_lo), to_px(x, 100)], fill=(225, 225, 225))
        draw.text((to_px(x, y_lo)[0] - 8, bottom + 8), str(x), fill="black", font=font)
    draw.line([to_px(0, target), to_px(x_max, target)], fill=(120, 120, 120), width=2)
    draw.text((to_px(0, target)[0] + 6, to_px(0, target)[1] - 16), f"target {target:g}%", fill=(90, 90, 90), font=font)
    draw.line([to_px(budget, y_lo), to_px(budget, 100)], fill=(120, 120, 120), width=2)
    draw.text((to_px(budget, 100)[0] - 70, top + 6), f"{budget:g} min budget", fill=(90, 90, 90), font=font)
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2 - 110, bottom + 30), "wall-clock minutes since launch", fill="black", font=font)
    draw.text((10, top - 30), "test accuracy (%), scored after training", fill="black", font=font)
    return to_px


def plot(curves: dict[str, list[dict]], png: Path, target: float, budget_min: float) -> None:
    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    x_max = max([budget_min * 1.05] + [r["minutes"] for rows in curves.values() for r in rows])
    y_lo = min([50.0] + [10 * (r["test_accuracy"] // 10) for rows in curves.values() for r in rows])
    to_px = axes(draw, font, x_max, y_lo, target, budget_min)
    for i, (name, rows) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = [to_px(r["minutes"], r["test_accuracy"]) for r in rows]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3)
        for x, y in points:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        y = MARGIN[1] + 16 + 18 * i
        draw.line([(MARGIN[0] + 12, y), (MARGIN[0] + 32, y)], fill=colour, width=3)
        draw.text((MARGIN[0] + 38, y - 7), f"{name}: {rows[-1]['test_accuracy']:.2f}% at {rows[-1]['minutes']:.1f} min",
                  fill=colour, font=font)
    png.parent.mkdir(parents=True, exist_ok=True)
    image.save(png)


def markdown(curves: dict[str, list[dict]]) -> str:
    lines = []
    for name, rows in curves.items():
        lines += [f"**{name}**", "", "| epoch | minutes | test accuracy | val error | train loss |",
                  "|---:|---:|---:|---:|---:|"]
        for r in rows:
            end = "budget" if r.get("deadline") else "stopped"  # SIGTERM at the budget, or by hand
            epoch = f"{r['epoch']}" + (f" + {r['epoch_step']} steps ({end})" if r.get("epoch_step") else "")
            val = "—" if r.get("val_error") is None else f"{r['val_error']:.2f} %"
            loss = "—" if r.get("train_loss") is None else f"{r['train_loss']:.4f}"
            lines.append(f"| {epoch} | {r['minutes']:.1f} | {r['test_accuracy']:.2f} % | {val} | {loss} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--png", type=Path, required=True)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--target", type=float, default=85.0)
    parser.add_argument("--budget-min", type=float, default=60.0)
    args = parser.parse_args()
    curves = {d.name: load(d) for d in args.run_dirs}
    plot(curves, args.png, args.target, args.budget_min)
    table = markdown(curves)
    if args.markdown:
        args.markdown.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
