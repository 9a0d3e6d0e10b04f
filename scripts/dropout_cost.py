#!/usr/bin/env python3
"""Milliseconds (fastest of 10) of one dropout forward + backward on the paper NIN's two dropout inputs (batch 128,
channels_last): `F.dropout` (its mask from `bernoulli_`) against `nin_cli.model.Dropout` (its mask from `torch.rand`).

    .venv/bin/python scripts/dropout_cost.py [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from nin_cli.bench import fastest
from nin_cli.model import Dropout


def millis(fn) -> float:
    return fastest(fn, torch.device("cpu"), repeats=10, clock=time.perf_counter) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ours = Dropout(0.5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| input | F.dropout (bernoulli_) ms | nin Dropout (rand) ms |\n|---|---:|---:|")
    for shape in [(128, 96, 16, 16), (128, 192, 8, 8)]:
        x = torch.randn(*shape).contiguous(memory_format=torch.channels_last).requires_grad_()
        grad = torch.randn_like(x)
        native = millis(lambda: F.dropout(x, 0.5, True).backward(grad))  # noqa: B023
        mine = millis(lambda: ours(x).backward(grad))  # noqa: B023
        print(f"| {'×'.join(map(str, shape))} | {native:.1f} | {mine:.1f} |")


if __name__ == "__main__":
    main()
