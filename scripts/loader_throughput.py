"""Images per second the data loader delivers, augmentation included, with no model in the loop.

    .venv/bin/python scripts/loader_throughput.py [OVERRIDES...]

Default overrides: the CIFAR-10 JPEG copy as an image folder, with the paper's augmentation (pad 4 + random crop,
horizontal flip), batch 128, on the trainer's device. Each epoch is what `train_one_epoch` pulls from the loader:
`train_batches` (seeded shuffle, batched translate + flip on the device) and `to_input` (float32, normalised,
channels-last). Measured for the split as loaded (uint8, per-batch mean/std) and for a float16 copy of it (the
form GCN+ZCA / GCN+LCN data takes). Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time

DEFAULT = ["dataset=imagefolder", "dataset.root=~/.cache/nin/cifar10-jpeg", "dataset.translate=4",
           "dataset.flip=true"]


def epoch_rate(split, preprocessing: dict, cfg, epoch: int) -> float:
    import torch

    from nin_cli.data import steps_per_epoch, to_input, train_batches

    tr, ds = cfg.trainer, cfg.dataset
    device = split.images.device
    start = time.perf_counter()
    checksum = torch.zeros((), device=device)
    for images, _ in train_batches(split, tr.batch_size, tr.seed, epoch, ds.translate, ds.flip):
        checksum += to_input(images, preprocessing, tr.channels_last)[0, 0, 0, 0]  # keep the work observable
    checksum.item()  # wait for the device
    return steps_per_epoch(len(split), tr.batch_size) * tr.batch_size / (time.perf_counter() - start)


def main(overrides: list[str]) -> dict:
    import torch

    from nin_cli.overrides import load_config
    from nin_cli.data import Split, load_data
    from nin_cli.runtime import resolve_device

    cfg = load_config(DEFAULT + overrides)
    device = resolve_device(cfg.trainer.device)
    start = time.perf_counter()
    data = load_data(cfg.dataset, device)
    load_s = time.perf_counter() - start
    as_loaded = max(epoch_rate(data.train, data.preprocessing, cfg, e) for e in range(3))
    half = Split(data.train.images.to(torch.float16), data.train.labels)
    float16 = max(epoch_rate(half, {"kind": "gcn_zca"}, cfg, e) for e in range(3))
    return {"dataset": cfg.dataset.name, "train_images": len(data.train), "dtype": str(data.train.images.dtype),
            "batch_size": cfg.trainer.batch_size, "translate": cfg.dataset.translate, "flip": cfg.dataset.flip,
            "device": str(device), "threads": torch.get_num_threads(), "load_s": round(load_s, 1),
            "images_per_s": round(as_loaded), "images_per_s_float16": round(float16), "torch": torch.__version__}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
