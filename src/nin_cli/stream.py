"""Image folders larger than memory: decoded once into a flat uint8 file on disk, read back batch by batch.

The cache of a folder is a directory under `dataset.cache_dir`/stream/, keyed by every file's path, size and
modification time (a stat, not a read: hashing 150 GB of JPEGs would take longer than decoding them): `train.u8`
and `test.u8` hold the decoded rows (N, C, H, W) uint8 back to back, `index.json` (written last: its presence
means the cache is complete) the labels, classes and the files skipped as unreadable. Rows are read with pread
into a fresh tensor, not through a memory map: pages of a mapping count towards the process's resident memory
until the kernel takes them back, pread leaves them in the page cache alone (BENCHMARKS.md, "Streaming").

`StreamImages` stands in for a split's image tensor: `data.py` gathers its batches through `read_batches`
(DataLoader worker processes reading ahead) and augments them on the device exactly as it does resident images.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import json
import logging
import math
import multiprocessing
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from nin_cli.config import DatasetConfig
from nin_cli.datasets import FolderListing, _decode, list_folder, val_index_of
from nin_cli.errors import DataError
from nin_cli.files import atomic_write, one_line

log = logging.getLogger(__name__)
CACHE_VERSION = "nin-stream-v1"
# Readers are forked (a copy of this process, ready at once) where the platform can: a process that was itself
# started by forkserver or spawn would otherwise start them the same way, seconds each, every epoch.
_START = "fork" if "fork" in multiprocessing.get_all_start_methods() else None


@dataclass(frozen=True)
class StreamImages:
    """Rows `rows` of the uint8 file `path` (each `stored` = C, H, W), as a lazy (N, C, H, W) image tensor on
    `device`. Indexing reads pixels, except a slice with a step (a rank's shard: `images[rank::world]`), which,
    like `index_select` and `flip(3)`, gives another view. `crop` centre-crops each row as it is read."""

    path: str
    stored: tuple[int, int, int]
    rows: torch.Tensor
    device: torch.device = torch.device("cpu")
    workers: int = 0
    crop: tuple[int, int] | None = None
    flipped: bool = False
    dtype = torch.uint8

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), self.stored[0], *(self.crop or self.stored[1:])))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> torch.Tensor | StreamImages:
        if isinstance(key, slice) and key.step not in (None, 1):
            return replace(self, rows=self.rows[key])
        rows = self.rows[key]
        return read_rows(self, rows.reshape(-1)).to(self.device)

    def index_select(self, dim: int, index: torch.Tensor) -> StreamImages:
        assert dim == 0
        return replace(self, rows=self.rows[index.cpu()])

    def flip(self, dim: int) -> StreamImages:
        assert dim in (3, -1)  # a mirror image (test-time augmentation)
        return replace(self, flipped=not self.flipped)

    def to(self, device: torch.device) -> StreamImages:
        return replace(self, device=torch.device(device))

    def cropped(self, height: int, width: int) -> StreamImages:
        return replace(self, crop=(height, width))


def read_rows(images: StreamImages, rows: torch.Tensor) -> torch.Tensor:
    """Rows of the file as uint8 (len(rows), C, H, W) on the CPU, centre-cropped and mirrored as the view says."""
    c, h, w = images.stored
    size = c * h * w
    out = _empty_rows(len(rows), c, h, w)
    flat = out.numpy().reshape(len(rows), size)
    with open(images.path, "rb", buffering=0) as f:
        for i, row in enumerate(rows.tolist()):
            if os.preadv(f.fileno(), [flat[i]], row * size) != size:
                raise DataError(f"stream cache {images.path} is truncated (row {row}); delete its folder and run "
                                "again to decode the images anew")
    if images.crop:
        top, left = round((h - images.crop[0]) / 2), round((w - images.crop[1]) / 2)  # torchvision's CenterCrop
        out = out[:, :, top:top + images.crop[0], left:left + images.crop[1]].contiguous()
    return out.flip(3) if images.flipped else out


def _empty_rows(n: int, c: int, h: int, w: int) -> torch.Tensor:
    """In a reader process, straight in shared memory: the batch then goes to training without a copy, and the
    copy DataLoader would make kept the reader's own buffers growing with every batch (measured: +10 MB each)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(n, c, h, w, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(n * c * h * w)
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(n, c, h, w)


class _Batches(torch.utils.data.Dataset):
    """Item i: the rows of batch i (the loader's workers each read whole batches)."""

    def __init__(self, images: StreamImages, batches: list[torch.Tensor]):
        self.images, self.batches = images, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        return read_rows(self.images, self.images.rows[self.batches[i]])


def read_batches(images: StreamImages, batches: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """uint8 CPU batches at the given index lists (into the view), in order, read ahead by `images.workers`
    processes (pinned for a CUDA device); in this process when workers is 0."""
    if images.workers == 0 or len(batches) < 2:
        for index in batches:
            yield read_rows(images, images.rows[index])
        return
    loader = torch.utils.data.DataLoader(_Batches(images, batches), batch_size=None, shuffle=False,
                                         num_workers=min(images.workers, len(batches)), prefetch_factor=2,
                                         pin_memory=images.device.type == "cuda",
                                         generator=torch.Generator(),  # else it draws its seed from torch's
                                         # global generator: dropout would see other numbers than resident runs
                                         multiprocessing_context=_START, worker_init_fn=_die_with_parent)
    # Forked readers share this process's pages until one is written; the garbage collector writes to every object
    # it scans, so each reader would soon hold its own copy of them (measured: +250 MB per reader). Frozen objects
    # are never scanned, in the readers either; the parent collects them again once its readers have forked.
    gc.freeze()
    try:
        batches_read = iter(loader)  # forks the readers
    finally:
        gc.unfreeze()
    yield from batches_read


def _die_with_parent(_: int) -> None:
    """A forked reader holds a copy of every descriptor, the run directory's flock included: after a kill -9 of
    training it would keep the run "in use" for the seconds DataLoader takes to notice. On Linux the kernel kills
    it with its parent instead (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


# ------------------------------------------------------------------------------------------------ the cache


@dataclass
class StreamSet:
    """The fields of datasets.RawData (data.py splits both alike), and where the rows are."""

    train_images: StreamImages
    train_labels: torch.Tensor
    test_images: StreamImages
    test_labels: torch.Tensor
    classes: list[str]
    val_index: torch.Tensor
    folder: Path  # the cache's directory
    skipped: list[str]  # unreadable images left out, one line each: "path: why"


def stream_key(listing: FolderListing) -> str:
    """Every file's relative path, label, size and mtime, and the stored shape: touch an image, get a new cache."""
    digest = hashlib.sha256(f"{CACHE_VERSION} {listing.shape}\n".encode())
    prefix = len(str(listing.root)) + 1
    for part, files in (("train", listing.train_files), ("test", listing.test_files)):
        for path, label in files:
            try:
                st = os.stat(path)
            except OSError as err:
                raise DataError(f"imagefolder: cannot read {path} ({one_line(err, 200)})") from None
            digest.update(f"{part}\0{path[prefix:]}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def open_stream(cfg: DatasetConfig) -> StreamSet:
    """The folder's stream cache, decoded first if it is not there yet."""
    listing = list_folder(cfg)
    folder = Path(cfg.cache_dir).expanduser() / "stream" / stream_key(listing)
    index = read_index(folder)
    if index is None:
        index = build_cache(listing, folder, cfg.workers)
    stored = tuple(index["shape"])
    train_labels = torch.tensor(index["train_labels"], dtype=torch.int64)
    if len(train_labels) == 0 or len(index["test_labels"]) == 0:
        raise DataError(f"imagefolder: no readable image under {listing.root / 'train'} or its test split "
                        f"({len(index['skipped'])} unreadable, e.g. {index['skipped'][:1]})")
    views = [StreamImages(str(folder / f"{part}.u8"), stored, torch.arange(len(index[f"{part}_labels"])),
                          workers=cfg.workers) for part in ("train", "test")]
    return StreamSet(views[0], train_labels, views[1], torch.tensor(index["test_labels"], dtype=torch.int64),
                     listing.classes, val_index_of(train_labels, listing.classes, cfg, listing.root), folder,
                     index["skipped"])


def read_index(folder: Path) -> dict | None:
    try:
        index = json.loads((folder / "index.json").read_text())
        sizes = [(folder / f"{p}.u8").stat().st_size for p in ("train", "test")]
    except (OSError, ValueError):
        return None
    row = int(np.prod(index["shape"]))
    if sizes != [row * len(index["train_labels"]), row * len(index["test_labels"])]:
        log.warning("ignoring the incomplete stream cache %s; decoding again", folder)
        return None
    return index


def build_cache(listing: FolderListing, folder: Path, workers: int) -> dict:
    """Decode every image once (in `workers` processes) into train.u8 / test.u8, then write index.json."""
    folder.mkdir(parents=True, exist_ok=True)
    log.info("decoding %d images under %s into %s (once; %.1f GB)", len(listing.train_files) +
             len(listing.test_files), listing.root, folder, listing.decoded_bytes / 1e9)
    index: dict = {"version": CACHE_VERSION, "shape": listing.shape, "classes": listing.classes, "skipped": []}
    for part, files in (("train", listing.train_files), ("test", listing.test_files)):
        labels: list[int] = []
        atomic_write(folder / f"{part}.u8", lambda f, files=files, labels=labels: _decode_into(
            f, files, listing.shape, workers, labels, index["skipped"]))
        index[f"{part}_labels"] = labels
    if index["skipped"]:
        log.warning("skipped %d unreadable images (listed in %s), e.g. %s", len(index["skipped"]),
                    folder / "index.json", index["skipped"][0])
    atomic_write(folder / "index.json", json.dumps(index))
    return index


def _decode_into(f, files: list[tuple[str, int]], shape: list[int], workers: int, labels: list[int],
                 skipped: list[str], chunk_bytes: int = 32 << 20) -> None:
    """Decoded rows written in file order; an image that cannot be decoded is skipped and named, never fatal.
    Threads, not processes: the decoders (libjpeg-turbo, PIL, torch's resize) release the GIL, and a process
    pool forked from a multi-threaded parent can deadlock on a lock some thread held at the fork."""
    chunk = max(4 * workers, 1, chunk_bytes // math.prod(shape))
    with ThreadPoolExecutor(max(workers, 1)) as pool:
        for start in range(0, len(files), chunk):  # a chunk at a time: memory bounded by the chunk, not the set
            part = files[start:start + chunk]
            for (path, label), result in zip(part, pool.map(_decode_row, [(p, shape) for p, _ in part]), strict=True):
                if isinstance(result, str):
                    skipped.append(f"{path}: {result}")
                    continue
                f.write(result)
                labels.append(label)
            if (start // chunk) % 100 == 99:
                log.info("decoded %d of %d images", start + len(part), len(files))


def _decode_row(job: tuple[str, list[int]]) -> bytes | str:
    """One image's row, or why it could not be read (a decoder's exception of any kind: the file is unreadable)."""
    path, shape = job
    try:
        return _decode(path, shape).numpy().tobytes()
    except Exception as err:
        return one_line(err, 200)


def skipped_images(images: StreamImages) -> list[str]:
    """The unreadable images the cache left out ("path: why"), as its index lists them."""
    index = read_index(Path(images.path).parent)
    return index["skipped"] if index else []


# ------------------------------------------------------------------------------------------------ statistics


def channel_mean_std(images: StreamImages, chunk_bytes: int = 16 << 20) -> tuple[torch.Tensor, torch.Tensor]:
    """preprocess.channel_mean_std over a streamed split, from per-channel histograms read chunk by chunk (the
    same formula, so a split gives the same constants streamed or resident). Cached beside the rows."""
    key = hashlib.sha256(images.rows.numpy().tobytes()).hexdigest()[:16]
    path = Path(images.path).with_name(f"stats-{key}.json")
    try:
        stats = json.loads(path.read_text())
        return torch.tensor(stats["mean"]), torch.tensor(stats["std"])
    except (OSError, ValueError, KeyError):
        pass
    counts = torch.zeros(images.stored[0], 256, dtype=torch.int64)
    batches = list(torch.arange(len(images)).split(max(1, chunk_bytes // math.prod(images.stored))))
    for index in batches:  # in this process: one pass, nothing to read ahead (readers would copy its pages)
        batch = read_rows(images, images.rows[index])
        for c in range(batch.shape[1]):
            counts[c] += torch.bincount(batch[:, c].reshape(-1), minlength=256)
    mean, std = _mean_std(counts)
    atomic_write(path, json.dumps({"mean": mean.tolist(), "std": std.tolist()}))
    return mean, std


def _mean_std(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for channel in counts:
        n = channel.double().sum()
        mean = (channel.double() * values).sum() / n
        var = (channel.double() * (values - mean) ** 2).sum() / max(n - 1, 1)
        means.append(mean / 255.0)
        stds.append(var.sqrt() / 255.0)
    return torch.stack(means).float(), torch.stack(stds).clamp_min(1e-6).float()
