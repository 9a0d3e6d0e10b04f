"""Evaluation: loss and error of a model on a split, accumulated on the device and read once."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nin_cli.data import Split, eval_batches, to_input


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
    if len(split) == 0:
        return {"loss": float("nan"), "accuracy": float("nan"), "error": float("nan"), "n": 0}
    logits = predict_logits(model, split, preprocessing, batch_size, channels_last, autocast_dtype)
    loss = F.cross_entropy(logits, split.labels, reduction="sum")
    correct = (logits.argmax(dim=1) == split.labels).sum()
    n = len(split)
    accuracy = correct.item() / n
    return {"loss": loss.item() / n, "accuracy": accuracy, "error": 100.0 * (1.0 - accuracy), "n": n}
