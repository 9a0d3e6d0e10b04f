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
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nin_cli.config import DatasetConfig
from nin_cli.datasets import RawData, dataset_root, list_folder, read_cache, read_dataset, write_cache
from nin_cli.errors import ConfigError
from nin_cli.preprocess import LCN_KERNEL, LCN_SIGMA, LCN_THRESHOLD, apply_preprocessing, channel_mean_std, fit_zca
from nin_cli.stream import StreamImages, open_stream, read_batches, skipped_images
from nin_cli.stream import channel_mean_std as stream_mean_std

log = logging.getLogger(__name__)
MAX_ZCA_DIM = 3 * 64 * 64  # the whitening matrix is dim² floats: 12,288² × 4 B = 600 MB


@dataclass
class Split:
    images: torch.Tensor | StreamImages  # (N, C, H, W) uint8, float16 when preprocessed ahead, or rows on disk
    labels: torch.Tensor  # (N,) int64
    crop: tuple[int, int] | None = None  # training: random-resized crops of this size (dataset.resize)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device), self.crop)


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
        """What the model takes: the training crop's size where images are stored larger (dataset.resize)."""
        shape = list(self.train.images.shape[1:])
        return shape[:1] + list(self.train.crop) if self.train.crop else shape

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ------------------------------------------------------------------------------------------------ assembly


def split_validation(raw: RawData, cfg: DatasetConfig) -> tuple[Split, Split]:
    """Hold out `raw.val_index` (the paper's validation images); `train_on=train+val` trains on all of them."""
    images, labels, index = raw.train_images, raw.train_labels, raw.val_index
    n, k = len(labels), len(index)
    if torch.equal(index, torch.arange(n - k, n)) and not isinstance(images, StreamImages):  # views, no copy
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
    """The constants of `cfg.preprocessing`, fitted on the training split only (what checkpoints store), with
    `input_scale` when it is not 1 (so a checkpoint made without it keeps the same constants)."""
    constants = _fit_kind(train, cfg, device)
    return constants if cfg.input_scale == 1.0 else constants | {"input_scale": float(cfg.input_scale)}


def _fit_kind(train: Split, cfg: DatasetConfig, device: torch.device) -> dict:
    channels = train.images.shape[1]
    if cfg.preprocessing == "none":
        return {"kind": "none", "mean": [0.0] * channels, "std": [1.0] * channels}
    if cfg.preprocessing == "mean_std":
        streamed = isinstance(train.images, StreamImages)
        mean, std = stream_mean_std(train.images) if streamed else channel_mean_std(train.images)
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
    if cached is not None and zca_cache_fits(cached, key, dim):
        return cached["zca_mean"], cached["zca_matrix"]
    if cached is not None:
        log.warning("ignoring the ZCA cache %s: not this training set's fit (key, shape or values); refitting", path)
    log.info("fitting ZCA on %d training images (once; cached in %s)", len(images), path)
    fit_device = device if device.type == "cuda" else torch.device("cpu")  # float64: not on mps
    mean, whiten = fit_zca(images.to(fit_device), cfg.zca_bias, cfg.gcn_scale)
    result = {"key": key, "zca_mean": mean.float().cpu(), "zca_matrix": whiten.float().cpu()}
    write_cache(path, result)
    return result["zca_mean"], result["zca_matrix"]


def zca_cache_fits(cached: dict, key: str, dim: int) -> bool:
    """A cache file is trusted only as the fit it names: its own key (a file copied or renamed from another
    training set's fails), float32 shapes (dim,) and (dim, dim), finite values."""
    if not isinstance(cached, dict):
        return False
    mean, whiten = cached.get("zca_mean"), cached.get("zca_matrix")
    return (cached.get("key") == key and isinstance(mean, torch.Tensor) and isinstance(whiten, torch.Tensor)
            and mean.dtype == whiten.dtype == torch.float32 and tuple(mean.shape) == (dim,)
            and tuple(whiten.shape) == (dim, dim) and bool(torch.isfinite(whiten).all() & torch.isfinite(mean).all()))


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
    raw = open_stream(cfg) if streams(cfg) else read_dataset(cfg)
    train, val = split_validation(raw, cfg)
    test, classes = Split(raw.test_images, raw.test_labels), raw.classes
    del raw  # SVHN: the pre-split copy goes before the float16 one is made
    check_resize(cfg)
    if cfg.resize:  # the model sees image_shape crops: random-resized in training, centred in evaluation
        crop = tuple(cfg.image_shape[1:]) if cfg.image_shape else (cfg.resize, cfg.resize)
        train, val, test = Split(train.images, train.labels, crop), centre_crop(val, crop), centre_crop(test, crop)
    if constants is None:
        constants = fit_preprocessing(train, cfg, device)
    parts = {name: prepare_split(split, constants, device) if name in splits else split
             for name, split in zip(SPLIT_NAMES, (train, val, test), strict=True)}
    return Data(parts["train"], parts["val"], parts["test"], classes, constants)


