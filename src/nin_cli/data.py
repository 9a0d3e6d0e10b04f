"""Datasets as whole tensors on the training device, the paper's splits, preprocessing, batched augmentation.

`load_data(cfg, device)` returns a `Data`: train / val / test splits whose images are uint8 (normalised per batch
by `to_input`) or float16 (preprocessed ahead of time: GCN+ZCA, GCN+LCN), labels int64, all resident on
`device`. The files themselves are read by `datasets.read_dataset`. `train_batches` yields augmented batches in
an order that depends only on (seed, epoch), so a resumed epoch replays the same batches from any step.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nin_cli.config import DatasetConfig
from nin_cli.datasets import RawData, dataset_root, read_cache, read_dataset, write_cache
from nin_cli.errors import ConfigError
from nin_cli.preprocess import LCN_KERNEL, LCN_SIGMA, LCN_THRESHOLD, apply_preprocessing, channel_mean_std, fit_zca

log = logging.getLogger(__name__)
MAX_ZCA_DIM = 3 * 64 * 64  # the whitening matrix is dim² floats: 12,288² × 4 B = 600 MB


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8, or float16 when preprocessed ahead of time
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Data:
    train: Split
    val: Split
    test: Split
    classes: list[str]
    # What a consumer needs to preprocess raw uint8 images exactly as training did (saved in checkpoints).
    preprocessing: dict = field(default_factory=dict)

    @property
    def image_shape(self) -> list[int]:
        return list(self.train.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ------------------------------------------------------------------------------------------------ assembly


def split_validation(raw: RawData, cfg: DatasetConfig) -> tuple[Split, Split]:
    """Hold out `raw.val_index` (the paper's validation images); `train_on=train+val` trains on all of them."""
    images, labels, index = raw.train_images, raw.train_labels, raw.val_index
    n, k = len(labels), len(index)
    if torch.equal(index, torch.arange(n - k, n)):  # a tail (or nothing): views, no copy
        val, rest = Split(images[n - k:], labels[n - k:]), Split(images[:n - k], labels[:n - k])
    else:
        keep = torch.ones(n, dtype=torch.bool)
        keep[index] = False
        keep = torch.nonzero(keep).flatten()  # index_select: several times faster than a boolean mask
        val = Split(images.index_select(0, index), labels[index])
        rest = Split(images.index_select(0, keep), labels[keep]) if cfg.train_on == "train" else None
    return (Split(images, labels) if cfg.train_on == "train+val" else rest), val


def tensors_digest(*tensors: torch.Tensor) -> str:
    """sha256 over the tensors' shapes and bytes: the key of anything fitted on them."""
    digest = hashlib.sha256()
    for t in tensors:
        array = np.ascontiguousarray(t.cpu().numpy())
        digest.update(f"{array.dtype} {array.shape}\n".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:32]


def fit_preprocessing(train: Split, cfg: DatasetConfig, device: torch.device) -> dict:
    """The constants of `cfg.preprocessing`, fitted on the training split only (what checkpoints store)."""
    channels = train.images.shape[1]
    if cfg.preprocessing == "none":
        return {"kind": "none", "mean": [0.0] * channels, "std": [1.0] * channels}
    if cfg.preprocessing == "mean_std":
        mean, std = channel_mean_std(train.images)
        return {"kind": "mean_std", "mean": mean.tolist(), "std": std.tolist()}
    if cfg.preprocessing in ("mean_image", "unit_mean_image"):
        mean_image = torch.zeros(train.images.shape[1:], dtype=torch.float64)
        for start in range(0, len(train), 4096):  # float64 sums of uint8 chunks: exact, without a float copy
            mean_image += train.images[start:start + 4096].double().sum(0).cpu()
        mean_image /= max(len(train), 1)
        if cfg.preprocessing == "unit_mean_image":  # stored in the input's own units: [0, 1]
            mean_image /= 255.0
        return {"kind": cfg.preprocessing, "mean_image": mean_image.float()}
    if cfg.preprocessing == "gcn_lcn":
        return {"kind": "gcn_lcn", "gcn_scale": cfg.gcn_scale, "lcn_kernel": LCN_KERNEL, "lcn_sigma": LCN_SIGMA,
                "lcn_threshold": LCN_THRESHOLD}
    mean, whiten = cached_zca(train.images, cfg, device)
    return {"kind": "gcn_zca", "gcn_scale": cfg.gcn_scale, "zca_mean": mean, "zca_matrix": whiten}


def cached_zca(images: torch.Tensor, cfg: DatasetConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """GCN+ZCA fitted once per training set: cached under cache_dir/zca/, keyed by the images' hash and the
    parameters. Returns float32 (mean, P) on the CPU."""
    dim = images[0].numel()
    if dim > MAX_ZCA_DIM:
        raise ConfigError(f"dataset.preprocessing=gcn_zca on {list(images.shape[1:])} images needs a {dim}×{dim} "
                          f"whitening matrix (at most {MAX_ZCA_DIM}); use mean_std or smaller images")
    key = tensors_digest(images) + f"-s{cfg.gcn_scale:g}-b{cfg.zca_bias:g}"
    path = Path(cfg.cache_dir).expanduser() / "zca" / f"{key}.pt"
    cached = read_cache(path)
    if cached is not None:
        return cached["zca_mean"], cached["zca_matrix"]
    log.info("fitting ZCA on %d training images (once; cached in %s)", len(images), path)
    fit_device = device if device.type == "cuda" else torch.device("cpu")  # float64: not on mps
    mean, whiten = fit_zca(images.to(fit_device), cfg.zca_bias, cfg.gcn_scale)
    result = {"zca_mean": mean.float().cpu(), "zca_matrix": whiten.float().cpu()}
    write_cache(path, result)
    return result["zca_mean"], result["zca_matrix"]


def prepare_split(split: Split, constants: dict, device: torch.device, chunk: int = 4096) -> Split:
    """On `device`: uint8 as is (normalised per batch), or preprocessed in chunks into float16 (GCN+ZCA/LCN)."""
    if constants["kind"] in ("none", "mean_std", "mean_image", "unit_mean_image"):
        return split.to(device)
    out = torch.empty(split.images.shape, dtype=torch.float16, device=device)
    for start in range(0, len(split), chunk):
        part = split.images[start:start + chunk].to(device)
        out[start:start + chunk] = apply_preprocessing(part, constants)
    return Split(out, split.labels.to(device))


SPLIT_NAMES = ("train", "val", "test")


def load_data(cfg: DatasetConfig, device: torch.device, constants: dict | None = None,
              splits: tuple[str, ...] = SPLIT_NAMES) -> Data:
    """The dataset's splits, preprocessing fitted on the training split (or `constants`, a checkpoint's stored ones:
    nothing is fitted, the inputs are exactly those training saw). Only `splits` are prepared on `device`; the others
    stay raw uint8 on the CPU (`nin eval` scoring the test split never preprocesses SVHN's 600k training images)."""
    raw = read_dataset(cfg)
    train, val = split_validation(raw, cfg)
    test, classes = Split(raw.test_images, raw.test_labels), raw.classes
    del raw  # SVHN: the pre-split copy goes before the float16 one is made
    if constants is None:
        constants = fit_preprocessing(train, cfg, device)
    parts = {name: prepare_split(split, constants, device) if name in splits else split
             for name, split in zip(SPLIT_NAMES, (train, val, test), strict=True)}
    return Data(parts["train"], parts["val"], parts["test"], classes, constants)


def raw_test_images(cfg: DatasetConfig, count: int) -> Split:
    """The first `count` test images as uint8 on the CPU, nothing fitted or preprocessed (`nin cam --test`, the
    export parity check)."""
    test = load_data(cfg, torch.device("cpu"), constants={"kind": "none"}, splits=()).test
    return Split(test.images[:count], test.labels[:count])


def describe_data(cfg: DatasetConfig) -> tuple[dict, list[str]]:
    """What `nin data` reports: fetch/verify the files, build the caches (decoded folder, fitted ZCA) and count
    what training will see. Preprocessing is fitted, not applied."""
    raw = read_dataset(cfg)
    train, val = split_validation(raw, cfg)
    fit_preprocessing(train, cfg, torch.device("cpu"))
    root = "" if cfg.name in ("digits", "synthetic") else str(dataset_root(cfg))
    report = {"dataset": cfg.name, "root": root,
              "splits": {"train": len(train), "val": len(val), "test": len(raw.test_labels)},
              "image_shape": list(raw.train_images.shape[1:]), "num_classes": len(raw.classes),
              "preprocessing": cfg.preprocessing}
    return report, raw.classes


@contextlib.contextmanager
def progress_to_stderr() -> Iterator[None]:
    """nin_cli's INFO messages on an interactive stderr for the duration (outside a Hydra run nothing else shows
    them); scripts keep the one-line-per-error contract."""
    if not sys.stderr.isatty():
        yield
        return
    logger, handler = logging.getLogger("nin_cli"), logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("nin: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def format_report(report: dict, classes: list[str]) -> str:
    splits, shown = report["splits"], ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
    return "\n".join([
        f"dataset        {report['dataset']}" + (f"  ({report['root']})" if report["root"] else ""),
        f"splits         train {splits['train']:,} · val {splits['val']:,} · test {splits['test']:,}",
        f"images         {' × '.join(map(str, report['image_shape']))} uint8, preprocessing "
        f"{report['preprocessing']}",
        f"classes        {report['num_classes']}: {shown}",
    ])


# ------------------------------------------------------------------------------------------------ batches


def to_input(images: torch.Tensor, preprocessing: dict, channels_last: bool = False) -> torch.Tensor:
    """A batch as the model takes it, float32. uint8 images are preprocessed here with the stored constants
    (GCN+ZCA/LCN rounded through float16, as training stored them); float16 images are already preprocessed."""
    if images.dtype == torch.uint8:
        x = apply_preprocessing(images, preprocessing)
        if preprocessing.get("kind") in ("gcn_zca", "gcn_lcn"):
            x = x.to(torch.float16).float()
    else:
        x = images.float()
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def translate_and_flip(images: torch.Tensor, shifts: torch.Tensor | None, flips: torch.Tensor | None,
                       pad: int) -> torch.Tensor:
    """Batched augmentation: zero-pad by `pad`, crop at per-image offsets `shifts` (N, 2) in [0, 2·pad], and
    mirror the crops where `flips` (N,) is true. One gather from a strided view of all windows; no Python per
    image. A mirrored crop is the crop of the mirrored padded image at column offset 2·pad − x."""
    if shifts is None and flips is None:
        return images
    n, _, h, w = images.shape
    if shifts is None or pad == 0:
        shifts, pad = torch.zeros(n, 2, dtype=torch.long, device=images.device), 0
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    rows, cols = shifts[:, 0], shifts[:, 1]
    which = torch.zeros(n, dtype=torch.long, device=images.device)
    if flips is not None:
        padded = torch.stack([padded, padded.flip(3)])
        which, cols = flips.long(), torch.where(flips, 2 * pad - cols, cols)
    else:
        padded = padded.unsqueeze(0)
    windows = padded.unfold(3, h, 1).unfold(4, w, 1)  # (1|2, N, C, 2·pad+1, 2·pad+1, H, W), a view
    return windows[which, torch.arange(n, device=images.device), :, rows, cols]


def steps_per_epoch(n: int, batch_size: int, max_steps: int | None = None) -> int:
    steps = max(1, n // batch_size)  # drop the last partial batch (batch norm needs more than one image)
    return min(steps, max_steps) if max_steps else steps


def train_batches(split: Split, batch_size: int, seed: int, epoch: int, translate: int = 0, flip: bool = False,
                  start_step: int = 0, max_steps: int | None = None, rank: int = 0, world_size: int = 1
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled, augmented batches. Order and augmentation come from a generator seeded by (seed, epoch) alone,
    so resuming at `start_step` replays exactly the batches an uninterrupted epoch would have seen. With several
    processes `batch_size` is the global batch and rank r takes the r-th of `world_size` equal slices of it: the
    same images, augmented the same way, as one process would train on."""
    n, device = len(split), split.images.device
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).to(device)
    shifts = torch.randint(0, 2 * translate + 1, (n, 2), generator=g).to(device) if translate else None
    flips = (torch.rand(n, generator=g) < 0.5).to(device) if flip else None
    for step in range(start_step, steps_per_epoch(n, batch_size, max_steps)):
        idx = order[step * batch_size:(step + 1) * batch_size].tensor_split(world_size)[rank]
        images = translate_and_flip(split.images[idx], shifts[idx] if shifts is not None else None,
                                    flips[idx] if flips is not None else None, translate)
        yield images, split.labels[idx]


def eval_batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(split), batch_size):
        yield split.images[start:start + batch_size], split.labels[start:start + batch_size]
