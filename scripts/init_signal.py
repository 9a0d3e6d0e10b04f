"""The signal through the authors' MNIST NIN at its initialisation (BENCHMARKS.md, "The MNIST plateau, measured"):
the spread (std) of each conv layer's pre-activation over 64 training images, and how much the logits differ across
images, at [0, 1] − mean input and at 0–255 − mean. No dropout (eval mode), seed 0.

    python scripts/init_signal.py [dataset.root=DIR]      # needs: MNIST
"""

from __future__ import annotations

import sys

import torch

from nin_cli.data import load_data, to_input
from nin_cli.model import build_model
from nin_cli.overrides import load_config


def spreads(scale: str) -> None:
    cfg = load_config(["experiment=paper_mnist", f"dataset.preprocessing={scale}", *sys.argv[1:]])
    torch.manual_seed(0)
    data = load_data(cfg.dataset, torch.device("cpu"))
    model = build_model(cfg.model, cfg.head, data.image_shape, data.num_classes).eval()
    found: list[tuple[str, float]] = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(lambda m, i, out, name=name: found.append((name, out.std().item())))
    with torch.no_grad():
        logits = model(to_input(data.train.images[:64], data.preprocessing, False))
    layers = ", ".join(f"{name} {std:.2g}" for name, std in found)
    print(f"{scale}: pre-activation std {layers}; logits' spread across images {logits.std(0).mean().item():.2g}")


if __name__ == "__main__":
    for scale in ("unit_mean_image", "mean_image"):
        spreads(scale)
