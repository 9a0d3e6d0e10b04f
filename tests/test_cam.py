"""`nin cam` and the TensorBoard class maps: the PNG shows the model's own pre-pooling maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nin_cli.maps import CAPTION, CELL, colormap
from test_eval import fabricate
from test_export import eager_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def best(tiny_run) -> Path:
    return tiny_run / "checkpoints" / "best.pt"


def synthetic_images(tmp_path: Path, count: int) -> tuple[list[Path], np.ndarray]:
    """PNG files of the model's own size (16×16 RGB), so no resizing stands between the file and the maps."""
    pixels = torch.randint(0, 256, (count, 16, 16, 3), generator=torch.Generator().manual_seed(3),
                           dtype=torch.uint8).numpy()
    paths = []
    for i, array in enumerate(pixels):
        paths.append(tmp_path / f"image{i}.png")
        Image.fromarray(array).save(paths[-1])
    return paths, pixels


def test_cam_png_has_the_expected_size_and_shows_the_pre_pooling_maps(nin, best, tmp_path):
    paths, pixels = synthetic_images(tmp_path, 2)
    top = 3
    result = nin("cam", best, *paths, "--top", str(top), "--out", tmp_path / "out")
    assert result.code == 0, result.err
    with Image.open(tmp_path / "out" / "cam.png") as image:
        png = np.asarray(image.convert("RGB")).astype(np.float64)
    assert png.shape == (2 * (CELL + CAPTION), (top + 1) * CELL, 3)
    # The maps nin reports are the last mlpconv's output on the preprocessed image, computed here apart.
    model, record = eager_model(best)
    consts = record["data"]["preprocessing"]
    mean, std = (np.asarray(consts[k], dtype=np.float32).reshape(1, -1, 1, 1) for k in ("mean", "std"))
    x = torch.from_numpy((pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255 - mean) / std)
    with torch.no_grad():
        maps, probs = model.features(x), torch.softmax(model(x), dim=1)
    report = json.loads((tmp_path / "out" / "cam.json").read_text())
    assert report["map_shape"] == list(maps.shape[2:])
    for i, entry in enumerate(report["images"]):
        chosen = probs[i].topk(top).indices.tolist()
        assert [p["class"] for p in entry["predictions"]] == [record["data"]["classes"][c] for c in chosen]
        for p, c in zip(entry["predictions"], chosen, strict=True):
            assert p["probability"] == pytest.approx(probs[i, c].item(), abs=1e-5)
            assert np.allclose(p["map"], maps[i, c].numpy(), atol=1e-5)
    # And the PNG's heat is those maps, upsampled: undo the overlay and read values back through the colour map.
    lut = colormap(np.linspace(0, 1, 256)).astype(np.float64)
    base = np.asarray(Image.fromarray(pixels[0]).resize((CELL, CELL), Image.Resampling.NEAREST)).astype(np.float64)
    chosen = probs[0].topk(top).indices
    expected = F.interpolate(maps[0:1, chosen], size=(CELL, CELL), mode="bilinear", align_corners=False)[0]
    expected = ((expected - expected.min()) / (expected.max() - expected.min())).numpy()
    for col in range(1, top + 1):
        tile = png[CAPTION:CAPTION + CELL, col * CELL:(col + 1) * CELL]
        heat = (tile - 0.4 * base) / 0.6
        values = np.argmin(((heat[:, :, None, :] - lut[None, None]) ** 2).sum(-1), axis=2) / 255
        error = np.abs(values - expected[col - 1])
        assert error.mean() < 0.01 and error.max() < 0.06, (col, error.mean(), error.max())


def test_cam_resizes_other_images_and_prints_predictions(nin, best, tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.full((30, 40, 3), 200, dtype=np.uint8)).save(path)
    result = nin("cam", best, path, "--top", "2", "--out", tmp_path / "o")
    assert result.code == 0, result.err
    assert result.out.startswith(f"{path}: class") and "cam.png" in result.out
    with Image.open(tmp_path / "o" / "cam.png") as image:
        assert image.size == (3 * CELL, CELL + CAPTION)
    result = nin("cam", best, "--test", "2", "--top", "1", "--out", tmp_path / "t")  # the dataset's own images
    assert result.code == 0 and result.out.startswith("test #0, true class"), result.err
    with Image.open(tmp_path / "t" / "cam.png") as image:
        assert image.size == (2 * CELL, 2 * (CELL + CAPTION))


def test_cam_refuses_what_it_cannot_show(nin, best, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    for args, code in (([best, tmp_path / "notes.png"], 3), ([best, tmp_path / "absent.png"], 3),
                       ([fabricate(tmp_path, ["head=fc"]), tmp_path / "notes.png"], 2)):
        result = nin("cam", *args)
        assert result.code == code and len(result.err_lines) == 1, result.err


def test_training_logs_class_maps_to_tensorboard(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_run / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "class_maps/test" in events.Tags()["images"]
    image = events.Images("class_maps/test")[-1]
    assert (image.width, image.height) == (4 * CELL, 8 * (CELL + CAPTION))  # 8 test images, input + 3 maps