def streams(cfg: DatasetConfig) -> bool:
    """Whether the dataset is read from disk batch by batch (nin_cli/stream.py) rather than held whole: on request,
    or (auto) for an image folder whose decoded images exceed dataset.stream_above_gb."""
    if cfg.stream == "never" or (cfg.name != "imagefolder" and cfg.stream == "auto"):
        return False
    if cfg.name != "imagefolder":
        raise ConfigError(f"dataset.stream={cfg.stream}: only image folders stream (dataset={cfg.name} is held in "
                          "memory); use dataset.stream=auto")
    if cfg.preprocessing not in ("none", "mean_std"):
        if cfg.stream == "always":
            raise ConfigError(f"dataset.preprocessing={cfg.preprocessing}: a streamed folder takes none or mean_std "
                              "(the others are fitted and applied on the whole set)")
        return False
    return cfg.stream == "always" or list_folder(cfg).decoded_bytes > cfg.stream_above_gb * 1e9


def check_resize(cfg: DatasetConfig) -> None:
    if cfg.resize and cfg.name != "imagefolder":
        raise ConfigError(f"dataset.resize={cfg.resize}: only image folders are stored resized (dataset={cfg.name})")
    if cfg.resize and cfg.translate:
        raise ConfigError(f"dataset.translate={cfg.translate} with dataset.resize={cfg.resize}: the random-resized "
                          "crop replaces pad-and-crop; set dataset.translate=0")
    if cfg.resize and cfg.image_shape and max(cfg.image_shape[1:]) > cfg.resize:
        raise ConfigError(f"dataset.image_shape={cfg.image_shape}: crops larger than dataset.resize={cfg.resize}")


def centre_crop(split: Split, crop: tuple[int, int]) -> Split:
    """torchvision's CenterCrop of every image (resident: one copy; streamed: as rows are read)."""
    if isinstance(split.images, StreamImages):
        return Split(split.images.cropped(*crop), split.labels)
    height, width = split.images.shape[2:]
    if (height, width) == crop:
        return split
    top, left = round((height - crop[0]) / 2), round((width - crop[1]) / 2)
    return Split(split.images[:, :, top:top + crop[0], left:left + crop[1]].contiguous(), split.labels)


def raw_test_images(cfg: DatasetConfig, count: int) -> Split:
    """The first `count` test images as uint8 on the CPU, nothing fitted or preprocessed (`nin cam --test`, the
    export parity check)."""
    test = load_data(cfg, torch.device("cpu"), constants={"kind": "none"}, splits=()).test
    return Split(test.images[:count], test.labels[:count])


def describe_data(cfg: DatasetConfig) -> tuple[dict, list[str]]:
    """What `nin data` reports: fetch/verify the files, build the caches (decoded folder, fitted ZCA, streamed
    rows) and count what training will see. Preprocessing is fitted, not applied."""
    data = load_data(cfg, torch.device("cpu"), splits=())
    root = "" if cfg.name in ("digits", "synthetic") else str(dataset_root(cfg))
    counts = {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
    stored = list(data.train.images.shape[1:])
    report = {"dataset": cfg.name, "root": root, "splits": counts, "image_shape": data.image_shape,
              "num_classes": data.num_classes, "preprocessing": cfg.preprocessing}
    if cfg.name == "imagefolder":  # where the decoded images live: in memory, or streamed from the disk cache
        streamed = isinstance(data.train.images, StreamImages)
        report.update(stored_shape=stored, stream=streamed,
                      decoded_gb=round(sum(counts.values()) * math.prod(stored) / 1e9, 3))
        if streamed:
            report.update(cache=str(Path(data.train.images.path).parent), skipped=skipped_images(data.train.images))
    return report, data.classes


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
    ] + ([f"storage        {storage_line(report)}"] if "stream" in report else []))


