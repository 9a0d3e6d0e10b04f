"""The dataset table: each dataset's official files → uint8 NCHW tensors, labels, classes and the indices the
paper holds out for validation.

CIFAR-10/100, SVHN and MNIST go through torchvision's dataset classes (their file layout, checksums and
`download=True`); image folders are decoded once into a tensor file cached under `dataset.cache_dir`, keyed by
the tree's content. Every anticipated failure is a one-line DataError naming the file and how to get it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import pickle
import shutil
import struct
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.utils import calculate_md5

from nin_cli.config import DatasetConfig
from nin_cli.errors import ConfigError, DataError
from nin_cli.files import atomic_write, one_line

log = logging.getLogger(__name__)
# torchvision.datasets.folder.IMG_EXTENSIONS, spelled out: a cached run need not import torchvision at all.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class RawData:
    """Images as published: uint8 NCHW. `train_*` still holds the validation images, listed in `val_index`."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    val_index: torch.Tensor  # int64 indices into train_* held out as validation (the paper's protocol)


def dataset_root(cfg: DatasetConfig) -> Path:
    if cfg.root in ("", "???"):
        raise ConfigError(f"dataset.root is missing: dataset={cfg.name} needs dataset.root=DIR")
    return Path(cfg.root).expanduser().resolve()


def tail_index(n: int, val_size: int) -> torch.Tensor:
    """The paper's protocol for CIFAR and MNIST: the last `val_size` training images are the validation set."""
    if val_size >= n:
        raise DataError(f"dataset.val_size={val_size} leaves no training images ({n} in the train files)")
    return torch.arange(n - val_size, n)


def per_class_tail(labels: torch.Tensor, per_class: list[int], what: str) -> torch.Tensor:
    """The last `per_class[c]` images of each class c, in file order (a deterministic, balanced hold-out)."""
    picked = []
    for c, k in enumerate(per_class):
        idx = torch.nonzero(labels == c).flatten()
        if k and len(idx) <= k:
            raise DataError(f"{what}: class {c} has {len(idx)} images, too few to hold out {k} for validation")
        picked.append(idx[len(idx) - k:])
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.int64)


def _diagnose(folder: Path, files: list[tuple[str, str | None]]) -> tuple[str, bool] | None:
    """What is wrong with an official file set: (message, files_missing), or None if every file checks out."""
    missing = [name for name, _ in files if not (folder / name).is_file()]
    if missing:
        return f"not found under {folder} (missing {', '.join(missing)})", True
    for name, md5 in files:
        if md5 and calculate_md5(folder / name) != md5:
            return f"{folder / name} is truncated or corrupt (MD5 checksum mismatch)", False
    return None


def _open_official(cfg: DatasetConfig, make: Callable, folder: Path, files: list[tuple[str, str | None]],
                   fetch: str):
    """Build a torchvision dataset; turn its failures (missing, corrupt, download) into one-line DataErrors."""
    try:
        with contextlib.redirect_stdout(sys.stderr):  # torchvision prints its downloads; stdout is for --json
            return make()
    except Exception as err:  # third-party file readers: anything they raise means "this file is not right"
        found = _diagnose(folder, files)
        how = f"get them with `nin data dataset={cfg.name} --download` where a network exists, or {fetch}"
        if found is None:
            problem = f"files under {folder} could not be read ({one_line(err, 200)})"
        else:
            problem, missing = found
            if missing and cfg.download:
                problem, how = f"{problem}; the download failed ({one_line(err, 200)})", fetch
        raise DataError(f"{cfg.name}: {problem}; {how}") from None


# --------------------------------------------------------------------------------------------- CIFAR-10/100


