"""Scoring a model on a split: loss and error during training (`evaluate`, `evaluation_sums` that processes add
up), and the full report `nin eval` prints (top-1/top-5 error, NLL, calibration error, per-class accuracy, the
confusion matrix)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nin_cli.data import Split, eval_batches, to_input
from nin_cli.runtime import autocast

ECE_BINS = 15


@torch.no_grad()
def predict_logits(model: nn.Module, split: Split, preprocessing: dict, batch_size: int = 500,
                   channels_last: bool = False, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits (float32) for every image of the split, in order."""
    was_training = model.training
    model.eval()
    device = split.images.device
    outputs = []
    for images, _ in eval_batches(split, batch_size):
        with autocast(device.type, autocast_dtype):
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
