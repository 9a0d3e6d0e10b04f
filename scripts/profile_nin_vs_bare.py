#!/usr/bin/env python3
"""Self CPU time per op of the nin training step against the bare loop, the pipelines `nin bench` times: one nin
epoch of `--steps` steps, one bare epoch, then both again, each under torch.profiler. Ops sorted by how much the two
pipelines differ: what the runner adds shows as ops only nin runs, noise as the same op moving in both.

    .venv/bin/python scripts/profile_nin_vs_bare.py [OVERRIDES...] [--steps N] [--rows N]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from nin_cli.bench import BenchOptions, bench_config, build_pipelines, time_bare_train, time_nin_train
from nin_cli.overrides import load_config
from nin_cli.runtime import tune_malloc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    tune_malloc()
    cfg = bench_config(load_config(args.overrides), args.steps)
    pipelines = build_pipelines(cfg, BenchOptions(steps=args.steps, conventional=False), torch.device("cpu"))
    runs = {"nin": time_nin_train, "bare": time_bare_train, "nin again": time_nin_train,
            "bare again": time_bare_train}
    for timer in runs.values():  # warm-up: oneDNN primitives, the heap
        timer(pipelines)
    ms: dict[str, dict[str, float]] = {}
    for name, timer in runs.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            seconds = timer(pipelines)
        ms[name] = {event.key: event.self_cpu_time_total / 1e3 for event in prof.key_averages()}
        print(f"{name}: {seconds:.3f} s for {args.steps} steps")

    def gap(op: str) -> float:
        return abs(sum(ms[n].get(op, 0.0) for n in ("nin", "nin again"))
                   - sum(ms[n].get(op, 0.0) for n in ("bare", "bare again")))

    print(f"\n| op | {' | '.join(runs)} |\n|---|" + "---:|" * len(runs))
    for op in sorted(set().union(*ms.values()), key=gap, reverse=True)[:args.rows]:
        print(f"| {op} | " + " | ".join(f"{ms[n].get(op, 0.0):.1f}" for n in runs) + " |")


if __name__ == "__main__":
    main()
