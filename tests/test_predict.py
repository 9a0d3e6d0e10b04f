"""`nin predict`: new image files get the probabilities `nin eval`'s model gives the same images; unreadable,
special and oversized files are skipped with a count; an empty input is exit 3."""

from __future__ import annotations

import csv
import json
import os
import signal
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_thread")

DIGITS = ["experiment=demo_digits", "trainer.num_threads=1", "trainer.progress=plain"]


def train_digits(run: Path, epochs: int) -> Path:
    """A demo_digits run of `epochs` epochs (about a second each); its best.pt. Shared with test_finetune."""
    from nin_cli.cli import main

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(run.parent)
        patch.setattr(sys, "argv", ["nin", "train", *DIGITS, f"trainer.epochs={epochs}", f"hydra.run.dir={run}"])
        with pytest.raises(SystemExit) as exit_:
            main()
    torch.set_num_threads(threads)
    assert exit_.value.code == 0, (run / "train.log").read_text()[-2000:]
    return run / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return train_digits(tmp_path_factory.mktemp("digits") / "run", epochs=3)


@pytest.fixture(scope="module")
def test_pngs(ckpt, tmp_path_factory) -> tuple[list[Path], torch.Tensor, torch.Tensor]:
    """The first 12 digits test images as 8×8 grey PNGs (lossless: the files hold training's exact uint8), in a
    folder with a sub-folder (found recursively); sorted names, so the folder's order is the test split's."""
    from nin_cli.data import raw_test_images
    from nin_cli.trained import load_trained

    test = raw_test_images(load_trained(ckpt, device="cpu").cfg.dataset, 12)
    raw = test.images
    folder = tmp_path_factory.mktemp("pngs")
    paths = []
    for i, image in enumerate(raw):
        sub = folder / ("a" if i < 6 else "b")
        sub.mkdir(exist_ok=True)
        paths.append(sub / f"{i:02d}.png")
        Image.fromarray(image[0].numpy()).save(paths[-1])
    return paths, raw, test.labels


def eval_probs(ckpt: Path, raw: torch.Tensor, tta: bool) -> torch.Tensor:
    """What `nin eval` computes for these images: its own model loading and scoring function."""
    from nin_cli.data import Split
    from nin_cli.metrics import predict_log_probs
    from nin_cli.trained import load_trained

    trained = load_trained(ckpt, device="cpu")
    split = Split(raw, torch.zeros(len(raw), dtype=torch.int64))
    return predict_log_probs(trained.model, split, trained.preprocessing, 5, tta).exp()


@pytest.mark.parametrize("tta", [False, True])
def test_predictions_are_the_eval_models_on_the_same_images(nin, ckpt, test_pngs, tta):
    paths, raw, labels = test_pngs
    args = ["--tta"] if tta else []
    result = nin("predict", ckpt, paths[0].parent.parent, "--top", "3", "--batch-size", "5", "--json", *args)
    assert result.code == 0, result.err
    report = result.json()
    assert report["n"] == 12 and report["skipped"] == [] and report["top"] == 3 and report["tta"] is tta
    assert [row["path"] for row in report["predictions"]] == [str(p) for p in paths]
    expected = eval_probs(ckpt, raw, tta)
    for row, probs in zip(report["predictions"], expected, strict=True):
        values, indices = probs.topk(3)
        assert [t["class"] for t in row["top"]] == [str(c) for c in indices.tolist()]
        assert [t["probability"] for t in row["top"]] == pytest.approx(values.tolist(), abs=1e-5)
    # a 3-epoch model (about 5 % test error) gets most of them right: the files were read as the digits they are
    predicted = [int(row["top"][0]["class"]) for row in report["predictions"]]
    assert sum(a == b for a, b in zip(predicted, labels.tolist(), strict=True)) >= 9


def test_top_k_is_ordered_and_all_classes_sum_to_one(nin, ckpt, test_pngs):
    paths = test_pngs[0]
    result = nin("predict", ckpt, *paths[:4], "--top", "99", "--json")  # clamped to the 10 classes
    assert result.code == 0, result.err
    for row in result.json()["predictions"]:
        probs = [t["probability"] for t in row["top"]]
        assert len(probs) == 10 and probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert sorted(t["class"] for t in row["top"]) == [str(d) for d in range(10)]


