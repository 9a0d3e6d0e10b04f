#!/usr/bin/env python3
"""GFLOP/s of every conv of a configured NIN, alone, forward and backward, NCHW against channels_last, and of the
first conv with its 3 input channels zero-padded to 4 and 8 (what oneDNN's AVX2 kernels prefer).

    .venv/bin/python scripts/conv_layers.py [OVERRIDES...] [--batch 64] [--threads 1] [--clock process|wall]

`--clock process` (the default) counts CPU seconds of this process: with one thread, a shared machine's other
work does not count. Prints a Markdown table; each figure is the best of `--repeats`.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn


def conv_inputs(overrides: list[str]) -> list[tuple[str, nn.Conv2d, list[int]]]:
    """(paper name, conv, input shape of one image) for every conv of the configured model."""
    from nin_cli.overrides import load_config
    from nin_cli.model import build_model

    cfg = load_config(overrides)
    shape, classes = cfg.dataset.image_shape or [3, 32, 32], cfg.dataset.num_classes or 10
    net = build_model(cfg.model, cfg.head, shape, classes).eval()
    named = [(name, m) for name, m in net.named_layers() if isinstance(m, nn.Conv2d)]
    shapes: dict[int, list[int]] = {}

    def record(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:  # None: the output stays as it is
        shapes[id(mod)] = list(inputs[0].shape[1:])

    hooks = [m.register_forward_hook(record) for _, m in named]
    with torch.no_grad():
        net(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return [(name, m, shapes[id(m)]) for name, m in named]


def measure(conv: nn.Conv2d, shape: list[int], batch: int, channels_last: bool, input_grad: bool, repeats: int,
            clock, useful: float = 1.0) -> tuple[float, float]:
    """(forward, backward) GFLOP/s; backward counts the weight gradient and, when asked, the input gradient.
    `useful`: the share of the FLOPs that count (zero-padded input channels do not)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = conv.to(memory_format=fmt).train()
    x = torch.randn(batch, *shape).contiguous(memory_format=fmt).requires_grad_(input_grad)
    y = conv(x)
    grad = torch.randn_like(y)
    flops = useful * 2 * y.numel() * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
    forward = backward = float("inf")
    for _ in range(repeats + 1):  # the first round creates oneDNN's primitives
        conv.zero_grad(set_to_none=True)
        start = clock()
        y = conv(x)
        mid = clock()
        y.backward(grad)
        end = clock()
        forward, backward = min(forward, mid - start), min(backward, end - mid)
    return flops / forward / 1e9, flops * (2 if input_grad else 1) / backward / 1e9


def peak(clock, repeats: int) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        a @ b
        best = min(best, clock() - start)
    return 2 * 2048**3 / best / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("process", "wall"), default="process")
    parser.add_argument("--repeats", type=int, default=3)
    args, overrides = parser.parse_known_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    print(f"batch {args.batch}, {args.threads} thread(s), {args.clock} clock, torch {torch.__version__}; "
          f"2048² fp32 matmul: {peak(clock, 5):.1f} GFLOP/s\n")
    print("| layer | input | kernel | out | fwd NCHW | fwd CL | bwd NCHW | bwd CL |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    layers = [(name, conv, shape, i > 0, 1.0) for i, (name, conv, shape) in enumerate(conv_inputs(overrides))]
    first_name, first, first_shape, _, _ = layers[0]
    for pad in (4, 8):  # the first conv with zero input channels added; GFLOP/s count the real channels only
        padded = nn.Conv2d(pad, first.out_channels, first.kernel_size, first.stride, first.padding)
        layers.append((f"{first_name}, input zero-padded to {pad} ch (useful GFLOP/s)", padded,
                       [pad, *first_shape[1:]], False, first_shape[0] / pad))
    for name, conv, shape, input_grad, useful in layers:  # the first conv's input needs no gradient
        cells = [measure(conv, shape, args.batch, cl, input_grad, args.repeats, clock, useful) for cl in (False, True)]
        print(f"| {name} | {'×'.join(map(str, shape))} | {conv.kernel_size[0]}×{conv.kernel_size[1]} | "
              f"{conv.out_channels} | {cells[0][0]:.1f} | {cells[1][0]:.1f} | {cells[0][1]:.1f} | {cells[1][1]:.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
