#!/usr/bin/env python3
"""The paper NIN's nin training step in channels_last and in NCHW, both built in one process and timed in
alternation (the order swapped every pair), each with the matmul peak measured after it: a drift-robust pairing
for a host whose speed moves within minutes.

    .venv/bin/python scripts/memory_format_pair.py [--pairs 8] [OVERRIDES...]
"""

from __future__ import annotations

import argparse

import torch

from nin_cli.bench import BenchOptions, bench_config, build_pipelines, matmul_peaks, time_nin_train
from nin_cli.config import load_config
from nin_cli.train import tune_malloc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("overrides", nargs="*", default=["experiment=paper_cifar10_aug"])
    args = parser.parse_args()
    tune_malloc()
    cpu, opts = torch.device("cpu"), BenchOptions(conventional=False)
    build = lambda extra: build_pipelines(bench_config(load_config([*args.overrides, *extra]), args.steps),  # noqa: E731
                                          opts, cpu)
    cl, nchw = build(["trainer.channels_last=true"]), build(["trainer.channels_last=false"])
    images = args.steps * cl.cfg.trainer.batch_size
    time_nin_train(cl), time_nin_train(nchw)  # warm-up
    print("| pair | CL img/s | NCHW img/s | CL / NCHW | mm peak GFLOP/s |\n|---:|---:|---:|---:|---:|")
    for i in range(args.pairs):
        order = (cl, nchw) if i % 2 == 0 else (nchw, cl)
        speed = {id(p): images / time_nin_train(p) for p in order}
        peak = matmul_peaks(cpu, torch.float32, 2048)["mm"]
        a, b = speed[id(cl)], speed[id(nchw)]
        print(f"| {i + 1} | {a:.1f} | {b:.1f} | {a / b:.3f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
