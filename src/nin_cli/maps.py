"""The paper's class confidence maps and the confusion matrix as images (PIL only): the last mlpconv's per-class
maps before global average pooling, upsampled and overlaid on the input, captioned with class and probability.
Used by training (TensorBoard at the end of a run), `nin cam` and `nin eval`."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from nin_cli.data import to_input

CELL = 128  # pixels per tile side


CAPTION = 14  # pixels of caption strip above each tile


# "inferno"-like anchors, dark (low confidence) to bright (high).
ANCHORS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                    [250, 193, 39], [252, 255, 164]], dtype=np.float64)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] → uint8 RGB (…, 3) along ANCHORS."""
    position = np.clip(values, 0.0, 1.0) * (len(ANCHORS) - 1)
    low = np.floor(position).astype(int).clip(0, len(ANCHORS) - 2)
    frac = (position - low)[..., None]
    return (ANCHORS[low] * (1 - frac) + ANCHORS[low + 1] * frac).round().astype(np.uint8)


def _caption(draw: ImageDraw.ImageDraw, x: int, y: int, width: int, text: str) -> None:
    font = ImageFont.load_default()
    while text and draw.textlength(text, font=font) > width - 4:
        text = text[:-2] + "…" if len(text) > 2 else ""
    draw.rectangle([x, y, x + width - 1, y + CAPTION - 1], fill=(24, 24, 24))
    draw.text((x + 2, y + 1), text, fill=(235, 235, 235), font=font)


def grid_size(n_images: int, top: int, cell: int = CELL) -> tuple[int, int]:
    """(width, height) of the grid: one row per image, the input and `top` maps per row."""
    return (top + 1) * cell, n_images * (cell + CAPTION)


def _tile(image: np.ndarray, cell: int) -> np.ndarray:
    """(C, H, W) floats in [0, 1] → (cell, cell, 3) uint8; nearest neighbour keeps tiny inputs' pixels visible."""
    rgb = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image[:3]
    pixels = Image.fromarray((rgb.transpose(1, 2, 0) * 255).round().clip(0, 255).astype(np.uint8))
    return np.asarray(pixels.resize((cell, cell), Image.Resampling.NEAREST))


def upsample(maps: torch.Tensor, cell: int) -> torch.Tensor:
    """(K, h, w) maps → (K, cell, cell), bilinear as in CAM."""
    return F.interpolate(maps[None].float(), size=(cell, cell), mode="bilinear", align_corners=False)[0]


def cam_grid(display: np.ndarray, maps: torch.Tensor, probs: torch.Tensor, classes: list[str], top: int,
             titles: list[str], cell: int = CELL) -> Image.Image:
    """display (N, C, H, W) in [0, 1], maps (N, classes, h, w), probs (N, classes) → the grid image.

    Each row's shown maps share one colour scale (its min → dark, its max → bright), so a class's map that is
    hotter than another's really has larger pre-pooling values."""
    width, height = grid_size(len(display), top, cell)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, (image, image_maps, image_probs) in enumerate(zip(display, maps, probs, strict=True)):
        y = row * (cell + CAPTION)
        base = _tile(image, cell).astype(np.float64)
        _caption(draw, 0, y, cell, titles[row])
        canvas.paste(Image.fromarray(base.astype(np.uint8)), (0, y + CAPTION))
        chosen = image_probs.topk(top).indices.tolist()
        heat = upsample(image_maps[chosen], cell).cpu().numpy()
        lo, hi = heat.min(), heat.max()
        heat = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
        for col, (cls, values) in enumerate(zip(chosen, heat, strict=True), start=1):
            tile = (0.4 * base + 0.6 * colormap(values)).round().astype(np.uint8)
            canvas.paste(Image.fromarray(tile), (col * cell, y + CAPTION))
            _caption(draw, col * cell, y, cell, f"{classes[cls]}  p={image_probs[cls].item():.2f}")
    return canvas


@torch.no_grad()
def class_maps_and_probs(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last mlpconv's maps (N, classes, h, w) and the softmax of their global averages: the gap head's logits,
    exactly what `model(x)` returns, without a second forward pass."""
    was_training = model.training
    model.eval()
    maps = model.class_maps(x).float()
    probs = F.softmax(maps.mean(dim=(2, 3)), dim=1)
    model.train(was_training)
    return maps, probs


def _displayable(images: torch.Tensor) -> np.ndarray:
    """Stored images → [0, 1]: uint8 / 255, preprocessed floats (GCN+ZCA) stretched per image."""
    if images.dtype == torch.uint8:
        return images.float().div(255).cpu().numpy()
    x = images.float()
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x - lo) / (hi - lo).clamp_min(1e-8)).cpu().numpy()


def log_class_maps(writer, model, data, step: int, n: int = 8, top: int = 3) -> None:
    """TensorBoard image `class_maps/test`: the first `n` test images and their top classes' confidence maps.
    Does nothing for a fully connected head (its last maps are not per class) or an empty test split."""
    if getattr(model, "head_type", None) != "gap" or len(data.test) == 0:
        return
    images, labels = data.test.images[:n], data.test.labels[:n].tolist()
    param = next(model.parameters())
    maps, probs = class_maps_and_probs(model, to_input(images, data.preprocessing).to(param.device))
    titles = [f"true: {data.classes[label]}" for label in labels]
    grid = cam_grid(_displayable(images), maps, probs, data.classes, min(top, data.num_classes), titles)
    writer.add_image("class_maps/test", np.asarray(grid), step, dataformats="HWC")


def confusion_image(confusion: list[list[int]], classes: list[str], title: str) -> Image.Image:
    """Rows: true class, columns: predicted; colour = share of the row; counts written when cells are big."""
    counts = np.asarray(confusion, dtype=np.float64)
    num = len(classes)
    cell = int(np.clip(480 // max(num, 1), 4, 36))
    left, top = (96 if num <= 40 else 8), 2 * CAPTION
    image = Image.new("RGB", (left + num * cell + 8, top + num * cell + 8), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((4, 1), title, fill=(0, 0, 0), font=font)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    colours = colormap(share)
    for i in range(num):
        if num <= 40:  # rows: "index name" (true class); columns: the index (predicted class)
            label = classes[i] if classes[i] == str(i) else f"{i} {classes[i]}"
            draw.text((4, top + i * cell + max(0, cell // 2 - 6)), label[:15], fill=(0, 0, 0), font=font)
            if cell >= 12:
                draw.text((left + i * cell + 2, CAPTION + 1), str(i), fill=(0, 0, 0), font=font)
        for j in range(num):
            x, y = left + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=tuple(int(v) for v in colours[i, j]))
            if cell >= 24 and counts[i, j]:
                text = str(int(counts[i, j]))
                draw.text((x + 2, y + cell // 2 - 6), text, font=font,
                          fill=(0, 0, 0) if share[i, j] > 0.6 else (255, 255, 255))
    return image
