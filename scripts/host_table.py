#!/usr/bin/env python3
"""One table per host kind from `scripts/host_table.sh`'s JSON: training img/s in fp32 and bf16, the peak, the share.

    python scripts/host_table.py docs/benchmarks/hosts     # the markdown, every host under it
    python scripts/host_table.py --slug                    # this host's directory name
"""

from __future__ import annotations

import json
import platform
import re
import sys
from pathlib import Path

MODELS = {"paper_cifar10": "paper NIN (CIFAR-10, batch 128)", "fast_cifar10_92": "fast_cifar10_92"}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return f"{platform.machine()} CPU"  # no "model name" line (ARM): at least the architecture


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text()
    found = sorted(set(re.findall(r"\b(avx512f|avx512_bf16|amx_bf16|avx2)\b", text)))
    return ", ".join(found) or "none of avx2 / avx512f / avx512_bf16 / amx_bf16"


def slug() -> str:
    # The CPU model names the host kind (Zen 3 / Zen 4 EPYC, Xeon): one directory per kind.
    return re.sub(r"[^a-z0-9]+", "-", cpu_model().lower()).strip("-")


def host_table(directory: Path) -> list[str]:
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}
    if not runs:
        return []
    first = next(iter(runs.values()))
    machine = directory / "machine.txt"
    lines = [f"### {first['device_name']} ({first['threads']} threads), torch {first['torch']}, {first['date']}", ""]
    if machine.exists():
        lines += [machine.read_text().strip(), ""]
    lines += ["| model | precision | train img/s | GFLOP/s | peak GFLOP/s (that precision) | share of the peak | "
              "bf16 / fp32 |", "|---|---|---:|---:|---:|---:|---:|"]
    for key, label in MODELS.items():
        fp32 = runs.get(f"{key}_fp32")
        for precision in ("fp32", "bf16"):
            r = runs.get(f"{key}_{precision}")
            if r is None:
                continue
            peak = r["peak_bf16_gflops"] if precision == "bf16" else r["peak_fp32_gflops"]
            speedup = (f"{r['train_images_per_s'] / fp32['train_images_per_s']:.2f}×"
                       if precision == "bf16" and fp32 else "—")
            lines.append(f"| {label} | {precision} | {r['train_images_per_s']:,.1f} | {r['train_gflops']:,.1f} | "
                         f"{peak:,.1f} | {r['peak_share']:.1%} | {speedup} |")
    return lines + [""]


def main(root: Path) -> str:
    out = ["# Training throughput per host kind", "",
           "Made by `bash scripts/host_table.sh` on each host (quiet: load before/after in each folder); medians of "
           "`nin bench`'s interleaved rounds, synthetic images of the configured shape. The share divides nin's "
           "training GFLOP/s by the matmul peak of the same precision measured in the same rounds.", ""]
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        out += host_table(directory)
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1:] == ["--slug"]:
        print(slug())
    elif len(sys.argv) == 2:
        print(main(Path(sys.argv[1])))
    else:
        sys.exit(__doc__)
