"""Evaluation: loss and error during training (`evaluate`), and `nin eval`'s full report of a checkpoint.

`nin eval` rebuilds the model from the checkpoint alone (`checkpoint.load_trained`), loads the split of the
checkpoint's dataset (overrides may change it) preprocessed with the constants stored in the checkpoint (the fitted
ZCA included), and reports top-1/top-5 error, NLL, expected calibration error, per-class accuracy and the
confusion matrix: a rich table, JSON, a PNG and a TensorBoard image.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nin_cli.data import Data, Split, eval_batches, load_data, prepare_split, to_input
from nin_cli.errors import ConfigError, DataError

SPLITS = ("test", "val", "train")
ECE_BINS = 15
# Dataset keys that decide the preprocessing constants: while the overrides leave them as trained, the stored
# constants are used; otherwise they are fitted afresh on the (new) training split.
PREPROCESSING_KEYS = ("preprocessing", "gcn_scale", "zca_bias")


@torch.no_grad()
def predict_logits(model: nn.Module, split: Split, preprocessing: dict, batch_size: int = 500,
                   channels_last: bool = False, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits (float32) for every image of the split, in order."""
    was_training = model.training
    model.eval()
    device = split.images.device
    outputs = []
    for images, _ in eval_batches(split, batch_size):
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            outputs.append(model(to_input(images, preprocessing, channels_last)).float())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.zeros(0, 0, device=device)


def evaluate(model: nn.Module, split: Split, preprocessing: dict, batch_size: int = 500,
             channels_last: bool = False, autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """{"loss", "accuracy", "error", "n"} of the model on the split (error in %, accuracy as a fraction)."""
    return metrics_from_sums(evaluation_sums(model, split, preprocessing, batch_size, channels_last, autocast_dtype))


def evaluation_sums(model: nn.Module, split: Split, preprocessing: dict, batch_size: int = 500,
                    channels_last: bool = False, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(loss sum, correct, n) as float64 on the split's device: sums add up across shards of a split."""
    labels = split.labels
    if len(split) == 0:
        return torch.zeros(3, dtype=torch.float64, device=labels.device)
    logits = predict_logits(model, split, preprocessing, batch_size, channels_last, autocast_dtype)
    return torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                        (logits.argmax(dim=1) == labels).sum().double(),
                        torch.tensor(len(split), dtype=torch.float64, device=labels.device)])


def metrics_from_sums(sums: torch.Tensor) -> dict[str, float]:
    loss, correct, n = sums.tolist()
    if not n:
        return {"loss": float("nan"), "accuracy": float("nan"), "error": float("nan"), "n": 0}
    accuracy = round(correct) / n
    return {"loss": loss / n, "accuracy": accuracy, "error": 100.0 * (1.0 - accuracy), "n": round(n)}


# ----------------------------------------------------------------------------------------------- metrics


def predict_log_probs(model: nn.Module, split: Split, preprocessing: dict, batch_size: int = 500,
                      tta: bool = False) -> torch.Tensor:
    """log-softmax per image; with `tta`, the log of the mean softmax over the image and its mirror image
    (mirrored as training's flip augmentation does it: on the stored, already preprocessed tensors)."""
    log_probs = F.log_softmax(predict_logits(model, split, preprocessing, batch_size), dim=1)
    if not tta:
        return log_probs
    mirrored = Split(split.images.flip(3), split.labels)
    mirror_log_probs = F.log_softmax(predict_logits(model, mirrored, preprocessing, batch_size), dim=1)
    return torch.logaddexp(log_probs, mirror_log_probs) - math.log(2.0)


def calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error: equal-width confidence bins (lo, hi], Σ |bin|/n · |accuracy − mean confidence|."""
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    conf_sum = torch.bincount(index, weights=confidence.double(), minlength=bins)
    correct_sum = torch.bincount(index, weights=correct.double(), minlength=bins)
    return float((conf_sum - correct_sum).abs().sum() / len(confidence))


def classification_metrics(log_probs: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """The `nin eval --json` report from per-image log-probabilities: errors in %, NLL in nats, ECE as a fraction
    (15 bins), per-class accuracy as fractions (null for a class absent from the split), confusion[true][pred]."""
    log_probs, labels = log_probs.double().cpu(), labels.cpu()
    n, num_classes = log_probs.shape
    confidence, predicted = log_probs.exp().max(dim=1)
    correct = predicted == labels
    top5 = log_probs.topk(min(5, num_classes), dim=1).indices
    confusion = torch.bincount(labels * num_classes + predicted, minlength=num_classes ** 2).view(num_classes, -1)
    support = confusion.sum(dim=1)
    return {
        "top1_error": 100.0 * (1.0 - correct.double().mean().item()),
        "top5_error": 100.0 * (1.0 - (top5 == labels[:, None]).any(dim=1).double().mean().item()),
        "nll": -log_probs.gather(1, labels[:, None]).mean().item(),
        "ece": calibration_error(confidence, correct),
        "per_class_accuracy": {name: (confusion[i, i].item() / support[i].item() if support[i] else None)
                               for i, name in enumerate(classes)},
        "confusion": confusion.tolist(),
        "n": n,
    }


# ------------------------------------------------------------------------------------------------- data


def load_eval_data(trained, device: torch.device) -> Data:
    """The dataset the overridden config names, preprocessed with the checkpoint's constants while the overrides
    leave preprocessing as trained (the ZCA travels in the checkpoint), else fitted afresh on its training split."""
    ds = trained.cfg.dataset
    stored = trained.record["config"].get("dataset", {})
    if any(stored.get(k) != getattr(ds, k) for k in PREPROCESSING_KEYS):
        data = load_data(ds, device)
    else:
        raw = load_data(dataclasses.replace(ds, preprocessing="none"), torch.device("cpu"))  # uint8, nothing fitted
        consts = trained.preprocessing
        data = Data(*(prepare_split(s, consts, device) for s in (raw.train, raw.val, raw.test)), raw.classes, consts)
    if data.num_classes != len(trained.classes) or data.image_shape != trained.image_shape:
        raise ConfigError(f"dataset={ds.name} gives {data.num_classes} classes of {data.image_shape} images; the "
                          f"checkpoint's model takes {len(trained.classes)} classes of {trained.image_shape}")
    return data


def evaluate_checkpoint(path: str | Path, overrides: list[str], split: str = "test", tta: bool = False
                        ) -> tuple[dict, object]:
    """(metrics, trained) of a checkpoint on one split of its (possibly overridden) dataset."""
    from nin_cli.checkpoint import load_trained

    if split not in SPLITS:
        raise ConfigError(f"--split {split}: must be one of {', '.join(SPLITS)}")
    trained = load_trained(path, overrides)
    device = next(trained.model.parameters()).device
    data = load_eval_data(trained, device)
    part = getattr(data, split)
    if len(part) == 0:
        raise DataError(f"dataset={trained.cfg.dataset.name} has no {split} images (dataset.val_size=0?)")
    log_probs = predict_log_probs(trained.model, part, data.preprocessing, trained.cfg.trainer.eval_batch_size, tta)
    metrics = {"checkpoint": str(path), "split": split, "tta": tta,
               **classification_metrics(log_probs, part.labels, trained.classes)}
    return metrics, trained


# ------------------------------------------------------------------------------------------------ output


def default_eval_dir(path: Path, split: str, tta: bool) -> Path:
    """RUN/eval/<checkpoint>_<split>[_tta] for a checkpoint inside RUN/checkpoints/, else next to the file."""
    name = f"{path.stem}_{split}" + ("_tta" if tta else "")
    if path.parent.name == "checkpoints":
        return path.parent.parent / "eval" / name
    return path.parent / f"{path.stem}_eval" / name


def write_eval_outputs(metrics: dict, classes: list[str], out: Path, step: int) -> None:
    """metrics.json, confusion.png and a TensorBoard event file (scalars + the confusion image) under `out`."""
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    from nin_cli.cam import confusion_image

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    title = (f"{metrics['split']}: top-1 error {metrics['top1_error']:.2f}%, n={metrics['n']}; "
             "rows true, columns predicted")
    image = confusion_image(metrics["confusion"], classes, title)
    image.save(out / "confusion.png")
    writer = SummaryWriter(str(out / "tb"))
    try:
        split = metrics["split"]
        for key in ("top1_error", "top5_error", "nll", "ece"):
            writer.add_scalar(f"eval/{split}/{key}", metrics[key], step)
        writer.add_image(f"eval/{split}/confusion", np.asarray(image), step, dataformats="HWC")
    finally:
        writer.close()


def show_eval(metrics: dict, classes: list[str], out: Path) -> None:
    """The human report: headline numbers, per-class accuracy and (up to 20 classes) the confusion matrix."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"{metrics['checkpoint']} on {metrics['split']} ({metrics['n']} images"
                  f"{', mirror TTA' if metrics['tta'] else ''}): top-1 error {metrics['top1_error']:.2f}%, "
                  f"top-5 error {metrics['top5_error']:.2f}%, NLL {metrics['nll']:.4f}, ECE {metrics['ece']:.4f}",
                  markup=False, highlight=False)
    confusion = metrics["confusion"]
    shown = sorted(range(len(classes)), key=lambda i: metrics["per_class_accuracy"][classes[i]] or 0.0)
    shown = sorted(shown[:10]) if len(classes) > 20 else list(range(len(classes)))
    per_class = Table(title="per-class accuracy" + (" (10 worst)" if len(classes) > 20 else ""))
    for column in ("class", "images", "accuracy"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for i in shown:
        accuracy = metrics["per_class_accuracy"][classes[i]]
        per_class.add_row(classes[i], str(sum(confusion[i])), "-" if accuracy is None else f"{100 * accuracy:.1f}%")
    console.print(per_class)
    if len(classes) <= 20:
        matrix = Table(title="confusion matrix")
        matrix.add_column("true \\ predicted")
        for j in range(len(classes)):
            matrix.add_column(str(j), justify="right")  # indices keep 20 columns within a terminal
        for i, row in enumerate(confusion):
            matrix.add_row(f"{i} {classes[i]}"[:16], *(f"[bold]{v}[/bold]" if i == j else str(v)
                                                       for j, v in enumerate(row)))
        console.print(matrix)
    console.print(f"wrote {out / 'metrics.json'}, {out / 'confusion.png'} and TensorBoard events in {out / 'tb'}",
                  markup=False, highlight=False)


def eval_command(path: Path, overrides: list[str], split: str, tta: bool, as_json: bool, out: Path | None) -> None:
    """`nin eval`: evaluate, write the outputs, then print JSON or the rich report. An output folder that is a
    file, under a file or not writable is exit 2 with nothing written (`--out` is checked before any work)."""
    import errno

    from nin_cli.runs import output_dir_problem

    def check(where: Path) -> Path:
        problem = output_dir_problem(where)
        if problem:
            given = f"--out {out}" if out else f"the default output folder {where}"
            raise ConfigError(f"{given}: {problem}; give --out DIR, a directory you can write")
        return where

    if out:  # given: checked before any work; the default (next to the checkpoint) once the checkpoint is read
        check(out)
    metrics, trained = evaluate_checkpoint(path, overrides, split, tta)
    where = check(out or default_eval_dir(Path(path), split, tta))
    try:
        write_eval_outputs(metrics, trained.classes, where, int(trained.record.get("state", {}).get("step", 0)))
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(f"no space left on the device writing the outputs in {where}") from None
        raise ConfigError(f"cannot write the outputs in {where} ({err.strerror or err}: {err.filename}); give "
                          "--out DIR, a directory you can write") from None
    if as_json:
        print(json.dumps(metrics))
    else:
        show_eval(metrics, trained.classes, where)
