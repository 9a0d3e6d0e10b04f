"""Datasets as whole tensors on the training device, the paper's splits, batched on-device augmentation.

`load_data(cfg, device)` returns a `Data`: train / val / test splits whose images are uint8 (normalised per batch
by `to_input`) or float16 (already preprocessed, e.g. GCN+ZCA), labels int64, all resident on `device`.
`train_batches` yields augmented batches in a shuffle order that depends only on (seed, epoch), so a resumed
epoch replays the same batches from any step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nin_cli.config import DatasetConfig
from nin_cli.errors import DataError
from nin_cli.preprocess import apply_zca, channel_mean_std, fit_zca, gcn


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


@dataclass
class RawData:
    """Images as published: uint8 NCHW; `train` still holds the validation images at its end."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]


# ------------------------------------------------------------------------------------------------- sources


def _synthetic(cfg: DatasetConfig) -> RawData:
    """Learnable random images: each class is a fixed random prototype plus per-image noise."""
    channels, height, width = cfg.image_shape or [3, 32, 32]
    num_classes = cfg.num_classes or 10
    g = torch.Generator().manual_seed(1234)
    prototypes = torch.randn(num_classes, channels, height, width, generator=g)
    labels = torch.arange(cfg.size) % num_classes
    labels = labels[torch.randperm(cfg.size, generator=g)]
    noise = torch.randn(cfg.size, channels, height, width, generator=g)
    images = (128 + 40 * prototypes[labels] + 40 * noise).clamp(0, 255).to(torch.uint8)
    n_test = max(1, cfg.size // 5)
    return RawData(images[n_test:], labels[n_test:], images[:n_test], labels[:n_test],
                   [f"class{i}" for i in range(num_classes)])


def _digits(cfg: DatasetConfig) -> RawData:
    """scikit-learn's 1,797 8×8 digits (0..16 levels), scaled to uint8; a fixed 360-image test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.RandomState(0).permutation(len(bunch.target))
    images = torch.from_numpy((bunch.images[order] * 255.0 / 16.0).round().astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target[order].astype(np.int64))
    return RawData(images[360:], labels[360:], images[:360], labels[:360], [str(d) for d in range(10)])


def _cifar(cfg: DatasetConfig) -> RawData:
    from torchvision import datasets

    cls = datasets.CIFAR10 if cfg.name == "cifar10" else datasets.CIFAR100
    root = Path(cfg.root).expanduser()
    try:
        train = cls(str(root), train=True, download=cfg.download)
        test = cls(str(root), train=False, download=cfg.download)
    except RuntimeError as err:
        folder = cls.base_folder
        raise DataError(f"{cfg.name} not found or corrupt under {root / folder} ({err}); get it with "
                        f"`nin train dataset={cfg.name} dataset.download=true` where a network exists, or "
                        f"unpack {cls.filename} from {cls.url.rsplit('/', 1)[0]} into {root}") from None

    def images(ds) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()

    return RawData(images(train), torch.tensor(train.targets), images(test), torch.tensor(test.targets),
                   list(train.classes))


SOURCES = {"synthetic": _synthetic, "digits": _digits, "cifar10": _cifar, "cifar100": _cifar}


# ------------------------------------------------------------------------------------------------ assembly


def split_validation(raw: RawData, cfg: DatasetConfig) -> tuple[Split, Split]:
    """The paper's protocol: the last `val_size` training images are the validation split."""
    n = len(raw.train_labels)
    if cfg.val_size >= n:
        raise DataError(f"dataset.val_size={cfg.val_size} leaves no training images ({n} in the train files)")
    cut = n - cfg.val_size
    train = Split(raw.train_images[:cut], raw.train_labels[:cut])
    val = Split(raw.train_images[cut:], raw.train_labels[cut:])
    if cfg.train_on == "train+val":
        train = Split(raw.train_images, raw.train_labels)
    return train, val


def preprocess(train: Split, val: Split, test: Split, cfg: DatasetConfig) -> tuple[list[Split], dict]:
    """Fit on the training split only; return the three splits and the constants a consumer needs."""
    if cfg.preprocessing in ("none", "mean_std"):
        if cfg.preprocessing == "none":
            mean, std = torch.zeros(train.images.shape[1]), torch.ones(train.images.shape[1])
        else:
            mean, std = channel_mean_std(train.images)
        return [train, val, test], {"kind": cfg.preprocessing, "mean": mean.tolist(), "std": std.tolist()}
    if cfg.preprocessing == "gcn_zca":
        fitted = gcn(train.images.float(), cfg.gcn_scale)
        mean, whiten = fit_zca(fitted, cfg.zca_bias)

        def apply(split: Split) -> Split:
            whitened = apply_zca(gcn(split.images.float(), cfg.gcn_scale), mean, whiten)
            return Split(whitened.to(torch.float16), split.labels)

        consts = {"kind": "gcn_zca", "gcn_scale": cfg.gcn_scale, "zca_mean": mean.float(),
                  "zca_matrix": whiten.float()}
        return [apply(train), apply(val), apply(test)], consts
    raise DataError(f"dataset.preprocessing={cfg.preprocessing} is not available for {cfg.name} yet")


def load_data(cfg: DatasetConfig, device: torch.device) -> Data:
    if cfg.name not in SOURCES:
        raise DataError(f"dataset {cfg.name} has no loader yet; available: {', '.join(SOURCES)}")
    raw = SOURCES[cfg.name](cfg)
    train, val = split_validation(raw, cfg)
    test = Split(raw.test_images, raw.test_labels)
    (train, val, test), consts = preprocess(train, val, test, cfg)
    return Data(train.to(device), val.to(device), test.to(device), raw.classes, consts)


# ------------------------------------------------------------------------------------------------ batches


def to_input(images: torch.Tensor, preprocessing: dict, channels_last: bool = False) -> torch.Tensor:
    """A batch as the model takes it: float32, normalised (uint8 input) or as stored (float16 input)."""
    if images.dtype == torch.uint8:
        x = images.float().div_(255.0)
        if "mean" in preprocessing:
            mean = torch.tensor(preprocessing["mean"], device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(preprocessing["std"], device=x.device).view(1, -1, 1, 1)
            x = x.sub_(mean).div_(std)
    else:
        x = images.float()
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def translate_and_flip(images: torch.Tensor, shifts: torch.Tensor | None, flips: torch.Tensor | None,
                       pad: int) -> torch.Tensor:
    """Batched augmentation: zero-pad by `pad`, crop at per-image offsets `shifts` (N, 2) in [0, 2·pad], and
    mirror the images where `flips` (N,) is true. Gathers only; no Python per image."""
    if pad > 0 and shifts is not None:
        n, _, h, w = images.shape
        padded = F.pad(images, (pad, pad, pad, pad))
        rows = (shifts[:, 0:1] + torch.arange(h, device=images.device)).view(n, 1, h, 1)
        cols = (shifts[:, 1:2] + torch.arange(w, device=images.device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
        chan = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
        images = padded[batch, chan, rows, cols]
    if flips is not None:
        images = torch.where(flips.view(-1, 1, 1, 1), images.flip(3), images)
    return images


def steps_per_epoch(n: int, batch_size: int, max_steps: int | None = None) -> int:
    steps = max(1, n // batch_size)  # drop the last partial batch (batch norm needs more than one image)
    return min(steps, max_steps) if max_steps else steps


def train_batches(split: Split, batch_size: int, seed: int, epoch: int, translate: int = 0, flip: bool = False,
                  start_step: int = 0, max_steps: int | None = None
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled, augmented batches. Order and augmentation come from a generator seeded by (seed, epoch) alone,
    so resuming at `start_step` replays exactly the batches an uninterrupted epoch would have seen."""
    n, device = len(split), split.images.device
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).to(device)
    shifts = torch.randint(0, 2 * translate + 1, (n, 2), generator=g).to(device) if translate else None
    flips = (torch.rand(n, generator=g) < 0.5).to(device) if flip else None
    for step in range(start_step, steps_per_epoch(n, batch_size, max_steps)):
        idx = order[step * batch_size:(step + 1) * batch_size]
        images = translate_and_flip(split.images[idx], shifts[idx] if shifts is not None else None,
                                    flips[idx] if flips is not None else None, translate)
        yield images, split.labels[idx]


def eval_batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(split), batch_size):
        yield split.images[start:start + batch_size], split.labels[start:start + batch_size]
