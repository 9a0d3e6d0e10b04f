"""Fine-tuning (`trainer.init_from`, `trainer.init_reset`, `trainer.freeze`): a digits model fine-tuned onto a
3-class image folder beats training from scratch after one epoch; mismatched layers keep the new init and are
named; frozen blocks stay as loaded; a resume never loads the source again; bad sources exit 3 / 4."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nin_cli.checkpoint import load_checkpoint
from test_predict import train_digits

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = {"zero": 0, "one": 1, "seven": 7}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A digits model of 4 epochs (about 3 % test error, a few seconds)."""
    return train_digits(tmp_path_factory.mktemp("source") / "run", epochs=4)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """train/ and test/ of 3 classes as 8×8 grey PNGs: scikit-learn's digits 0, 1 and 7 (about 180 each; the
    first 20 of each class are the test split), the digits dataset's own uint8 scaling."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("folder")
    digits = load_digits()
    images = (digits.images * 255.0 / 16.0).round().astype(np.uint8)
    for name, digit in CLASSES.items():
        for j, i in enumerate(np.flatnonzero(digits.target == digit)):
            sub = root / ("test" if j < 20 else "train") / name
            sub.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(sub / f"{i:04d}.png")
    return root


def finetune_args(folder: Path, run: Path, *extra: str) -> list[str]:
    """One epoch on the folder with demo_digits' recipe; the same seed for every run of this file (the CPU is
    deterministic, so each result is the same number every time)."""
    return ["train", "experiment=demo_digits", "dataset=imagefolder", f"dataset.root={folder}",
            "dataset.image_shape=[1,8,8]", "dataset.val_size=60", f"dataset.cache_dir={folder.parent / 'cache'}",
            "trainer.epochs=1", "trainer.seed=0", "trainer.num_threads=1", "trainer.progress=plain",
            f"hydra.run.dir={run}", *extra]


def val_errors(run: Path) -> list[float]:
    return [json.loads(line)["val_error"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def test_a_finetuned_digits_model_beats_scratch_after_one_epoch(nin, source, folder, tmp_path):
    scratch = nin(*finetune_args(folder, tmp_path / "scratch"))
    assert scratch.code == 0, scratch.err
    tuned = nin(*finetune_args(folder, tmp_path / "tuned", f"trainer.init_from={source}"))
    assert tuned.code == 0, tuned.err
    (scratch_error,), (tuned_error,) = val_errors(tmp_path / "scratch"), val_errors(tmp_path / "tuned")
    assert tuned_error + 15 < scratch_error, (tuned_error, scratch_error)  # measured: 0 % against 38.3 %
    # the class-map layer (10 → 3 maps) is the only one left at the new init, and the log line says so
    log = [line for line in (tmp_path / "tuned" / "train.log").read_text().splitlines() if "init_from" in line]
    assert len(log) == 1 and "48 of 50 tensors loaded" in log[0]
    assert "cccp6.weight (source 10×96×1×1, here 3×96×1×1), cccp6.bias (source 10, here 3)" in log[0]
    provenance = json.loads((tmp_path / "tuned" / "provenance.json").read_text())["init_from"]
    assert provenance["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert provenance["loaded"] == 48 and provenance["kept_init"] == ["features.2.body.6.weight",
                                                                      "features.2.body.6.bias"]
    assert "init_from" not in json.loads((tmp_path / "scratch" / "provenance.json").read_text())


def test_frozen_blocks_stay_as_loaded_and_reset_layers_do_not_load(nin, source, folder, tmp_path):
    run = tmp_path / "run"
    result = nin(*finetune_args(folder, run, f"trainer.init_from={source}", "trainer.freeze=[block2,cccp1]",
                                "trainer.init_reset=[conv1]"))
    assert result.code == 0, result.err
    before, after = load_checkpoint(source)["model"], weights(run)
    for key in ("features.1.body.0.weight", "features.1.body.1.weight", "features.1.body.1.bias",  # block2
                "features.1.body.3.weight", "features.0.body.3.weight"):  # its BN affine; cccp1
        assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["features.0.body.6.weight"], before["features.0.body.6.weight"])  # cccp2 trains
    assert not torch.allclose(after["features.0.body.0.weight"], before["features.0.body.0.weight"], atol=0.01)
    assert "this run's init kept for conv1.weight, cccp6.weight" in (run / "train.log").read_text()


def test_a_resume_never_loads_the_source_again(nin, source, folder, tmp_path):
    copy = tmp_path / "source.pt"
    shutil.copy(source, copy)
    run = tmp_path / "run"
    assert nin(*finetune_args(folder, run, f"trainer.init_from={copy}", "trainer.freeze=[block1]")).code == 0
    copy.write_bytes(b"not a checkpoint any more")  # loading it now would be exit 3
    frozen = weights(run)["features.0.body.0.weight"]
    resumed = nin("train", f"resume={run}", "trainer.epochs=2")
    assert resumed.code == 0, resumed.err
    assert len(val_errors(run)) == 2
    assert torch.equal(weights(run)["features.0.body.0.weight"], frozen)  # the freeze still holds after a resume
    assert (run / "train.log").read_text().count("init_from ") == 1


def test_a_missing_or_unsafe_source_or_an_unknown_name_is_one_line(nin, source, folder, tmp_path):
    from test_checkpoint_safety import Canary

    missing = nin(*finetune_args(folder, tmp_path / "a", f"trainer.init_from={tmp_path / 'nope.pt'}"))
    assert missing.code == 3 and missing.err_lines == [f"nin: error: {tmp_path / 'nope.pt'}: no such checkpoint file"]
    evil = tmp_path / "evil.pt"
    torch.save({"format": "nin-checkpoint", "model": {}, "x": Canary(tmp_path / "canary")}, evil)
    unsafe = nin(*finetune_args(folder, tmp_path / "b", f"trainer.init_from={evil}"))
    assert unsafe.code == 4 and len(unsafe.err_lines) == 1 and "exec" in unsafe.err
    assert not (tmp_path / "canary").exists()
    unknown = nin(*finetune_args(folder, tmp_path / "c", f"trainer.init_from={source}", "trainer.freeze=[block9]"))
    assert unknown.code == 2 and len(unknown.err_lines) == 1
    assert "no block or layer named block9; this model has block1, block2, block3, conv1," in unknown.err
    alone = nin(*finetune_args(folder, tmp_path / "d", "trainer.init_reset=[conv1]"))
    assert alone.code == 2 and "trainer.init_from, which is not set" in alone.err
