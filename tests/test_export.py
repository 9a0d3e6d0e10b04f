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


@pytest.mark.parametrize("fmt", ["onnx", "safetensors"])
def test_a_parity_failure_exits_6_and_leaves_nothing_at_the_final_name(nin, best, tmp_path, monkeypatch, fmt):
    import nin_cli.export as export

    real = export.reload_runner
    monkeypatch.setattr(export, "reload_runner", lambda *a: (lambda x, run=real(*a): run(x) + 1e-3))
    out = tmp_path / f"m.{EXTENSIONS[fmt]}"
    result = nin("export", best, "--format", fmt, "--out", out)
    assert result.code == 6 and len(result.err_lines) == 1 and "disagrees" in result.err
    assert not out.exists() and not out.with_name(out.name + ".json").exists()
    rejected = out.with_name(out.name + ".rejected")  # the unchecked file, whole, under a name nothing loads
    assert rejected.stat().st_size > 0 and str(rejected) in result.err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_an_interrupted_export_keeps_the_previous_file_whole(nin, best, tmp_path, monkeypatch):
    """Killed half-way through writing (here: Ctrl-C inside the writer, after half the bytes): the final name keeps
    the previous export byte for byte, and the half-written temp file is gone."""
    import nin_cli.export as export

    out = tmp_path / "m.safetensors"
    assert nin("export", best, "--format", "safetensors", "--out", out).code == 0
    before = out.read_bytes()

    def half_then_interrupt(model, path, config=None):
        Path(path).write_bytes(before[:len(before) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_safetensors", half_then_interrupt)
    result = nin("export", best, "--format", "safetensors", "--out", out)
    assert result.code == 130, result.err
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


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


# ------------------------------------------------------------------ every preprocessing kind's recipe, as written


def recipe_gcn(x: np.ndarray, prep: dict) -> np.ndarray:
    """'x −= mean(x); x *= gcn_scale / n, n = ‖x‖₂, or 1 when ‖x‖₂ < 1e-8', per flattened image, in float64."""
    flat = x.reshape(len(x), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return (flat * prep["gcn_scale"] / np.where(norm < 1e-8, 1.0, norm)).reshape(x.shape)


def recipe_lcn(x: np.ndarray, prep: dict) -> np.ndarray:
    """The recipe's LeCun LCN: a 2-D Gaussian G from lcn_kernel and lcn_sigma, zero-padded 'same' filtering written
    as a sum of shifted copies, v = x − G∗x, d = √(G∗x²), x = v / max(d, mean(d) per map, lcn_threshold)."""
    size, sigma, mid = prep["lcn_kernel"], prep["lcn_sigma"], prep["lcn_kernel"] // 2
    k = np.exp(-((np.arange(size) - mid) ** 2) / (2 * sigma ** 2))
    g = np.outer(k / k.sum(), k / k.sum())
    height, width = x.shape[-2:]

    def blur(m: np.ndarray) -> np.ndarray:
        padded = np.pad(m, [(0, 0), (0, 0), (mid, mid), (mid, mid)])
        return sum(g[i, j] * padded[..., i:i + height, j:j + width] for i in range(size) for j in range(size))

    v, d = x - blur(x), np.sqrt(np.maximum(blur(x * x), 0))
    return v / np.maximum(np.maximum(d, d.mean(axis=(2, 3), keepdims=True)), prep["lcn_threshold"])


def apply_recipe(prep: dict, raw: np.ndarray) -> np.ndarray:
    """A consumer's preprocessing from the sidecar alone: the recipe text of each kind with its constants, then the
    input scale when the sidecar names one."""
    x = recipe_of_kind(prep, raw)
    return x * prep["input_scale"] if "input_scale" in prep else x


def recipe_of_kind(prep: dict, raw: np.ndarray) -> np.ndarray:
    x, kind = raw.astype(np.float64), prep["kind"]
    if kind == "none":
        return x / 255
    if kind == "mean_std":
        shape = (1, -1, 1, 1)
        return (x / 255 - np.reshape(prep["mean"], shape)) / np.reshape(prep["std"], shape)
    if kind == "mean_image":
        return x - decode(prep["mean_image"])
    if kind == "unit_mean_image":
        return x / 255 - decode(prep["mean_image"])
    x = recipe_gcn(x, prep)
    if kind == "gcn_zca":
        flat = x.reshape(len(x), -1)
        return ((flat - decode(prep["zca_mean"])) @ decode(prep["zca_matrix"]).astype(np.float64)).reshape(x.shape)
    assert kind == "gcn_lcn", kind
    return recipe_lcn(x, prep)


# The words each recipe must hold for `apply_recipe` to be the recipe as written.
RECIPE_WORDS = {"none": ["/ 255"], "mean_std": ["/ 255", "(x[c] − mean[c]) / std[c]"],
                "mean_image": ["− mean_image", "raw 0–255 units; no ÷255"],
                "unit_mean_image": ["/ 255 − mean_image", "stored already ÷255"],
                "gcn_zca": ["gcn_scale / n", "(x − zca_mean) @ zca_matrix", "float16"],
                "gcn_lcn": ["gcn_scale / n", "lcn_kernel//2", "lcn_sigma²", "zero-padded", "√max(blur(x²), 0)",
                            "max(d, mean(d) over the map, lcn_threshold)", "float16"]}
# Tolerance against nin's float32 `apply_preprocessing`: 1e-6, but 3e-5 for GCN+ZCA, whose outputs reach ~18 here:
# float32's rounding of the GCN values (~2e-7 each) summed over 300 inputs through a whitening matrix with entries of
# order 1 is ~1e-5 (measured: at most 1.1e-5 over 3 seeds; GCN+LCN at most 5e-7).
RECIPE_TOLERANCE = {"gcn_zca": 3e-5}


def kind_choices() -> list[str]:
    import dataclasses

    from nin_cli.config import DatasetConfig

    field = next(f for f in dataclasses.fields(DatasetConfig) if f.name == "preprocessing")
    return list(field.metadata["choices"])


def test_every_preprocessing_kind_has_a_recipe():
    from nin_cli.export import RECIPES

    assert sorted(RECIPES) == sorted(kind_choices()) == sorted(RECIPE_WORDS)


@pytest.mark.parametrize("scale", [1.0, 16.0])
@pytest.mark.parametrize("kind", kind_choices())
def test_each_kind_s_recipe_gives_the_model_s_inputs(tmp_path, kind, scale):
    """The sidecar's recipe and constants, applied by NumPy to raw uint8 images exactly as written, give nin's
    `apply_preprocessing` output to 1e-6 (GCN+ZCA: 3e-5, see RECIPE_TOLERANCE); the float16 rounding the GCN
    recipes name gives `to_input`'s inputs (what the exported model is fed): 99 % bit for bit, the rest within one
    float16 step."""
    from nin_cli.data import Split, fit_preprocessing, to_input
    from nin_cli.export import preprocessing_for_json
    from nin_cli.overrides import load_config
    from nin_cli.preprocess import apply_preprocessing

    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (300, 3, 10, 10), generator=generator, dtype=torch.uint8)
    images[0] = 77  # a flat image: GCN only centres it
    cfg = load_config(["dataset=synthetic", "dataset.image_shape=[3,10,10]", f"dataset.preprocessing={kind}",
                       f"dataset.cache_dir={tmp_path}", f"dataset.input_scale={scale}"]).dataset
    constants = fit_preprocessing(Split(images[:256], torch.zeros(256, dtype=torch.long)), cfg, torch.device("cpu"))
    prep = json.loads(json.dumps(preprocessing_for_json(constants)))  # what a consumer reads from the sidecar
    assert prep["kind"] == kind and all(word in prep["recipe"] for word in RECIPE_WORDS[kind]), prep["recipe"]
    assert prep.get("input_scale", 1.0) == scale and ("x *= input_scale" in prep["recipe"]) == (scale != 1.0)
    raw = torch.cat([images[:1], images[256:]])  # test images: not fitted on, the flat one included
    ours = apply_recipe(prep, raw.numpy())
    nin_x = apply_preprocessing(raw, constants).double().numpy()
    tol = RECIPE_TOLERANCE.get(kind, 1e-6) * scale  # an absolute error: scaled with the inputs
    assert np.abs(ours - nin_x).max() <= tol
    model_x = to_input(raw, constants).double().numpy()
    if "float16" in prep["recipe"]:  # rounded alike, up to one float16 step where the float32 noise crosses a tie
        rounded = ours.astype(np.float16).astype(np.float64)
        assert np.all(np.abs(rounded - model_x) <= 2 ** -10 * np.abs(model_x) + tol)
        assert np.mean(rounded == model_x) > 0.99
    else:
        assert np.abs(ours - model_x).max() <= tol
    if kind == "unit_mean_image":  # the mean image is stored on the [0, 1] scale, the input's own
        assert decode(prep["mean_image"]).max() <= 1.0 and abs(ours.mean()) < 0.05 * scale


# --------------------------------------------------------------- classic dropout, loaded by each file's runtime


def plain_forward(tensors: dict, x: torch.Tensor) -> torch.Tensor:
    """nin_small's eval forward from a state dict alone, written from the architecture (per block: each conv →
    batch norm where it has one → ReLU, but not after the last block's last layer; 3×2 max pooling after every
    block but the last; global average pooling) with no dropout at all: a standard inference model."""
    import torch.nn.functional as F

    blocks = sorted({int(k.split(".")[1]) for k in tensors})
    for b in blocks:
        last_block = b == blocks[-1]
        prefix = f"features.{b}.body."
        indices = sorted({int(k[len(prefix):].split(".")[0]) for k in tensors if k.startswith(prefix)})
        for i in indices:
            t = {k[len(f"{prefix}{i}."):]: v for k, v in tensors.items() if k.startswith(f"{prefix}{i}.")}
            if "running_mean" in t:
                x = F.batch_norm(x, t["running_mean"], t["running_var"], t["weight"], t["bias"], eps=1e-5)
            else:
                x = F.conv2d(x, t["weight"], t.get("bias"), padding=t["weight"].shape[-1] // 2)
            followed_by_bn = f"{prefix}{i + 1}.running_mean" in tensors
            if not followed_by_bn and not (last_block and i == indices[-1]):
                x = F.relu(x)
        if not last_block:
            x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    return x.mean(dim=(2, 3))


@pytest.fixture(scope="module")
def classic(tmp_path_factory) -> Path:
    """A classic-dropout nin_small checkpoint with batch-norm statistics that are not the identity."""
    from test_eval import fabricate

    path = fabricate(tmp_path_factory.mktemp("classic"), ["model.dropout_style=classic"])
    record = torch.load(path, weights_only=True)
    generator = torch.Generator().manual_seed(5)
    for key, value in record["model"].items():
        if key.endswith(("running_mean", "bias")):
            value.copy_(0.3 * torch.randn(value.shape, generator=generator))
        elif key.endswith("running_var"):
            value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
    from nin_cli.checkpoint import save_checkpoint

    save_checkpoint(path, {key: record[key] for key in ("config", "model", "data")})
    return path


@pytest.mark.parametrize("fmt", list(EXTENSIONS))
def test_a_classic_dropout_export_matches_nin_in_its_own_runtime(nin, classic, tmp_path, fmt):
    """Each file loaded by its own runtime, not by nin, gives the eager classic model's eval logits; the eager
    model differs from the same weights under inverted dropout, so the test-time × (1 − p) is really exercised.
    safetensors: read by the safetensors library and run through `plain_forward`, which has no dropout at all, so
    the factor must be in the weights (the raw checkpoint weights in the same forward pass are off)."""
    out = tmp_path / f"classic.{EXTENSIONS[fmt]}"
    result = nin("export", classic, "--format", fmt, "--out", out)
    assert result.code == 0, result.err
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    model, record = eager_model(classic)
    x = torch.randn(7, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(x)
        inverted, _ = eager_model_as(classic, "inverted")
        assert (inverted(x) - expected).abs().max().item() > 1e-2
        if fmt == "safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(out), "pt") as f:
                metadata = f.metadata()
            assert json.loads(metadata["nin_config"])["model"]["dropout_style"] == "inverted"
            assert "folded into the weights" in metadata["nin_dropout"] and "→ conv2" in metadata["nin_dropout"]
            assert sidecar["config"]["model"]["dropout_style"] == "inverted" and "folded" in sidecar["dropout"]
            got = plain_forward(load_file(str(out)), x)
            assert (plain_forward(record["model"], x) - expected).abs().max().item() > 1e-2  # unfolded: off
        else:
            got = runtime(fmt, out, sidecar)(x)
    assert (got - expected).abs().max().item() <= 1e-4


def eager_model_as(checkpoint: Path, dropout_style: str):
    record = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = {**record["config"], "model": {**record["config"]["model"], "dropout_style": dropout_style}}
    cfg = to_config(config)
    model = build_model(cfg.model, cfg.head, record["data"]["image_shape"], len(record["data"]["classes"]))
    model.load_state_dict(record["model"])
    return model.eval(), record
