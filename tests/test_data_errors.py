"""Every anticipated bad input of the data layer: exit 3 (2 for config) and one line naming what is wrong."""

from __future__ import annotations

import pytest

from test_data import write_cifar, write_folder, write_mnist, write_svhn


def fails(result, code: int, *needles: str) -> None:
    assert result.code == code, (result.code, result.err)
    assert len(result.err_lines) == 1 and "Traceback" not in result.err, result.err
    for needle in needles:
        assert needle in result.err, (needle, result.err)


def test_missing_cifar_files_say_what_was_looked_for_and_how_to_get_it(nin, tmp_path):
    fails(nin("data", "dataset=cifar10", f"dataset.root={tmp_path}"), 3,
          f"not found under {tmp_path / 'cifar-10-batches-py'}", "data_batch_1", "--download",
          "cifar-10-python.tar.gz")


def test_truncated_cifar_batch_is_named(nin, tmp_path, monkeypatch):
    write_cifar(tmp_path, monkeypatch)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:1000])
    fails(nin("data", "dataset=cifar10", f"dataset.root={tmp_path}", "dataset.val_size=5"), 3,
          f"{batch} is truncated or corrupt")


def test_failed_download_is_one_line(nin, tmp_path, monkeypatch):
    from torchvision import datasets

    monkeypatch.setattr(datasets.CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")  # port 9: refused
    fails(nin("data", "dataset=cifar10", f"dataset.root={tmp_path}", "--download"), 3, "the download failed",
          "127.0.0.1:9")


def test_mnist_bad_files_are_named(nin, tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    fails(nin("data", "dataset=mnist", f"dataset.root={tmp_path}"), 3, f"not found under {raw}",
          "train-images-idx3-ubyte.gz", "--download")
    write_mnist(tmp_path, monkeypatch)
    assert nin("data", "dataset=mnist", f"dataset.root={tmp_path}", "dataset.val_size=5").code == 0  # unpacks
    packed = raw / "t10k-labels-idx1-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[:-3])
    fails(nin("data", "dataset=mnist", f"dataset.root={tmp_path}", "dataset.val_size=5"), 3,
          f"{packed} is truncated or corrupt")
    packed.unlink()  # the unpacked idx files remain: a truncated one is named by its header
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    fails(nin("data", "dataset=mnist", f"dataset.root={tmp_path}", "dataset.val_size=5"), 3,
          f"{images} is truncated or corrupt")


def test_svhn_missing_extra_and_corrupt_mat_are_named(nin, tmp_path, monkeypatch):
    write_svhn(tmp_path, monkeypatch, {"train": 6, "test": 2})
    args = ["dataset=svhn", f"dataset.root={tmp_path}", "dataset.svhn_val_per_class=1"]
    fails(nin("data", *args), 3, "missing extra_32x32.mat", "http://ufldl.stanford.edu/housenumbers")
    mat = tmp_path / "train_32x32.mat"
    mat.write_bytes(mat.read_bytes()[:5000])
    fails(nin("data", *args, "dataset.svhn_extra=false"), 3, f"{mat} is truncated or corrupt")


def test_unreadable_image_is_named(nin, tmp_path):
    write_folder(tmp_path / "tree", {"a": 2, "b": 2})
    bad = tmp_path / "tree" / "train" / "b" / "001.png"
    bad.write_bytes(bad.read_bytes()[:40])
    fails(nin("data", "dataset=imagefolder", f"dataset.root={tmp_path / 'tree'}", "dataset.val_size=2",
              f"dataset.cache_dir={tmp_path / 'cache'}"), 3, f"cannot decode {bad}")


@pytest.mark.parametrize("case", ["classes", "no_test", "empty_class"])
def test_bad_folder_trees(nin, tmp_path, case):
    tree = tmp_path / "tree"
    if case == "classes":
        write_folder(tree, {"a": 2, "b": 2}, {"a": 1, "c": 1})
        needles = ["class folders differ", "only in train: b", "only in test: c"]
    elif case == "no_test":
        write_folder(tree, {"a": 2}, {"a": 1})
        (tree / "test" / "a" / "000.png").unlink()
        (tree / "test" / "a").rmdir()
        (tree / "test").rmdir()
        needles = [f"{tree / 'test'} not found"]
    else:
        write_folder(tree, {"a": 2, "b": 2})
        (tree / "train" / "c").mkdir()
        needles = [f"{tree / 'train' / 'c'} holds no images"]
    fails(nin("data", "dataset=imagefolder", f"dataset.root={tree}", "dataset.val_size=0",
              f"dataset.cache_dir={tmp_path / 'cache'}"), 3, *needles)


def test_too_large_val_size_and_zca_on_large_images(nin, tmp_path):
    fails(nin("data", "dataset=synthetic", "dataset.size=100", "dataset.val_size=90"), 3,
          "dataset.val_size=90 leaves no training")
    fails(nin("data", "dataset=synthetic", "dataset.image_shape=[3,80,80]", "dataset.size=8", "dataset.val_size=2",
              "dataset.preprocessing=gcn_zca", f"dataset.cache_dir={tmp_path}"), 2, "19200×19200")


def test_train_writes_no_checkpoint_before_data_loads(nin, tmp_path):
    run = tmp_path / "run"
    fails(nin("train", "dataset=cifar10", f"dataset.root={tmp_path / 'nothing'}", f"hydra.run.dir={run}"), 3,
          "not found under")
    assert not list(run.glob("checkpoints/*"))
