"""Datasets through the code users run: tiny files in each official format (CIFAR-10/100 pickles, MNIST idx,
SVHN .mat, image folders), loaded by `nin data` and `load_data`; splits, caches, augmentation."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from nin_cli.data import Split, load_data, to_input, train_batches, translate_and_flip
from nin_cli.datasets import read_dataset
from nin_cli.overrides import load_config

CPU = torch.device("cpu")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def dataset_cfg(*overrides: str):
    return load_config(list(overrides)).dataset


# ------------------------------------------------------------------------------- official formats, tiny


def write_cifar(root: Path, monkeypatch, name: str = "cifar10", per_batch: int = 12, n_test: int = 10) -> dict:
    """Official python pickles (+ meta) under root/<base_folder>; torchvision's expected MD5s are set to theirs."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    g = np.random.RandomState(1)
    arrays = {}
    for fname, _ in cls.train_list + cls.test_list:
        n = n_test if fname in ("test_batch", "test") else per_batch * (5 if name == "cifar100" else 1)
        data = g.randint(0, 256, size=(n, 3072)).astype(np.uint8)
        if name == "cifar10":
            entry = {"batch_label": fname, "labels": g.randint(0, 10, n).tolist(), "data": data}
        else:
            entry = {"fine_labels": g.randint(0, 100, n).tolist(), "coarse_labels": g.randint(0, 20, n).tolist(),
                     "data": data}
        arrays[fname] = entry
        (folder / fname).write_bytes(pickle.dumps(entry, protocol=2))
    meta = ({"label_names": [f"c{i}" for i in range(10)]} if name == "cifar10" else
            {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]})
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps(meta, protocol=2))
    monkeypatch.setattr(cls, "train_list", [[f, md5(folder / f)] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, md5(folder / f)] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / cls.meta["filename"])})
    return arrays


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root: Path, monkeypatch, n_train: int = 30, n_test: int = 8) -> dict:
    """The four official idx files, gzipped, under root/MNIST/raw (as torchvision's download leaves them)."""
    from torchvision import datasets

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = np.random.RandomState(2)
    arrays = {"train-images-idx3-ubyte": g.randint(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": g.randint(0, 10, n_train),
              "t10k-images-idx3-ubyte": g.randint(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": g.randint(0, 10, n_test)}
    for fname, array in arrays.items():
        (raw / f"{fname}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    monkeypatch.setattr(datasets.MNIST, "resources", [(f, md5(raw / f)) for f, _ in datasets.MNIST.resources])
    return arrays


def write_svhn(root: Path, monkeypatch, per_class: dict | None = None) -> dict:
    """train/extra/test_32x32.mat as the official files: X (32, 32, 3, N) uint8, y (N, 1) with 10 for digit 0."""
    from scipy.io import savemat
    from torchvision import datasets

    per_class = per_class or {"train": 6, "extra": 4, "test": 2}
    root.mkdir(parents=True, exist_ok=True)
    g = np.random.RandomState(3)
    arrays, split_list = {}, dict(datasets.SVHN.split_list)
    for split, k in per_class.items():
        digits = g.permutation(np.repeat(np.arange(1, 11), k)).astype(np.uint8)  # labels 1..10, shuffled
        x = g.randint(0, 256, (32, 32, 3, len(digits))).astype(np.uint8)
        url, fname, _ = split_list[split]
        savemat(root / fname, {"X": x, "y": digits[:, None]})
        arrays[split] = (x, digits)
        split_list[split] = [url, fname, md5(root / fname)]
    monkeypatch.setattr(datasets.SVHN, "split_list", split_list)
    return arrays


def write_folder(root: Path, classes: dict[str, int], test: dict[str, int] | None = None, size: int = 8,
                 fmt: str = "png") -> None:
    from PIL import Image

    g = np.random.RandomState(4)
    for part, counts in (("train", classes), ("test", test or classes)):
        for name, n in counts.items():
            (root / part / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = g.randint(0, 256, (size, size, 3)).astype(np.uint8)
                Image.fromarray(pixels).save(root / part / name / f"{i:03d}.{fmt}")


# ---------------------------------------------------------------------------------------------- CIFAR


def test_cifar10_official_pickles_load_with_the_paper_split(nin, tmp_path, monkeypatch):
    arrays = write_cifar(tmp_path / "data", monkeypatch)
    result = nin("data", "dataset=cifar10", f"dataset.root={tmp_path / 'data'}", "dataset.val_size=20",
                 "dataset.preprocessing=mean_std", "--json")
    assert result.code == 0, result.err
    assert result.json() == {"dataset": "cifar10", "root": str(tmp_path / "data"),
                             "splits": {"train": 40, "val": 20, "test": 10}, "image_shape": [3, 32, 32],
                             "num_classes": 10, "preprocessing": "mean_std"}
    data = load_data(dataset_cfg("dataset=cifar10", f"dataset.root={tmp_path / 'data'}", "dataset.val_size=20",
                                 "dataset.preprocessing=none"), CPU)
    every = np.concatenate([arrays[f"data_batch_{i}"]["data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    labels = sum((arrays[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert torch.equal(data.train.images, torch.from_numpy(every[:40]))  # row-major RGB planes → NCHW
    assert torch.equal(data.val.images, torch.from_numpy(every[40:]))  # the LAST images are validation
    assert data.val.labels.tolist() == labels[40:] and data.train.labels.dtype == torch.int64
    assert torch.equal(data.test.images, torch.from_numpy(arrays["test_batch"]["data"].reshape(-1, 3, 32, 32)))
    assert data.classes == [f"c{i}" for i in range(10)]
    retrain = load_data(dataset_cfg("dataset=cifar10", f"dataset.root={tmp_path / 'data'}", "dataset.val_size=20",
                                    "dataset.preprocessing=none", "dataset.train_on=train+val"), CPU)
    assert len(retrain.train) == 60 and len(retrain.val) == 20


@pytest.mark.parametrize("labels,count", [("fine", 100), ("coarse", 20)])
def test_cifar100_fine_and_coarse_labels(tmp_path, monkeypatch, labels, count):
    arrays = write_cifar(tmp_path, monkeypatch, "cifar100")
    raw = read_dataset(dataset_cfg("dataset=cifar100", f"dataset.root={tmp_path}", "dataset.val_size=10",
                                   f"dataset.labels={labels}"))
    key = f"{labels}_labels"
    assert raw.train_labels.tolist() == arrays["train"][key] and raw.test_labels.tolist() == arrays["test"][key]
    assert len(raw.classes) == count and 0 <= raw.train_labels.min() and raw.train_labels.max() < count
    assert raw.train_images.shape == (60, 3, 32, 32) and raw.val_index.tolist() == list(range(50, 60))


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server for tmp_path/www (loopback only: tests never touch the network)."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    (tmp_path / "www").mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=tmp_path / "www"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_fetches_and_checks_the_archive(nin, tmp_path, monkeypatch, http_server):
    """`--download` through torchvision's real download and MD5 check, served from the loopback."""
    from torchvision import datasets

    write_cifar(tmp_path / "src", monkeypatch)
    archive = tmp_path / "www" / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(datasets.CIFAR10, "url", f"{http_server}/cifar-10-python.tar.gz")
    monkeypatch.setattr(datasets.CIFAR10, "tgz_md5", md5(archive))
    result = nin("data", "dataset=cifar10", f"dataset.root={tmp_path / 'fresh'}", "dataset.val_size=10",
                 "dataset.preprocessing=none", "--download", "--json")
    assert result.code == 0, result.err
    assert result.json()["splits"] == {"train": 50, "val": 10, "test": 10}  # stdout holds the JSON alone
    assert (tmp_path / "fresh" / "cifar-10-batches-py" / "data_batch_5").is_file()


# ------------------------------------------------------------------------------------------- MNIST, SVHN


def test_mnist_idx_files_load_with_last_images_as_validation(nin, tmp_path, monkeypatch):
    arrays = write_mnist(tmp_path, monkeypatch)
    result = nin("data", "dataset=mnist", f"dataset.root={tmp_path}", "dataset.val_size=10", "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert report["splits"] == {"train": 20, "val": 10, "test": 8} and report["image_shape"] == [1, 28, 28]
    assert report["num_classes"] == 10 and report["preprocessing"] == "none"
    data = load_data(dataset_cfg("dataset=mnist", f"dataset.root={tmp_path}", "dataset.val_size=10"), CPU)
    images = torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.uint8)).unsqueeze(1)
    assert torch.equal(data.val.images, images[20:]) and data.train.images.dtype == torch.uint8
    assert data.val.labels.tolist() == arrays["train-labels-idx1-ubyte"][20:].tolist()
    np.testing.assert_allclose(to_input(data.test.images, data.preprocessing).numpy(),
                               arrays["t10k-images-idx3-ubyte"][:, None] / 255.0, rtol=1e-6)


def test_svhn_train_extra_split_per_class_and_gcn_lcn(tmp_path, monkeypatch):
    from test_preprocess import gcn_ref, lcn_ref

    arrays = write_svhn(tmp_path, monkeypatch)
    cfg = dataset_cfg("dataset=svhn", f"dataset.root={tmp_path}", "dataset.svhn_val_per_class=2",
                      "dataset.svhn_extra_val_per_class=1")
    data = load_data(cfg, CPU)
    assert (len(data.train), len(data.val), len(data.test)) == (60 + 40 - 30, 30, 20)
    assert data.train.images.dtype == torch.float16 and data.image_shape == [3, 32, 32]
    assert sorted(set(data.train.labels.tolist())) == list(range(10))  # the label 10 means digit 0
    assert torch.bincount(data.val.labels).tolist() == [3] * 10  # 2 per class from train + 1 from extra
    x_train, y_train = arrays["train"]
    first_val = [i for i in range(60) if y_train[i] % 10 == data.val.labels[0].item()][-2]  # last 2 of its class
    expected = lcn_ref(gcn_ref(x_train[..., first_val].transpose(2, 0, 1)[None]))
    np.testing.assert_allclose(data.val.images[0:1].float().numpy(), expected, rtol=2e-3, atol=2e-3)
    assert data.preprocessing["kind"] == "gcn_lcn"
    only_train = read_dataset(dataset_cfg("dataset=svhn", f"dataset.root={tmp_path}", "dataset.svhn_extra=false",
                                          "dataset.svhn_val_per_class=2"))
    assert len(only_train.train_labels) == 60 and len(only_train.val_index) == 20


# ----------------------------------------------------------------------------------------- image folders


def test_imagefolder_decodes_once_and_caches_by_content(nin, tmp_path, monkeypatch):
    from nin_cli import datasets

    write_folder(tmp_path / "tree", {"cat": 5, "dog": 5}, {"cat": 2, "dog": 2})
    args = ["dataset=imagefolder", f"dataset.root={tmp_path / 'tree'}", "dataset.image_shape=[3,8,8]",
            "dataset.val_size=4", f"dataset.cache_dir={tmp_path / 'cache'}"]
    result = nin("data", *args, "--json")
    assert result.code == 0, result.err
    assert result.json()["splits"] == {"train": 6, "val": 4, "test": 4} and result.json()["num_classes"] == 2
    assert len(list((tmp_path / "cache" / "imagefolder").glob("*.pt"))) == 1
    monkeypatch.setattr(datasets, "_decode", lambda *a: pytest.fail("decoded again despite the cache"))
    data = load_data(dataset_cfg(*args), CPU)
    from PIL import Image

    first = np.array(Image.open(tmp_path / "tree" / "train" / "cat" / "000.png"))
    assert torch.equal(data.train.images[0], torch.from_numpy(first).permute(2, 0, 1))
    assert data.classes == ["cat", "dog"] and data.val.labels.tolist() == [0, 0, 1, 1]  # last 2 of each class
    monkeypatch.undo()
    write_folder(tmp_path / "tree", {"cat": 1}, {"cat": 0}, size=16)  # new content (and a 16×16 image)
    resized = load_data(dataset_cfg(*args), CPU)
    assert len(list((tmp_path / "cache" / "imagefolder").glob("*.pt"))) == 2
    assert resized.train.images.shape[1:] == (3, 8, 8)


def test_train_runs_on_an_imagefolder(nin, tmp_path):
    write_folder(tmp_path / "tree", {"a": 6, "b": 6}, {"a": 2, "b": 2}, size=16, fmt="jpg")
    result = nin("train", "dataset=imagefolder", f"dataset.root={tmp_path / 'tree'}", "dataset.image_shape=[3,16,16]",
                 "dataset.val_size=4", f"dataset.cache_dir={tmp_path / 'cache'}", "model=nin_small",
                 "trainer.batch_size=4", "trainer.epochs=1", "trainer.progress=none", "dataset.translate=2",
                 "dataset.flip=true", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.code == 0, result.err
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


# ------------------------------------------------------------------------------------ preprocessing, caches


def test_gcn_zca_is_fitted_once_and_cached(tmp_path, monkeypatch):
    from nin_cli import data as data_module

    args = ["dataset=synthetic", "dataset.image_shape=[3,6,6]", "dataset.size=80", "dataset.val_size=16",
            "dataset.preprocessing=gcn_zca", f"dataset.cache_dir={tmp_path}"]
    first = load_data(dataset_cfg(*args), CPU)
    assert first.train.images.dtype == torch.float16 and first.preprocessing["zca_matrix"].shape == (108, 108)
    monkeypatch.setattr(data_module, "fit_zca", lambda *a, **k: pytest.fail("ZCA fitted again"))
    second = load_data(dataset_cfg(*args), CPU)
    assert torch.equal(first.train.images, second.train.images)
    raw = read_dataset(dataset_cfg(*args))  # raw uint8 through to_input = what training stored, exactly
    assert torch.equal(to_input(raw.test_images, first.preprocessing), first.test.images.float())


@pytest.mark.parametrize("tamper", ["another_key", "wrong_shape", "nan"])
def test_a_readable_but_wrong_zca_cache_is_refitted_not_trusted(tmp_path, tamper):
    """A cache file swapped for another training set's fit (same name), cut to another shape or holding NaNs is
    refitted: the run trains on this training set's whitening, the same as a run with no cache."""
    args = ["dataset=synthetic", "dataset.image_shape=[3,6,6]", "dataset.size=80", "dataset.val_size=16",
            "dataset.preprocessing=gcn_zca", f"dataset.cache_dir={tmp_path}"]
    first = load_data(dataset_cfg(*args), CPU)
    (path,) = (tmp_path / "zca").glob("*.pt")
    cached = torch.load(path, weights_only=True)
    if tamper == "another_key":
        cached["key"] = "0" * 16 + "-s55-b0.1"
        cached["zca_matrix"] = torch.eye(108)
    elif tamper == "wrong_shape":
        cached["zca_matrix"] = cached["zca_matrix"][:100, :100].contiguous()
    else:
        cached["zca_matrix"][3, 5] = float("nan")
    torch.save(cached, path)
    second = load_data(dataset_cfg(*args), CPU)
    assert torch.equal(second.preprocessing["zca_matrix"], first.preprocessing["zca_matrix"])
    assert torch.equal(second.train.images, first.train.images)
    assert torch.equal(torch.load(path, weights_only=True)["zca_matrix"], first.preprocessing["zca_matrix"])


# ------------------------------------------------------------------------------------------- augmentation


def test_translate_and_flip_match_explicit_crops():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 5, 7), generator=g, dtype=torch.uint8)
    shifts = torch.randint(0, 5, (6, 2), generator=g)
    flips = torch.tensor([True, False, True, False, False, True])
    out = translate_and_flip(images, shifts, flips, pad=2)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(6):
        dy, dx = shifts[i].tolist()
        crop = padded[i, :, dy:dy + 5, dx:dx + 7]
        assert torch.equal(out[i], crop.flip(2) if flips[i] else crop)
    assert torch.equal(translate_and_flip(images, None, torch.ones(6, dtype=torch.bool), 0), images.flip(3))
    assert torch.equal(translate_and_flip(images, None, torch.zeros(6, dtype=torch.bool), 0), images)
    half = translate_and_flip(images.half(), shifts, flips, pad=2)
    assert half.dtype == torch.float16 and torch.equal(half, out.half())


def test_train_batches_are_seeded_resumable_and_stay_in_the_padded_image():
    g = torch.Generator().manual_seed(1)
    split = Split(torch.randint(1, 256, (24, 3, 6, 6), generator=g, dtype=torch.uint8), torch.arange(24))
    run = [b for b in train_batches(split, 8, seed=3, epoch=2, translate=2, flip=True)]
    again = [b for b in train_batches(split, 8, seed=3, epoch=2, translate=2, flip=True)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(run, again, strict=True))
    other = [b for b in train_batches(split, 8, seed=3, epoch=3, translate=2, flip=True)]
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(run, other, strict=True))  # a new order each epoch
    resumed = list(train_batches(split, 8, seed=3, epoch=2, translate=2, flip=True, start_step=1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(run[1:], resumed, strict=True))
    labels = torch.cat([b[1] for b in run])
    assert sorted(labels.tolist()) == list(range(24))  # each image once per epoch
    padded = torch.nn.functional.pad(split.images, (2, 2, 2, 2))
    for images, idx in run:  # every output is a 6×6 window of its padded image, maybe mirrored
        for image, i in zip(images, idx.tolist(), strict=True):
            windows = [padded[i, :, y:y + 6, x:x + 6] for y in range(5) for x in range(5)]
            assert any(torch.equal(image, w) or torch.equal(image, w.flip(2)) for w in windows)