def _cifar(cfg: DatasetConfig) -> RawData:
    from torchvision import datasets

    cls = datasets.CIFAR10 if cfg.name == "cifar10" else datasets.CIFAR100
    root = dataset_root(cfg)
    folder = root / cls.base_folder
    files = [(n, m) for n, m in cls.train_list + cls.test_list] + [(cls.meta["filename"], cls.meta["md5"])]
    fetch = f"unpack {cls.filename} from {cls.url} into {root}"
    train = _open_official(cfg, lambda: cls(str(root), train=True, download=cfg.download), folder, files, fetch)
    test = _open_official(cfg, lambda: cls(str(root), train=False), folder, files, fetch)
    train_labels, test_labels, classes = torch.tensor(train.targets), torch.tensor(test.targets), list(train.classes)
    if cfg.name == "cifar100" and cfg.labels == "coarse":
        train_labels, classes = _cifar100_coarse(folder, cls.train_list, cls.meta["filename"])
        test_labels, _ = _cifar100_coarse(folder, cls.test_list, cls.meta["filename"])

    def images(ds) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))

    return RawData(images(train), train_labels, images(test), test_labels, classes,
                   tail_index(len(train_labels), cfg.val_size))


def _cifar100_coarse(folder: Path, file_list: list, meta_name: str) -> tuple[torch.Tensor, list[str]]:
    """The 20 superclass labels, which torchvision does not expose (files already checksum-verified)."""
    labels: list[int] = []
    try:
        for name, _ in file_list:
            with open(folder / name, "rb") as f:
                labels.extend(pickle.load(f, encoding="latin1")["coarse_labels"])
        with open(folder / meta_name, "rb") as f:
            classes = list(pickle.load(f, encoding="latin1")["coarse_label_names"])
    except (OSError, EOFError, KeyError, pickle.UnpicklingError) as err:
        raise DataError(f"cifar100: coarse labels could not be read from {folder} ({one_line(err, 200)})") from None
    return torch.tensor(labels), classes


# ---------------------------------------------------------------------------------------------------- MNIST


def _mnist(cfg: DatasetConfig) -> RawData:
    from torchvision import datasets

    cls = datasets.MNIST
    root = dataset_root(cfg)
    raw = root / "MNIST" / "raw"
    fetch = f"put the four .gz files from {cls.mirrors[0]} into {raw}"
    if cfg.download:  # torchvision fetches, checks the MD5 of each .gz and unpacks it
        _open_official(cfg, lambda: cls(str(root), train=True, download=True), raw, list(cls.resources), fetch)
    _unpack_idx(cfg, raw, list(cls.resources), fetch)
    counts = {name[:-3]: _check_idx(raw / name[:-3], 3 if "images" in name else 1) for name, _ in cls.resources}
    for prefix in ("train", "t10k"):
        if counts[f"{prefix}-images-idx3-ubyte"] != counts[f"{prefix}-labels-idx1-ubyte"]:
            raise DataError(f"mnist: {raw / f'{prefix}-images-idx3-ubyte'} and its labels file disagree on the "
                            "number of images")
    files = [(name[:-3], None) for name, _ in cls.resources]
    train = _open_official(cfg, lambda: cls(str(root), train=True), raw, files, fetch)
    test = _open_official(cfg, lambda: cls(str(root), train=False), raw, files, fetch)
    for prefix, part in (("train", train), ("t10k", test)):
        check_labels(part.targets, 10, f"mnist: {raw / f'{prefix}-labels-idx1-ubyte'}")
    return RawData(train.data.unsqueeze(1).contiguous(), train.targets.long(), test.data.unsqueeze(1).contiguous(),
                   test.targets.long(), [str(d) for d in range(10)], tail_index(len(train.targets), cfg.val_size))


def _unpack_idx(cfg: DatasetConfig, raw: Path, resources: list[tuple[str, str]], fetch: str) -> None:
    """Check each official .gz present against its MD5 and unpack it where the idx file is missing (torchvision
    reads only the unpacked files and checks no checksum there)."""
    missing = []
    for name, md5 in resources:
        packed, unpacked = raw / name, raw / name[:-3]
        if packed.is_file() and calculate_md5(packed) != md5:
            raise DataError(f"mnist: {packed} is truncated or corrupt (MD5 checksum mismatch); delete it and get "
                            f"it again: `nin data dataset=mnist --download` where a network exists, or {fetch}")
        if unpacked.is_file():
            continue
        if not packed.is_file():
            missing.append(name)
            continue
        try:
            with gzip.open(packed, "rb") as src:
                atomic_write(unpacked, lambda dst, src=src: shutil.copyfileobj(src, dst))
        except (OSError, EOFError) as err:
            raise DataError(f"mnist: {packed} could not be unpacked ({one_line(err, 200)}); it is corrupt") from None
    if missing:
        raise DataError(f"mnist: not found under {raw} (missing {', '.join(missing)}); get them with "
                        f"`nin data dataset=mnist --download` where a network exists, or {fetch}")


