"""`nin predict CKPT PATH...`: the K most probable classes of new images, one row per image.

Images are decoded as the image-folder loader decodes a training set (torchvision's decoders, PIL for the other
formats, grey or RGB to match the model, bilinear antialiased resize to its input size) and preprocessed with the
constants stored in the checkpoint (`data.to_input`), so a file holding a training image gets the logits training
saw. `--tta` averages the softmax with the mirror image's, mirrored after preprocessing as `nin eval --tta` does.

Each input file is untrusted: it is opened without blocking (a FIFO must not hang the run), must be a regular file
of at most MAX_IMAGE_BYTES whose header declares at most MAX_PIXELS pixels (a small PNG can decode to gigabytes),
and anything that cannot be read or decoded is skipped, listed with its reason and counted — never a traceback.
Files are read and scored one batch at a time, so a folder of any size needs one batch of memory.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from nin_cli.data import to_input
from nin_cli.datasets import IMG_EXTENSIONS, decode_pil
from nin_cli.errors import ConfigError, DataError
from nin_cli.files import atomic_write, one_line
from nin_cli.runs import output_dir_problem
from nin_cli.runtime import resolve_device
from nin_cli.trained import load_trained

MAX_IMAGE_BYTES = 256 * 1024 * 1024  # larger than any photo a camera writes; /dev/zero-sized files are refused
MAX_PIXELS = 100_000_000  # 100 megapixels: PIL's own bomb limit is about 89 M (warning) and 179 M (error)
DEVICES = ("auto", "cpu", "cuda", "mps")


# ------------------------------------------------------------------------------------------ finding files


def find_images(paths: list[Path]) -> list[str]:
    """Image files in command-line order: a folder's images (recursively, torchvision's IMG_EXTENSIONS, sorted);
    a file named on the command line whatever its extension (the user asked for it). Duplicates once."""
    found: list[str] = []
    for path in paths:
        found += walk_images(str(path)) if os.path.isdir(path) else [str(path)]
    return list(dict.fromkeys(found))


def walk_images(root: str) -> list[str]:
    """Follows links to folders, as training's image-folder reader does, but visits each folder once: a link
    loop would otherwise walk until the path is too long."""
    seen: set[tuple[int, int]] = set()
    found: list[str] = []
    for top, dirs, names in os.walk(root, followlinks=True):
        try:
            info = os.stat(top)
        except OSError:
            dirs[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirs.sort()
        found += [os.path.join(top, name) for name in sorted(names) if name.lower().endswith(IMG_EXTENSIONS)]
    return found


# --------------------------------------------------------------------------------------- reading, decoding


def read_image_bytes(path: str) -> bytes:
    """The file's bytes, or DataError with the reason: O_NONBLOCK so that opening a FIFO returns at once, then
    fstat on the same descriptor (no race with a swapped file) refuses anything but a bounded regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise DataError(err.strerror or one_line(err)) from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DataError("not a regular file")
        if info.st_size > MAX_IMAGE_BYTES:
            raise DataError(f"{info.st_size} bytes, more than the {MAX_IMAGE_BYTES} an image may have")
        try:
            data = f.read(MAX_IMAGE_BYTES + 1)
        except OSError as err:
            raise DataError(err.strerror or one_line(err)) from None
    if not data:
        raise DataError("an empty file (0 bytes)")
    if len(data) > MAX_IMAGE_BYTES:  # it grew while we read
        raise DataError(f"more than the {MAX_IMAGE_BYTES} bytes an image may have")
    return data


def check_header(data: bytes) -> None:
    """PIL reads only the header here, never the pixels: a decompression bomb is refused before it is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except UnidentifiedImageError:
        raise DataError("not a readable image (unknown format, or corrupt)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"not a readable image ({one_line(err, 120)})") from None
    if width * height > MAX_PIXELS:
        raise DataError(f"{width}×{height} pixels, more than the {MAX_PIXELS} an image may have")


def decode_image(data: bytes, shape: list[int]) -> torch.Tensor:
    """uint8 (C, H, W) of the model's shape, by the same steps as the image-folder loader's `datasets._decode`
    (tests/test_predict.py checks they agree): torchvision first, PIL for the rest, then the same resize."""
    channels = shape[0]
    try:
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_image as tv_decode

        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders (PIL takes over when they go)
            warnings.simplefilter("ignore", DeprecationWarning)
            image = tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                              mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
        image = image[0] if image.ndim == 4 else image  # animated: the first frame
    except (ImportError, RuntimeError, ValueError):
        image = decode_pil(data, channels)
    if image.dtype == torch.uint16:  # a 16-bit PNG: its top 8 bits (to_input would take uint16 as preprocessed)
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    if list(image.shape[1:]) != list(shape[1:]):
        resized = F.interpolate(image[None].float(), size=tuple(shape[1:]), mode="bilinear", antialias=True,
                                align_corners=False)
        image = resized[0].round().clamp(0, 255).to(torch.uint8)
    return image


def load_image(path: str, shape: list[int]) -> torch.Tensor:
    data = read_image_bytes(path)
    check_header(data)
    return decode_image(data, shape)


# ------------------------------------------------------------------------------------------------ scoring


@torch.no_grad()
def class_probs(trained, images: torch.Tensor, tta: bool) -> torch.Tensor:
    """Softmax of a uint8 batch on the model's device; with `tta`, the mean with the mirror image's softmax
    (the mirror taken after preprocessing, as `metrics.predict_log_probs` takes it on a stored split)."""
    device = next(trained.model.parameters()).device
    x = to_input(images.to(device), trained.preprocessing)
    log_probs = F.log_softmax(trained.model(x).float(), dim=1)
    if tta:
        mirror = F.log_softmax(trained.model(x.flip(3)).float(), dim=1)
        log_probs = torch.logaddexp(log_probs, mirror) - math.log(2.0)
    return log_probs.exp().cpu()


def stored_shape(trained) -> list[int]:
    """The shape training stored its images at: dataset.resize² where set (the ImageNet recipe: the model sees
    centre crops of it), else the model's own input shape."""
    resize = trained.cfg.dataset.resize
    return [trained.image_shape[0], resize, resize] if resize else list(trained.image_shape)


