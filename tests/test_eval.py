"""`nin eval`: its metrics equal an independent computation (NumPy + scikit-learn) on the same model and images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, log_loss, top_k_accuracy_score

from conftest import FAST
from nin_cli.config import to_config, to_dict
from nin_cli.data import load_data
from nin_cli.model import build_model
from nin_cli.overrides import load_config

pytestmark = pytest.mark.usefixtures("one_thread")

ZCA_SMALL = ["dataset.preprocessing=gcn_zca", "dataset.image_shape=[3,8,8]"]  # a 192² whitening matrix: fast


def fabricate(tmp_path: Path, overrides: list[str], zca_scale: float = 1.0) -> Path:
    """A checkpoint without training (random weights) whose stored ZCA matrix is scaled by `zca_scale`: a refit
    would give the unscaled one, so results that follow the scaled matrix prove the stored one is used."""
    from nin_cli.checkpoint import save_checkpoint

    cfg = load_config([*FAST, f"dataset.cache_dir={tmp_path / 'cache'}", *overrides])
    data = load_data(cfg.dataset, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.head, data.image_shape, data.num_classes)
    consts = dict(data.preprocessing)
    if "zca_matrix" in consts:
        consts["zca_matrix"] = consts["zca_matrix"] * zca_scale
    path = tmp_path / "fabricated" / "checkpoints" / "best.pt"
    save_checkpoint(path, {"config": to_dict(cfg), "model": model.state_dict(),
                           "data": {"classes": data.classes, "image_shape": data.image_shape,
                                    "preprocessing": consts}})
    return path


def numpy_gcn_zca(images: np.ndarray, consts: dict) -> np.ndarray:
    x = images.reshape(len(images), -1).astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    x = consts["gcn_scale"] * x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)
    x = (x - consts["zca_mean"].double().numpy()) @ consts["zca_matrix"].double().numpy()
    return x.reshape(images.shape).astype(np.float16).astype(np.float32)  # stored as float16, as training does


def independent_metrics(checkpoint: Path, split: str, tta: bool = False, overrides: tuple = ()) -> dict:
    """The same report computed apart from nin's code: preprocessing in NumPy, metrics by scikit-learn."""
    record = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = to_config({**record["config"], "dataset": {**record["config"]["dataset"], "preprocessing": "none",
                                                     **dict(overrides)}})
    part = getattr(load_data(cfg.dataset, torch.device("cpu")), split)
    consts, images = record["data"]["preprocessing"], part.images.numpy()
    if consts["kind"] == "gcn_zca":
        x = numpy_gcn_zca(images, consts)
    else:
        mean, std = (np.asarray(consts[k], dtype=np.float32).reshape(1, -1, 1, 1) for k in ("mean", "std"))
        x = (images.astype(np.float32) / 255.0 - mean) / std
    model = build_model(cfg.model, cfg.head, record["data"]["image_shape"], len(record["data"]["classes"]))
    model.load_state_dict(record["model"])
    model.eval()
    with torch.no_grad():
        views = [torch.from_numpy(x)] + ([torch.from_numpy(x).flip(3)] if tta else [])
        probs = np.mean([torch.softmax(model(v).double(), dim=1).numpy() for v in views], axis=0)
    y, labels = part.labels.numpy(), np.arange(probs.shape[1])
    predicted, confidence = probs.argmax(1), probs.max(1)
    edges = np.linspace(0, 1, 16)
    bins = [(confidence > lo) & (confidence <= hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    ece = sum(np.mean(m) * abs(np.mean(predicted[m] == y[m]) - np.mean(confidence[m])) for m in bins if m.any())
    confusion = confusion_matrix(y, predicted, labels=labels)
    return {"top1_error": 100 * (1 - np.mean(predicted == y)),
            "top5_error": 100 * (1 - top_k_accuracy_score(y, probs, k=5, labels=labels)),
            "nll": log_loss(y, probs, labels=labels), "ece": ece, "confusion": confusion.tolist(), "n": len(y)}


def assert_same(reported: dict, expected: dict) -> None:
    assert reported["n"] == expected["n"] and reported["confusion"] == expected["confusion"]
    for key in ("top1_error", "top5_error"):
        assert reported[key] == pytest.approx(expected[key], abs=1e-9), key
    assert reported["nll"] == pytest.approx(expected["nll"], rel=1e-5)
    assert reported["ece"] == pytest.approx(expected["ece"], abs=1e-5)
    support = np.asarray(expected["confusion"]).sum(1)
    per_class = [c[i] / support[i] if support[i] else None for i, c in enumerate(expected["confusion"])]
    assert list(reported["per_class_accuracy"].values()) == pytest.approx(per_class)


@pytest.fixture(scope="module")
def best(tiny_run) -> Path:
    return tiny_run / "checkpoints" / "best.pt"


def test_eval_json_equals_an_independent_computation(nin, best, tmp_path):
    result = nin("eval", best, "trainer.device=cpu", "--json", "--out", tmp_path / "e1")  # as the reference
    assert result.code == 0, result.err
    reported = result.json()
    assert set(reported) >= {"top1_error", "top5_error", "nll", "ece", "per_class_accuracy", "confusion", "n"}
    assert reported["n"] == 25  # FAST: 128 synthetic images, a fifth of them test
    assert_same(reported, independent_metrics(best, "test"))
    assert list(reported["per_class_accuracy"]) == [f"class{i}" for i in range(10)]


def test_eval_val_split_with_tta_and_an_override(nin, best, tmp_path):
    result = nin("eval", best, "dataset.val_size=32", "trainer.device=cpu", "--split", "val", "--tta", "--json",
                 "--out", tmp_path / "e")
    assert result.code == 0, result.err
    reported = result.json()
    assert reported["n"] == 32 and reported["tta"] is True
    assert_same(reported, independent_metrics(best, "val", tta=True, overrides=(("val_size", 32),)))


def test_eval_report_png_and_tensorboard(nin, best, tiny_run):
    result = nin("eval", best)
    assert result.code == 0, result.err
    assert "top-1 error" in result.out and "confusion matrix" in result.out and "per-class accuracy" in result.out
    out = tiny_run / "eval" / "best_test"  # the default: inside the checkpoint's run directory
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 25
    from PIL import Image

    with Image.open(out / "confusion.png") as image:
        assert image.mode == "RGB" and min(image.size) > 100
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert "eval/test/confusion" in events.Tags()["images"]
    assert events.Scalars("eval/test/top1_error")[0].value == pytest.approx(metrics["top1_error"])


def test_eval_bad_arguments_exit_2_with_one_line(nin, best):
    for args in (["dataset.val_sise=3"], ["--split", "holdout"], ["experiment=demo_digits"], ["model.blocks=[]"]):
        result = nin("eval", best, *args)
        assert result.code == 2, (args, result.err)
        assert len(result.err_lines) == 1, result.err
    assert "did you mean 'dataset.val_size'" in nin("eval", best, "dataset.val_sise=3").err


def test_the_stored_zca_travels_with_the_checkpoint(nin, tmp_path):
    path = fabricate(tmp_path, ZCA_SMALL, zca_scale=0.5)
    result = nin("eval", path, "trainer.device=cpu", "--json")
    assert result.code == 0, result.err
    reported = result.json()
    assert_same(reported, independent_metrics(path, "test"))
    # Overriding a preprocessing key refits on the training split: the unscaled matrix, other outputs.
    refit = nin("eval", path, "dataset.zca_bias=0.1000001", "--json")
    assert refit.code == 0, refit.err
    assert refit.json()["nll"] != pytest.approx(reported["nll"], rel=1e-3)


@pytest.mark.parametrize("stored_scale, asked, refits", [(None, 1.0, False), (64.0, 64.0, False), (None, 2.0, True)])
def test_eval_refits_preprocessing_only_when_a_key_really_changed(monkeypatch, stored_scale, asked, refits):
    """A checkpoint written before a preprocessing key existed (no `input_scale` in its config) had the key's
    default: evaluated as trained it uses its stored constants, with no refit on the training split."""
    from types import SimpleNamespace

    from nin_cli import evaluate as evaluate_module

    cfg = load_config([*FAST, f"dataset.input_scale={asked}"])
    stored = {k: v for k, v in to_dict(cfg)["dataset"].items() if k != "input_scale"}
    if stored_scale is not None:
        stored["input_scale"] = stored_scale
    constants = {"kind": "mean_std", "mean": [0.5] * 3, "std": [0.25] * 3}
    trained = SimpleNamespace(cfg=cfg, record={"config": {"dataset": stored}}, preprocessing=constants,
                              classes=[str(i) for i in range(10)], image_shape=[3, 16, 16])
    given = {}

    def fake_load(ds, device, fitted, splits):
        given["constants"] = fitted
        return SimpleNamespace(num_classes=10, image_shape=[3, 16, 16])

    monkeypatch.setattr(evaluate_module, "load_data", fake_load)
    evaluate_module.load_eval_data(trained, torch.device("cpu"), "test")
    assert (given["constants"] is None) == refits