def _check_idx(path: Path, ndim: int) -> int:
    """Header and size of an idx file (uint8 data): a truncated or foreign file is named, not half-read."""
    with open(path, "rb") as f:
        head = f.read(4 + 4 * ndim)
    if len(head) < 4 + 4 * ndim or head[:4] != bytes([0, 0, 8, ndim]):
        raise DataError(f"mnist: {path} is not an idx{ndim} uint8 file (bad header); it is corrupt")
    dims = struct.unpack(f">{ndim}I", head[4:])
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if path.stat().st_size != expected:
        raise DataError(f"mnist: {path} is truncated or corrupt ({path.stat().st_size} bytes, its header "
                        f"promises {expected})")
    return dims[0]


# ----------------------------------------------------------------------------------------------------- SVHN


def _svhn(cfg: DatasetConfig) -> RawData:
    """train (+ extra), minus 400 per class from train and 200 per class from extra as validation (paper)."""
    from torchvision import datasets

    cls = datasets.SVHN
    root = dataset_root(cfg)
    urls = ", ".join(cls.split_list[s][0] for s in ("train", "test", "extra"))

    def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        _, name, md5 = cls.split_list[split]
        ds = _open_official(cfg, lambda: cls(str(root), split=split, download=cfg.download), root, [(name, md5)],
                            f"download {urls} into {root}")
        return torch.from_numpy(ds.data).contiguous(), torch.from_numpy(ds.labels.astype(np.int64))

    train_images, train_labels = load("train")
    val_index = per_class_tail(train_labels, [cfg.svhn_val_per_class] * 10, f"svhn {root / 'train_32x32.mat'}")
    if cfg.svhn_extra:
        extra_images, extra_labels = load("extra")
        extra_val = per_class_tail(extra_labels, [cfg.svhn_extra_val_per_class] * 10,
                                   f"svhn {root / 'extra_32x32.mat'}")
        val_index = torch.cat([val_index, len(train_labels) + extra_val])
        train_images = torch.cat([train_images, extra_images])
        del extra_images  # the concatenated copy is all that stays
        train_labels = torch.cat([train_labels, extra_labels])
    test_images, test_labels = load("test")
    return RawData(train_images, train_labels, test_images, test_labels, [str(d) for d in range(10)], val_index)


# ---------------------------------------------------------------------------------------------- image folders


@dataclass
class FolderListing:
    """An image folder's files, as (path, class index) pairs, and the shape its images are stored at."""

    root: Path
    train_files: list[tuple[str, int]]
    test_files: list[tuple[str, int]]
    classes: list[str]
    shape: list[int]  # C, H, W as decoded: [C, resize, resize] when dataset.resize is set, else image_shape

    @property
    def decoded_bytes(self) -> int:
        return (len(self.train_files) + len(self.test_files)) * int(np.prod(self.shape))


def list_folder(cfg: DatasetConfig) -> FolderListing:
    """train/<class>/* and test/<class>/* (or val/<class>/*, ImageNet's layout), by ImageFolder's rules."""
    root = dataset_root(cfg)
    if cfg.image_shape and cfg.image_shape[0] not in (1, 3):
        raise ConfigError(f"dataset.image_shape={cfg.image_shape}: image folders decode to 1 (grey) or 3 (RGB) "
                          "channels")
    part = "test" if (root / "test").is_dir() or not (root / "val").is_dir() else "val"
    train_files, classes = _list_tree(root, "train")
    test_files, test_classes = _list_tree(root, part)
    if classes != test_classes:
        only_train, only_test = sorted(set(classes) - set(test_classes)), sorted(set(test_classes) - set(classes))
        raise DataError(f"imagefolder: class folders differ between {root / 'train'} and {root / part} "
                        f"(only in train: {', '.join(only_train) or '-'}; "
                        f"only in {part}: {', '.join(only_test) or '-'})")
    shape = cfg.image_shape or _first_shape(train_files[0][0])
    if cfg.resize:
        shape = [shape[0], cfg.resize, cfg.resize]
    return FolderListing(root, train_files, test_files, classes, list(shape))


