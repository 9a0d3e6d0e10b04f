"""Images/s of nin's training batches, resident vs streamed (loader alone, no model), on an image folder.

    python scripts/stream_throughput.py ROOT [--shape 3 32 32] [--resize N] [--workers 2] [--batch 128] [--steps 50]

Builds both caches first (once, untimed), then times `data.train_batches` for `--steps` batches of each path.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from nin_cli.config import DatasetConfig
from nin_cli.data import load_data, train_batches


def rate(split, args, translate: int, flip: bool) -> float:
    start, seen = time.perf_counter(), 0
    for images, _ in train_batches(split, args.batch, 0, 0, translate, flip, max_steps=args.steps):
        seen += len(images)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--shape", type=int, nargs=3, default=[3, 32, 32])
    parser.add_argument("--resize", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--modes", nargs="+", default=["never", "always"])
    args = parser.parse_args()
    translate = 0 if args.resize else 4
    for mode in args.modes:
        cfg = DatasetConfig(name="imagefolder", root=args.root, image_shape=args.shape, val_size=0, resize=args.resize,
                            translate=translate, flip=True, stream=mode, workers=args.workers)
        data = load_data(cfg, torch.device("cpu"), constants={"kind": "none"})
        rate(data.train, args, translate, True)  # warm: page cache, worker start
        print(f"stream={mode:6s} {rate(data.train, args, translate, True):8.0f} images/s  "
              f"(peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
