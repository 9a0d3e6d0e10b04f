"""The paper's class confidence maps: the last mlpconv's per-class maps before global average pooling, as images.

`nin cam CKPT IMAGE...` writes cam.png (rows: images; columns: the input, then its top-K classes' maps upsampled
and overlaid on it, captioned with class and probability) and cam.json (the predictions and the raw maps).
`log_class_maps` puts the same grid for a batch of test images into TensorBoard at the end of training.
`confusion_image` draws `nin eval`'s confusion matrix. Drawing is PIL only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nin_cli.data import raw_test_images, to_input
from nin_cli.errors import ConfigError, DataError
from nin_cli.files import atomic_write, one_line, prepare_output_dir
from nin_cli.maps import cam_grid, class_maps_and_probs
from nin_cli.trained import load_trained

# ------------------------------------------------------------------------------------------------- nin cam


def load_image(path: Path, shape: list[int]) -> torch.Tensor:
    """An image file as the model's uint8 (C, H, W): grey or RGB to match C, resized (bilinear) to H×W."""
    channels, height, width = shape
    if channels not in (1, 3):
        raise ConfigError(f"nin cam reads grey or RGB image files; this model takes {channels} channels")
    try:
        with Image.open(path) as opened:
            image = opened.convert("L" if channels == 1 else "RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: no such image file") from None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: not a readable image ({one_line(err)})") from None
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    array = np.array(image, dtype=np.uint8)  # a writable copy for torch
    return torch.from_numpy(array[None] if channels == 1 else array.transpose(2, 0, 1).copy())


def test_images(trained, count: int) -> tuple[torch.Tensor, list[str]]:
    """The first `count` test images of the checkpoint's dataset as uint8, titled with their true class."""

    test = raw_test_images(trained.cfg.dataset, count)
    return test.images, [f"test #{i}, true {trained.classes[c]}" for i, c in enumerate(test.labels.tolist())]


def cam_command(path: Path, images: list[Path], top: int, out: Path | None, test: int = 0) -> None:
    """`nin cam`: cam.png and cam.json under `out` (default: next to the checkpoint), predictions printed.
    `test` > 0 shows that many test images of the checkpoint's dataset instead of (or after) image files."""

    trained = load_trained(path, device="cpu")
    if trained.cfg.head.type != "gap":
        raise ConfigError(f"{path}: head={trained.cfg.head.type}; class confidence maps need the gap head")
    if not images and test <= 0:
        raise ConfigError("nin cam needs IMAGE files or --test N (test images of the checkpoint's dataset)")
    top = min(max(1, top), len(trained.classes))
    raw = [load_image(p, trained.image_shape) for p in images]
    names = [str(p) for p in images]
    if test > 0:
        extra, titles = test_images(trained, test)
        raw, names = raw + list(extra), names + titles
    batch = torch.stack(raw)
    maps, probs = class_maps_and_probs(trained.model, to_input(batch, trained.preprocessing))
    out = prepare_output_dir(out or Path(path).parent / f"{Path(path).stem}_cam", Path(path).parent, "cam folder")
    grid = cam_grid(batch.float().div(255).numpy(), maps, probs, trained.classes, top, [Path(n).name for n in names])
    atomic_write(out / "cam.png", lambda f: grid.save(f, format="PNG"))
    report = []
    for name, image_maps, image_probs in zip(names, maps, probs, strict=True):
        chosen = image_probs.topk(top).indices.tolist()
        report.append({"image": name, "predictions": [
            {"class": trained.classes[c], "probability": image_probs[c].item(), "map": image_maps[c].tolist()}
            for c in chosen]})
        print(f"{name}: " + ", ".join(f"{trained.classes[c]} {image_probs[c].item():.3f}" for c in chosen))
    atomic_write(out / "cam.json", json.dumps({"checkpoint": str(path), "map_shape": list(maps.shape[2:]),
                                               "images": report}, indent=1) + "\n")
    print(f"wrote {out / 'cam.png'} ({top} maps per image) and {out / 'cam.json'}")


# --------------------------------------------------------------------------------------------- confusion


