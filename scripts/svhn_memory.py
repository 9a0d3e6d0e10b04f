"""Peak host memory of loading SVHN train + extra with GCN + LCN (issue 3 asks for ≤ 8 GB).

    .venv/bin/python scripts/svhn_memory.py make /tmp/fake-svhn      # full-size fake SVHN, official .mat format
    .venv/bin/python scripts/svhn_memory.py measure /tmp/fake-svhn   # load_data(dataset=svhn) on the CPU

`make` writes train_32x32.mat (73,257 images), extra_32x32.mat (531,131) and test_32x32.mat (26,032) with random
pixels and labels 1..10, as compressed MATLAB v5 files like the official ones (X: 32×32×3×N uint8, y: N×1): ~1.9 GB,
keep it out of the repository. `measure` points torchvision's expected MD5s at these files (the only change to
the user's code path) and reports the process's peak resident set size (ru_maxrss) after `load_data`.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from torchvision.datasets.utils import calculate_md5

SIZES = {"train": 73_257, "extra": 531_131, "test": 26_032}


def make(folder: Path) -> None:
    import numpy as np
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in SIZES.items():
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, size=(n, 1), dtype=np.uint8)
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y}, do_compression=True)  # as the official files
        del x
        print(f"wrote {folder / f'{split}_32x32.mat'} ({n:,} images)")


def measure(folder: Path) -> dict:
    import torch
    from torchvision import datasets

    from nin_cli.overrides import load_config
    from nin_cli.data import load_data

    split_list = {s: [url, name, calculate_md5(str(folder / name))]
                  for s, (url, name, _) in datasets.SVHN.split_list.items()}
    datasets.SVHN.split_list = split_list
    cfg = load_config(["dataset=svhn", f"dataset.root={folder}"]).dataset
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    data = load_data(cfg, torch.device("cpu"))
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    resident = sum(s.images.numel() * s.images.element_size() for s in (data.train, data.val, data.test))
    return {"train": len(data.train), "val": len(data.val), "test": len(data.test),
            "dtype": str(data.train.images.dtype), "tensors_gib": round(resident / 2**30, 2),
            "peak_rss_gib": round(peak_kib / 2**20, 2), "rss_before_load_gib": round(before / 2**20, 2),
            "load_seconds": round(seconds, 1), "torch": torch.__version__, "threads": torch.get_num_threads()}


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("make", "measure"):
        sys.exit(__doc__)
    if sys.argv[1] == "make":
        make(Path(sys.argv[2]))
    else:
        print(json.dumps(measure(Path(sys.argv[2]))))
