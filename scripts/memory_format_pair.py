#!/usr/bin/env python3
"""The paper NIN's nin training step in channels_last and in NCHW, both built in one process and timed in
alternation (the order swapped every pair), with a matmul peak measured after each pair: a pairing that survives
a host whose speed drifts within minutes.

    .venv/bin/python scripts/memory_format_pair.py [--pairs 8] [--steps 4] [OVERRIDES...]
"""

from __future__ import annotations

import argparse

import torch

from nin_cli.bench import BenchOptions, bench_config, build_pipelines, matmul_peaks, time_nin_train
from nin_cli.overrides import load_config
from nin_cli.runtime import tune_malloc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("overrides", nargs="*", default=["experiment=paper_cifar10_aug"])
    args = parser.parse_args()
    tune_malloc()
    cpu, opts = torch.device("cpu"), BenchOptions(conventional=False)

    def pipelines(channels_last: bool):
        cfg = load_config([*args.overrides, f"trainer.channels_last={str(channels_last).lower()}"])
        return build_pipelines(bench_config(cfg, args.steps), opts, cpu)

    formats = {"CL": pipelines(True), "NCHW": pipelines(False)}
    images = args.steps * formats["CL"].cfg.trainer.batch_size
    for p in formats.values():  # warm-up: oneDNN primitives, first-touch memory
        time_nin_train(p)
    print("| pair | CL img/s | NCHW img/s | CL / NCHW | mm peak GFLOP/s |\n|---:|---:|---:|---:|---:|")
    for i in range(args.pairs):
        order = list(formats) if i % 2 == 0 else list(formats)[::-1]
        speed = {name: images / time_nin_train(formats[name]) for name in order}
        peak = matmul_peaks(cpu, torch.float32, 2048)["mm"]
        print(f"| {i + 1} | {speed['CL']:.1f} | {speed['NCHW']:.1f} | {speed['CL'] / speed['NCHW']:.3f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
