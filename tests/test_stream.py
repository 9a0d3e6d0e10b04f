"""The streaming path for image folders larger than memory (nin_cli/stream.py): the same batches as the resident
path, bit-exact resume after kill -9 mid-epoch, bounded resident memory, unreadable images skipped and counted,
and the ImageNet preset end to end on a generated ImageNet-format folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_forked
from test_resume import assert_same, assert_same_training, metrics

ONE_THREAD = ["trainer.num_threads=1", "trainer.progress=plain"]


def write_tree(root: Path, train: int, test: int, classes: int = 3, size: int = 12, test_dir: str = "test",
               ext: str = "jpg", vary: int = 1) -> Path:
    """train/<class>/*.<ext> and <test_dir>/<class>/*: random JPEGs, a little class signal in the mean colour.
    Only a handful of distinct files are encoded; the rest are copies (a copy is a file like any other)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for c in range(classes):
        samples = []
        for k in range(4):
            path = root / f"sample{c}_{k}.{ext}"
            pixels = rng.integers(0, 160, (size, size + k * vary, 3)) + 90 * np.eye(3, dtype=np.int64)[c % 3]
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
            samples.append(path)
        for part, count in (("train", train), (test_dir, test)):
            folder = root / part / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                shutil.copyfile(samples[i % 4], folder / f"{i:05d}.{ext}")
    for path in root.glob(f"sample*.{ext}"):
        path.unlink()
    return root


def folder_args(root: Path, cache: Path, *extra: str) -> list[str]:
    return ["dataset=imagefolder", f"dataset.root={root}", f"dataset.cache_dir={cache}", *extra]


# ------------------------------------------------------------------------------------------------ batches


def test_crop_boxes_follow_torchvision_ranges_and_the_seed():
    from nin_cli.data import crop_boxes

    boxes = crop_boxes(2000, 256, 256, torch.Generator().manual_seed(3))
    again = crop_boxes(2000, 256, 256, torch.Generator().manual_seed(3))
    assert torch.equal(boxes, again)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert boxes[:, :2].min() >= 0 and boxes[:, 2].max() <= 256 and boxes[:, 3].max() <= 256
    area = w * h / 256 ** 2
    assert 0.07 < area.min() and area.max() <= 1.0 and 0.45 < area.mean() < 0.62  # uniform on [0.08, 1]: 0.54
    assert (w / h).min() > 0.74 and (w / h).max() < 1.35


def test_streamed_training_is_bit_identical_to_resident_training(tmp_path):
    """Same generator, same augmentation code: only where the pixels come from differs (2 reader processes)."""
    root = write_tree(tmp_path / "tree", train=14, test=4, size=12)
    args = folder_args(root, tmp_path / "cache", "dataset.image_shape=[3,12,12]", "dataset.val_size=6",
                       "dataset.translate=2", "dataset.flip=true", "model=nin_small", "trainer.batch_size=8",
                       "trainer.epochs=2", *ONE_THREAD)
    for mode in ("never", "always"):
        result = run_forked("train", *args, f"dataset.stream={mode}", "dataset.workers=2", f"hydra.run.dir={mode}",
                            cwd=tmp_path)
        assert result.code == 0, result.err[-2000:]
    assert len(list((tmp_path / "cache" / "stream").iterdir())) == 1
    resident, streamed = (torch.load(tmp_path / mode / "checkpoints" / "last.pt", weights_only=True)
                          for mode in ("never", "always"))
    for key in resident.keys() - {"sha256", "config", "provenance"}:  # the config differs in dataset.stream alone
        assert_same(resident[key], streamed[key], key)
    assert metrics(tmp_path / "never") == metrics(tmp_path / "always")


# ------------------------------------------------------------------------------------------------ resume


def test_kill_9_mid_epoch_on_the_streaming_path_then_resume_is_bit_exact(tmp_path):
    """test_resume's guarantee on streamed rows with random-resized crops (5 steps an epoch, a checkpoint every 4):
    killed after steps 3, 7 and 12, resumed each time (the last from step 8, mid-epoch 2), the run ends
    bit-identical to one never interrupted."""
    root = write_tree(tmp_path / "tree", train=12, test=3, size=16)
    args = folder_args(root, tmp_path / "cache", "dataset.stream=always", "dataset.resize=16",
                       "dataset.image_shape=[3,12,12]", "dataset.val_size=6", "dataset.flip=true",
                       "dataset.workers=2", "model=nin_small",
                       "trainer.batch_size=6", "trainer.epochs=3", "trainer.checkpoint_every_steps=4", *ONE_THREAD)
    assert run_forked("train", *args, "hydra.run.dir=reference", cwd=tmp_path).code == 0
    for i, step in enumerate((3, 7, 12)):
        result = run_forked("train", *(args if i == 0 else []), "hydra.run.dir=run", cwd=tmp_path,
                            env={"NIN_FAULT_INJECT": f"after_step@{step}=kill"})
        assert result.code == -9, result.err[-2000:]
    final = run_forked("train", "hydra.run.dir=run", cwd=tmp_path)
    assert final.code == 0 and "resuming from" in final.err, final.err[-2000:]
    assert_same_training(tmp_path / "reference", tmp_path / "run")


# ------------------------------------------------------------------------------------------------ memory


def tree_rss_mb(pid: int, field: str = "Pss_Anon:") -> float:
    """Memory a process and all its descendants (DataLoader readers) hold, MB: the sum of their proportional
    anonymous set sizes (heap and tensors; a page shared by forked copies counts once in all). File-backed pages
    are left out: the shared libraries' code (libtorch alone maps ~400 MB, read-only and evictable) and the page
    cache hold no data of the run's own."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
            total += int(next(line.split()[1] for line in rollup.splitlines() if line.startswith(field)))
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


def run_measured(args: list[str], cwd: Path, every_s: float = 0.02) -> tuple[int, float, str]:
    """`nin ARGS` in a subprocess: exit code, peak resident memory of its process tree (MB), stderr."""
    log = (cwd / "stderr.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "nin_cli", *args], cwd=cwd, stdout=log, stderr=log,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_mb(proc.pid))
        time.sleep(every_s)
    log.close()
    return proc.returncode, peak, (cwd / "stderr.log").read_text()


BOUND_MB = 800  # anonymous memory of the whole process tree (python + torch + nin's own heap, then the readers)


def test_training_on_a_folder_3x_larger_than_the_memory_bound_stays_under_it(tmp_path):
    """5,010 JPEGs at 448×448: 3.0 GB decoded, over 3× the bound. The run (auto: above dataset.stream_above_gb=1)
    decodes them all, fits mean/std over every training row, trains a few steps and evaluates; its
    processes' peak memory, summed, stays under the bound (the resident path would hold all 3.0 GB)."""
    root = write_tree(tmp_path / "tree", train=1620, test=50, size=448, vary=0)  # stored as they are: no resize
    args = ["train", *folder_args(root, tmp_path / "cache", "dataset.resize=448", "dataset.stream_above_gb=1",
                                  "dataset.image_shape=[3,32,32]",
                                  "dataset.val_size=30", "dataset.flip=true", "dataset.workers=2"),
            "model=nin_small", "trainer.batch_size=16", "trainer.max_steps_per_epoch=4", "trainer.epochs=1",
            "trainer.eval_batch_size=16", *ONE_THREAD, f"hydra.run.dir={tmp_path / 'run'}"]
    code, peak, err = run_measured(args, tmp_path)
    assert code == 0, err[-2000:]
    decoded = sum(f.stat().st_size for f in (tmp_path / "cache" / "stream").rglob("*.u8"))
    print(f"peak {peak:.0f} MB, decoded {decoded / 2 ** 20:.0f} MB")
    assert decoded > 3 * BOUND_MB * 2 ** 20, decoded
    assert peak < BOUND_MB, f"peak resident memory {peak:.0f} MB, bound {BOUND_MB} MB"
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


# ------------------------------------------------------------------------------------------------ files


def test_unreadable_images_are_skipped_counted_and_named(nin, tmp_path):
    root = write_tree(tmp_path / "tree", train=4, test=2, size=8)
    (root / "train" / "class1" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    (root / "train" / "class2" / "empty.jpg").write_bytes(b"")
    result = nin("data", *folder_args(root, tmp_path / "cache", "dataset.stream=always", "dataset.val_size=3",
                                      "dataset.image_shape=[3,8,8]"), "--json")
    assert result.code == 0, result.err
    report = result.json()
    assert report["stream"] is True and report["splits"] == {"train": 9, "val": 3, "test": 6}
    assert [line.split(":")[0] for line in report["skipped"]] == [str(root / "train" / "class1" / "broken.jpg"),
                                                                  str(root / "train" / "class2" / "empty.jpg")]
    text = nin("data", *folder_args(root, tmp_path / "cache", "dataset.stream=always", "dataset.val_size=3",
                                    "dataset.image_shape=[3,8,8]"))
    assert text.code == 0 and "2 unreadable images skipped" in text.out and "Traceback" not in text.err


def test_auto_streams_above_the_threshold_and_refuses_what_cannot_stream(nin, tmp_path):
    root = write_tree(tmp_path / "tree", train=4, test=2, size=8)
    args = folder_args(root, tmp_path / "cache", "dataset.val_size=3", "dataset.image_shape=[3,8,8]")
    assert nin("data", *args, "--json").json()["stream"] is False  # 3.5 KB: far below 8 GB
    small = nin("data", *args, "dataset.stream_above_gb=0.000001", "--json").json()
    assert small["stream"] is True and small["decoded_gb"] == pytest.approx(18 * 192 / 1e9, abs=1e-3)
    refused = nin("data", "dataset=synthetic", "dataset.stream=always")
    assert refused.code == 2 and "only image folders stream" in refused.err
    zca = nin("data", *args, "dataset.stream=always", "dataset.preprocessing=gcn_zca")
    assert zca.code == 2 and "dataset.preprocessing=gcn_zca" in zca.err


# ------------------------------------------------------------------------------------------------ ImageNet


@pytest.mark.slow
def test_imagenet_preset_trains_evaluates_and_exports_on_an_imagenet_format_folder(nin, tmp_path):
    """train/<class>/*.JPEG and val/<class>/*.JPEG, streamed, the preset's own path: stored at 256, random-resized
    224 crops and flips in training, the centre 224 crop in evaluation; narrower layers to stay fast."""
    root = write_tree(tmp_path / "imagenet", train=6, test=2, classes=3, size=40, test_dir="val", ext="JPEG")
    args = ["experiment=imagenet_nin", f"dataset.root={root}", f"dataset.cache_dir={tmp_path / 'cache'}",
            "dataset.stream=always", "dataset.val_size=3", "dataset.num_classes=3", "trainer.batch_size=5",
            "trainer.epochs=1", "trainer.eval_batch_size=4", "model.blocks.0.widths=[8,8,8]",
            "model.blocks.1.widths=[8,8,8]", "model.blocks.2.widths=[8,8,8]", "model.blocks.3.widths=[8,8,null]",
            *ONE_THREAD]
    report = nin("data", *args, "--json")
    assert report.code == 0, report.err
    assert report.json()["splits"] == {"train": 15, "val": 3, "test": 6} and report.json()["stream"] is True
    assert report.json()["image_shape"] == [3, 224, 224] and report.json()["stored_shape"] == [3, 256, 256]
    trained = nin("train", *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert trained.code == 0, trained.err[-2000:]
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    evaluated = nin("eval", ckpt, "--json")
    assert evaluated.code == 0, evaluated.err
    assert evaluated.json()["n"] == 6
    exported = nin("export", ckpt, "--format", "onnx", "--out", tmp_path / "nin.onnx")
    assert exported.code == 0, exported.err
    assert (tmp_path / "nin.onnx").stat().st_size > 10_000
    # nin predict sees what evaluation saw: the image resized to 256², then its centre 224² crop
    import torch
    import torch.nn.functional as F

    from nin_cli.data import to_input
    from nin_cli.predict import load_image
    from nin_cli.trained import load_trained

    images = sorted((root / "val").rglob("*.JPEG"))
    predicted = nin("predict", ckpt, *images, "--top", "3", "--json")
    assert predicted.code == 0, predicted.err
    model = load_trained(ckpt, device="cpu")
    stored = torch.stack([load_image(str(path), [3, 256, 256]) for path in images])
    with torch.no_grad():
        probs = F.softmax(model.model(to_input(stored[:, :, 16:240, 16:240], model.preprocessing)), dim=1)
    rows = predicted.json()["predictions"]
    assert [row["path"] for row in rows] == [str(path) for path in images]
    for row, p in zip(rows, probs, strict=True):
        assert abs(row["top"][0]["probability"] - p.max().item()) < 1e-5