def storage_line(report: dict) -> str:
    size = f"{report['decoded_gb']:.2f} GB decoded"
    if not report.get("stream"):
        return f"in memory ({size})"
    skipped = f"; {len(report['skipped'])} unreadable images skipped" if report["skipped"] else ""
    return f"streamed from {report['cache']} ({size}{skipped})"


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
    same images, augmented the same way, as one process would train on (and, streamed, reads only those).
    Resident and streamed images give the same batches: only where the pixels come from differs."""
    n, device = len(split), split.images.device
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g)
    shifts = torch.randint(0, 2 * translate + 1, (n, 2), generator=g).to(device) if translate else None
    flips = (torch.rand(n, generator=g) < 0.5).to(device) if flip else None
    boxes = crop_boxes(n, split.images.shape[2], split.images.shape[3], g).to(device) if split.crop else None
    steps = range(start_step, steps_per_epoch(n, batch_size, max_steps))
    index = [order[step * batch_size:(step + 1) * batch_size].tensor_split(world_size)[rank] for step in steps]
    on_device = order.to(device)  # the same slices on the device: gathers and augmentation never wait on the host
    dev_index = [on_device[step * batch_size:(step + 1) * batch_size].tensor_split(world_size)[rank] for step in steps]
    for idx, images in zip(dev_index, gather(split.images, index, dev_index), strict=True):
        if boxes is not None:
            images = random_resized_crop(images, boxes[idx], split.crop)
        images = translate_and_flip(images, shifts[idx] if shifts is not None else None,
                                    flips[idx] if flips is not None else None, translate)
        yield images, split.labels[idx]


def gather(images: torch.Tensor | StreamImages, index: list[torch.Tensor], dev_index: list[torch.Tensor]
           ) -> Iterator[torch.Tensor]:
    """The images at each index list in turn: resident ones gathered on their device, streamed ones read ahead by
    worker processes from disk (`index`, on the CPU) and copied to the device."""
    if not isinstance(images, StreamImages):
        return (images[idx] for idx in dev_index)
    return (batch.to(images.device, non_blocking=True) for batch in read_batches(images, index))


def crop_boxes(n: int, height: int, width: int, g: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3), tries: int = 10) -> torch.Tensor:
    """torchvision RandomResizedCrop's parameters for n images at once, as (x0, y0, x1, y1) boxes: area a
    uniform share of `scale`, aspect log-uniform in `ratio`, the first of `tries` draws that fits, else the whole
    image clamped to `ratio` (its fallback); the position uniform."""
    area = torch.empty(n, tries).uniform_(*scale, generator=g) * (height * width)
    aspect = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g).exp()
    w, h = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
    fits = (w >= 1) & (h >= 1) & (w <= width) & (h <= height)
    first = fits.float().argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    fw, fh = float(width), float(height)
    if width / height < ratio[0]:
        fh = float(round(width / ratio[0]))
    elif width / height > ratio[1]:
        fw = float(round(height * ratio[1]))
    found = fits.any(dim=1)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    u = torch.rand(n, 2, generator=g)
    top = torch.where(found, (u[:, 0] * (height - h + 1)).floor(), ((height - h) / 2).floor())
    left = torch.where(found, (u[:, 1] * (width - w + 1)).floor(), ((width - w) / 2).floor())
    return torch.stack([left, top, left + w, top + h], dim=1)


def random_resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each image's box resized to `size`, batched: RoIAlign's bilinear samples (2×2 per output pixel, averaged:
    a mild antialias when a crop shrinks), rounded back to uint8 so the crops are preprocessed as stored images."""
    from torchvision.ops import roi_align

    rois = torch.cat([torch.arange(len(images), device=images.device, dtype=torch.float32)[:, None],
                      boxes.float()], dim=1)
    out = roi_align(images.float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def eval_batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    starts = range(0, len(split), batch_size)
    if isinstance(split.images, StreamImages):
        index = [torch.arange(start, min(start + batch_size, len(split))) for start in starts]
        for start, images in zip(starts, gather(split.images, index, index), strict=True):
            yield images, split.labels[start:start + batch_size]
        return
    for start in starts:
        yield split.images[start:start + batch_size], split.labels[start:start + batch_size]