def test_csv_and_json_files_hold_the_rows_written_atomically(nin, ckpt, test_pngs, tmp_path):
    paths = test_pngs[0]
    printed = nin("predict", ckpt, *paths[:5], "--top", "2", "--json")
    rows = printed.json()["predictions"]
    out = tmp_path / "preds.csv"
    assert nin("predict", ckpt, *paths[:5], "--top", "2", "--out", out).code == 0
    with out.open() as f:
        table = list(csv.reader(f))
    assert table[0] == ["path", "class_1", "probability_1", "class_2", "probability_2"]
    assert len(table) == 6
    for line, row in zip(table[1:], rows, strict=True):
        assert line[0] == row["path"] and [line[1], line[3]] == [t["class"] for t in row["top"]]
        assert [float(line[2]), float(line[4])] == [t["probability"] for t in row["top"]]  # full precision
    as_json = tmp_path / "preds.json"
    assert nin("predict", ckpt, *paths[:5], "--top", "2", "--out", as_json).code == 0
    assert json.loads(as_json.read_text())["predictions"] == rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.csv", "preds.json"]  # no temp file left


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, width: int, height: int) -> None:
    """A 100-byte PNG declaring width×height pixels (a grey 8-bit IHDR, an empty IDAT): refused from its header."""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b""))


def test_unreadable_files_are_listed_and_skipped_never_a_hang_or_traceback(nin, ckpt, test_pngs, tmp_path,
                                                                           monkeypatch):
    import nin_cli.predict as predict

    paths = test_pngs[0]
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = [folder / "good0.png", folder / "good1.png"]
    for src, dst in zip(paths, good, strict=False):
        dst.write_bytes(src.read_bytes())
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    (folder / "empty.jpg").write_bytes(b"")
    os.mkfifo(folder / "fifo.png")  # opening it for reading would block forever without O_NONBLOCK
    bomb_png(folder / "bomb.png", 12_000, 12_000)  # over our 100 M, under PIL's 179 M error
    big = folder / "big.png"  # a real image over the (lowered) size bound
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(big)
    monkeypatch.setattr(predict, "MAX_IMAGE_BYTES", big.stat().st_size - 1)
    signal.alarm(60)  # a hang fails the test instead of stalling the suite
    try:
        result = nin("predict", ckpt, folder, "/dev/zero", tmp_path / "missing.png", "--json")
    finally:
        signal.alarm(0)
    assert result.code == 0, result.err
    report = result.json()
    assert [row["path"] for row in report["predictions"]] == [str(p) for p in good]
    reasons = {Path(item["path"]).name: item["reason"] for item in report["skipped"]}
    assert set(reasons) == {"big.png", "bomb.png", "corrupt.png", "empty.jpg", "fifo.png", "zero", "missing.png"}
    assert reasons["bomb.png"].startswith("12000×12000 pixels, more than")
    assert reasons["fifo.png"] == reasons["zero"] == "not a regular file"
    assert "more than" in reasons["big.png"] and "empty" in reasons["empty.jpg"]
    assert "skipped 7 unreadable image(s):" in result.err and "Traceback" not in result.err


def test_an_empty_or_wholly_unreadable_input_is_exit_3_and_a_bad_out_exit_2(nin, ckpt, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("not an image")  # not an image extension: not looked at
    result = nin("predict", ckpt, empty)
    assert result.code == 3 and len(result.err_lines) == 1 and result.err_lines[0].startswith("nin: error: no images")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"junk")
    result = nin("predict", ckpt, bad)
    assert result.code == 3 and "none of the 1 image file(s) could be read" in result.err_lines[-1]
    result = nin("predict", ckpt, bad, "--out", tmp_path)  # a directory
    assert result.code == 2 and "--out" in result.err and result.out == ""


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision 0.29's, from _decode called alone
@pytest.mark.parametrize("shape", [[3, 16, 16], [1, 8, 8], [3, 20, 30]])
@pytest.mark.parametrize("fmt", ["png", "jpg", "bmp"])
def test_the_decoder_is_the_image_folder_loaders(tmp_path, shape, fmt):
    """Bit for bit what training decoded (resize included), also for BMP, which only PIL reads."""
    from nin_cli.datasets import _decode
    from nin_cli.predict import decode_image

    pixels = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / f"x.{fmt}"
    Image.fromarray(pixels).save(path)
    ours = decode_image(path.read_bytes(), shape)
    assert ours.dtype == torch.uint8 and list(ours.shape) == shape
    assert torch.equal(ours, _decode(str(path), shape))


def test_a_16_bit_png_is_read_as_its_top_8_bits(tmp_path):
    from nin_cli.predict import decode_image

    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16
    path = tmp_path / "deep.png"
    Image.fromarray(pixels).save(path)
    image = decode_image(path.read_bytes(), [1, 64, 64])
    assert image.dtype == torch.uint8 and torch.equal(image[0], torch.from_numpy((pixels >> 8).astype(np.uint8)))