def model_view(image: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """The centre crop evaluation takes of a stored image (data.centre_crop's arithmetic); a no-op when equal."""
    height, width = image.shape[1:]
    top, left = round((height - shape[1]) / 2), round((width - shape[2]) / 2)
    return image[:, top:top + shape[1], left:left + shape[2]].contiguous()


def predict_files(trained, files: list[str], top: int, tta: bool, batch_size: int
                  ) -> tuple[list[dict], list[dict]]:
    """(one row per readable image: path and its top-K classes with probabilities, the skipped files with why)."""
    rows: list[dict] = []
    skipped: list[dict] = []
    for start in range(0, len(files), batch_size):
        images, kept = [], []
        for path in files[start:start + batch_size]:
            try:
                images.append(model_view(load_image(path, stored_shape(trained)), trained.image_shape))
                kept.append(path)
            except DataError as err:
                skipped.append({"path": path, "reason": str(err)})
        if not images:
            continue
        probs = class_probs(trained, torch.stack(images), tta)
        values, indices = probs.topk(top, dim=1)
        for path, p, c in zip(kept, values.tolist(), indices.tolist(), strict=True):
            rows.append({"path": path, "top": [{"class": trained.classes[i], "probability": v}
                                                for i, v in zip(c, p, strict=True)]})
    return rows, skipped


# ------------------------------------------------------------------------------------------------- output


def csv_text(rows: list[dict], top: int) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path"] + [f"{name}_{k}" for k in range(1, top + 1) for name in ("class", "probability")])
    for row in rows:
        writer.writerow([row["path"]] + [x for t in row["top"] for x in (t["class"], repr(t["probability"]))])
    return buffer.getvalue()


def check_out(out: Path | None) -> None:
    """A bad --out is a command-line mistake (exit 2), found before any image is read."""

    if out is None:
        return
    if out.is_dir():
        raise ConfigError(f"--out {out}: a directory; give a file name (preds.csv, or preds.json)")
    problem = output_dir_problem(out.absolute().parent)
    if problem:
        raise ConfigError(f"--out {out}: cannot write there ({problem})")


def show(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
    else:
        for row in report["predictions"]:
            print(f"{row['path']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in row["top"]))
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} unreadable image(s):", file=sys.stderr)
        for item in report["skipped"]:
            print(f"  {item['path']}: {item['reason']}", file=sys.stderr)


def predict_command(path: Path, inputs: list[Path], top: int = 5, tta: bool = False, batch_size: int | None = None,
                    out: Path | None = None, as_json: bool = False, device: str | None = None,
                    weights: str = "auto") -> dict:
    """`nin predict`: print (or --json) the top-K classes of every readable image, --out as CSV (JSON for a .json
    name), written atomically. Exit 3 when the inputs hold no image, or none that could be read."""

    if device is not None and device not in DEVICES:
        raise ConfigError(f"--device {device}: must be one of {', '.join(DEVICES)}")
    check_out(out)
    trained = load_trained(path, device=None if device is None else str(resolve_device(device)), weights=weights)
    if trained.image_shape[0] not in (1, 3):
        raise ConfigError(f"nin predict reads grey or RGB image files; this model takes {trained.image_shape[0]} "
                          "channels")
    files = find_images(inputs)
    if not files:
        raise DataError(f"no images in {', '.join(map(str, inputs))} (looked for {', '.join(IMG_EXTENSIONS)})")
    top = min(top, len(trained.classes))
    rows, skipped = predict_files(trained, files, top, tta, batch_size or trained.cfg.trainer.eval_batch_size)
    report = {"checkpoint": str(path), "tta": tta, "weights": trained.weights, "top": top, "n": len(rows),
              "predictions": rows, "skipped": skipped}
    show(report, as_json)
    if not rows:
        raise DataError(f"none of the {len(files)} image file(s) could be read (listed above)")
    if out is not None:
        atomic_write(out, json.dumps(report, indent=1) + "\n" if out.suffix.lower() == ".json"
                     else csv_text(rows, top))
        print(f"wrote {out} ({len(rows)} images, {len(skipped)} skipped)", file=sys.stderr)
    return report