def val_index_of(labels: torch.Tensor, classes: list[str], cfg: DatasetConfig, root: Path) -> torch.Tensor:
    """The last val_size / classes images of each class folder (the remainder spread over the first classes)."""
    shares = [cfg.val_size // len(classes) + (c < cfg.val_size % len(classes)) for c in range(len(classes))]
    return per_class_tail(labels, shares, f"imagefolder {root / 'train'} with dataset.val_size={cfg.val_size}")


def _imagefolder(cfg: DatasetConfig) -> RawData:
    """Any train/<class>/* + test/<class>/* tree, decoded once; later runs load the cached tensors."""
    listing = list_folder(cfg)
    files = listing.train_files + listing.test_files
    key = _tree_key(listing.root, files, cfg.image_shape if not cfg.resize else listing.shape)
    cache = Path(cfg.cache_dir).expanduser() / "imagefolder" / f"{key}.pt"
    tensors = read_cache(cache)
    if tensors is None:
        log.info("decoding %d images under %s (once; cached in %s)", len(files), listing.root, cache)
        tensors = {"train_images": _decode_all(listing.train_files, listing.shape),
                   "train_labels": _labels(listing.train_files),
                   "test_images": _decode_all(listing.test_files, listing.shape),
                   "test_labels": _labels(listing.test_files)}
        write_cache(cache, tensors)
    labels = tensors["train_labels"]
    return RawData(tensors["train_images"], labels, tensors["test_images"], tensors["test_labels"], listing.classes,
                   val_index_of(labels, listing.classes, cfg, listing.root))


def _list_tree(root: Path, part: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(file, class index) pairs and class names, by torchvision ImageFolder's rules: sorted class folders, files
    found recursively in sorted order, its image extensions. Plain strings: 60,000 Path objects cost seconds."""
    folder = root / part
    if not folder.is_dir():
        raise DataError(f"imagefolder: {folder} not found; dataset.root must hold train/<class>/*.jpg and "
                        "test/<class>/*.jpg (e.g. dataset.root=~/.cache/nin/cifar10-jpeg)")
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not classes:
        raise DataError(f"imagefolder: {folder} has no class folders; expected {folder}/<class>/*.jpg")
    files: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        found = [os.path.join(top, f) for top, _, names in sorted(os.walk(folder / name, followlinks=True))
                 for f in sorted(names) if f.lower().endswith(IMG_EXTENSIONS)]
        if not found:
            raise DataError(f"imagefolder: {folder / name} holds no images ({', '.join(IMG_EXTENSIONS)})")
        files += [(path, label) for path in found]
    return files, classes


def _tree_key(root: Path, files: list[tuple[str, int]], shape: list[int] | None) -> str:
    """A hash of every file's path, label and bytes (and the requested shape): edit one image, get a new cache."""
    digest = hashlib.sha256(f"nin-imagefolder-v1 {shape}\n".encode())
    prefix = len(str(root)) + 1
    for path, label in files:
        data = _read(path)
        digest.update(f"{path[prefix:]}\0{label}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:32]


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise DataError(f"imagefolder: cannot read {path} ({one_line(err, 200)})") from None


def _labels(files: list[tuple[str, int]]) -> torch.Tensor:
    return torch.tensor([label for _, label in files], dtype=torch.int64)


def _first_shape(path: str) -> list[int]:
    image = _decode(path, None)
    return list(image.shape)


def _decode_all(files: list[tuple[str, int]], shape: list[int]) -> torch.Tensor:
    out = torch.empty(len(files), *shape, dtype=torch.uint8)
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders (PIL takes over when they go)
        warnings.simplefilter("ignore", DeprecationWarning)
        for i, (path, _) in enumerate(files):
            out[i] = _decode(path, shape)
    return out


def _decode(path: str, shape: list[int] | None) -> torch.Tensor:
    """One image as uint8 (C, H, W): torchvision's decoders (JPEG, PNG, WebP, GIF: twice PIL's speed), PIL for
    the other formats; resized (bilinear, antialiased) when `shape` asks for another size."""
    channels = shape[0] if shape else 3
    data = _read(path)
    if not data:
        raise DataError(f"imagefolder: cannot decode {path} (an empty file, 0 bytes): not a readable image")
    try:
        from torchvision.io import ImageReadMode, decode_image

        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                             mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
        image = image[0] if image.ndim == 4 else image  # animated GIF: first frame
    except (ImportError, RuntimeError, ValueError):
        image = decode_pil(data, channels, path)
    if shape and list(image.shape[1:]) != list(shape[1:]):
        resized = torch.nn.functional.interpolate(image[None].float(), size=tuple(shape[1:]), mode="bilinear",
                                                  antialias=True, align_corners=False)
        image = resized[0].round().clamp(0, 255).to(torch.uint8)
    return image


def decode_pil(data: bytes, channels: int, path: str = "") -> torch.Tensor:
    """An encoded image's bytes → uint8 C×H×W (grey for one channel, else RGB); a DataError (naming the image folder's
    file `path`, when given) otherwise. `nin predict` decodes with it too."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            array = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        why = one_line(err, 200 if path else 120)
        raise DataError(f"imagefolder: cannot decode {path} ({why}): not a readable image" if path
                        else f"not a readable image ({why})") from None
    return torch.from_numpy(array.copy()).reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1).contiguous()


def read_cache(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # a cache is ours to rebuild: never a reason to stop
        log.warning("ignoring unreadable cache %s (%s); rebuilding it", path, one_line(err, 200))
        return None


def write_cache(path: Path, payload: dict) -> None:
    """Atomic (write, then rename), so a crash or a concurrent run never leaves half a cache behind."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save(payload, f))
    except OSError as err:
        log.warning("could not write the cache %s (%s); the next run decodes again", path, one_line(err, 200))


# ------------------------------------------------------------------------------------------- bundled, made up


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
                   [f"class{i}" for i in range(num_classes)], tail_index(cfg.size - n_test, cfg.val_size))


def _digits(cfg: DatasetConfig) -> RawData:
    """scikit-learn's 1,797 8×8 digits (0..16 levels), scaled to uint8; a fixed 360-image test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.RandomState(0).permutation(len(bunch.target))
    images = torch.from_numpy((bunch.images[order] * 255.0 / 16.0).round().astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target[order].astype(np.int64))
    return RawData(images[360:], labels[360:], images[:360], labels[:360], [str(d) for d in range(10)],
                   tail_index(len(labels) - 360, cfg.val_size))


SOURCES: dict[str, Callable[[DatasetConfig], RawData]] = {
    "cifar10": _cifar, "cifar100": _cifar, "svhn": _svhn, "mnist": _mnist, "imagefolder": _imagefolder,
    "digits": _digits, "synthetic": _synthetic,
}


def check_labels(labels: torch.Tensor, num_classes: int, what: str) -> None:
    """Every label a class index (0 … num_classes − 1): a file with others is corrupt, named before training
    indexes out of range with it."""
    if len(labels) == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise DataError(f"{what}: a label {bad}, outside 0-{num_classes - 1} ({num_classes} classes): corrupt "
                        "labels; get the files again")


def read_dataset(cfg: DatasetConfig) -> RawData:
    if cfg.name not in SOURCES:
        raise ConfigError(f"dataset.name={cfg.name}: no loader; choose one of {', '.join(SOURCES)}")
    raw = SOURCES[cfg.name](cfg)
    where = "" if cfg.name in ("synthetic", "digits") else f" under {dataset_root(cfg)}"
    for part, labels in (("train", raw.train_labels), ("test", raw.test_labels)):
        check_labels(labels, len(raw.classes), f"{cfg.name}: the {part} files{where}")
    return raw
