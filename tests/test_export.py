"""`nin export`: every format reloads in its own runtime, agrees with the eager model at any batch size, and its
sidecar is enough to preprocess raw images exactly."""

from __future__ import annotations

import base64
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from nin_cli.config import to_config
from nin_cli.model import build_model
from test_eval import ZCA_SMALL, fabricate, numpy_gcn_zca

pytestmark = pytest.mark.usefixtures("one_thread")

EXTENSIONS = {"onnx": "onnx", "torchscript": "ts.pt", "exported-program": "pt2", "safetensors": "safetensors"}


@pytest.fixture(scope="module")
def best(tiny_run) -> Path:
    return tiny_run / "checkpoints" / "best.pt"


def eager_model(checkpoint: Path):
    record = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = to_config(record["config"])
    model = build_model(cfg.model, cfg.head, record["data"]["image_shape"], len(record["data"]["classes"]))
    model.load_state_dict(record["model"])
    return model.eval(), record


def runtime(fmt: str, path: Path, sidecar: dict):
    """Load the export the way a consumer would, without nin."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {sidecar["input"]["name"]: x.numpy()})[0])
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.load(str(path))
    if fmt == "exported-program":
        return torch.export.load(str(path)).module()
    from safetensors.torch import load_file

    cfg = to_config(sidecar["config"])
    model = build_model(cfg.model, cfg.head, sidecar["input"]["shape"][1:], len(sidecar["classes"]))
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def decode(array: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(array["base64"]), dtype="<f4").reshape(array["shape"])


@pytest.mark.parametrize("fmt", list(EXTENSIONS))
def test_every_format_round_trips_with_parity(nin, best, tmp_path, fmt):
    out = tmp_path / f"model.{EXTENSIONS[fmt]}"
    result = nin("export", best, "--format", fmt, "--out", out)
    assert result.code == 0, result.err
    printed = float(re.search(r"max \|export − eager\| = (\S+) ", result.out).group(1))
    assert printed <= 1e-4
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    model, record = eager_model(best)
    assert sidecar["classes"] == record["data"]["classes"] and sidecar["input"]["shape"] == ["batch", 3, 16, 16]
    assert sidecar["preprocessing"]["mean"] == record["data"]["preprocessing"]["mean"]
    assert sidecar["parity"]["max_abs_diff"] == pytest.approx(printed, rel=1e-2, abs=1e-12)
    assert {1, 25} <= set(sidecar["parity"]["batch_sizes"])
    run = runtime(fmt, out, sidecar)
    with torch.no_grad():
        for batch in (1, 7):  # batch sizes the export never saw
            x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
            assert (run(x) - model(x)).abs().max().item() <= 1e-4


def test_a_parity_failure_exits_1_with_one_line(nin, best, tmp_path, monkeypatch):
    import nin_cli.export as export

    real = export.reload_runner
    monkeypatch.setattr(export, "reload_runner", lambda *a: (lambda x, run=real(*a): run(x) + 1e-3))
    result = nin("export", best, "--format", "safetensors", "--out", tmp_path / "m.safetensors")
    assert result.code == 6 and len(result.err_lines) == 1 and "disagrees" in result.err
    assert not (tmp_path / "m.safetensors.json").exists()


def test_a_bad_format_exits_2(nin, best):
    result = nin("export", best, "--format", "tflite")
    assert result.code == 2 and "onnx | torchscript" in result.err.replace(", ", " | ")


def test_the_sidecar_carries_the_zca_a_consumer_needs(nin, tmp_path):
    path = fabricate(tmp_path, ZCA_SMALL, zca_scale=0.5)
    out = tmp_path / "zca.safetensors"
    result = nin("export", path, "--format", "safetensors", "--out", out)
    assert result.code == 0, result.err
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    prep = sidecar["preprocessing"]
    stored = torch.load(path, weights_only=True)["data"]["preprocessing"]
    assert prep["kind"] == "gcn_zca" and prep["gcn_scale"] == stored["gcn_scale"]
    assert np.array_equal(decode(prep["zca_matrix"]), stored["zca_matrix"].numpy())
    assert np.array_equal(decode(prep["zca_mean"]), stored["zca_mean"].numpy())
    # A consumer preprocesses raw uint8 images from the sidecar alone and gets the eager model's outputs.
    shape = sidecar["input"]["shape"][1:]
    assert shape == [3, 8, 8]
    raw = torch.randint(0, 256, (4, *shape), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    consts = {"gcn_scale": prep["gcn_scale"], "zca_mean": torch.from_numpy(decode(prep["zca_mean"]).copy()),
              "zca_matrix": torch.from_numpy(decode(prep["zca_matrix"]).copy())}
    x = torch.from_numpy(numpy_gcn_zca(raw.numpy(), consts))
    from nin_cli.data import to_input

    model, record = eager_model(path)
    expected_x = to_input(raw, record["data"]["preprocessing"])
    # float64 NumPy vs float32 torch, both rounded to float16 as training stores them: equal up to one float16 step
    assert torch.allclose(x, expected_x, rtol=2e-3, atol=1e-3)
    with torch.no_grad():
        assert torch.allclose(runtime("safetensors", out, sidecar)(x), model(expected_x), rtol=1e-3, atol=1e-3)
