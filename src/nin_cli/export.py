"""`nin export`: a checkpoint's model as ONNX, TorchScript, a torch.export program or safetensors weights.

Every export takes float32 NCHW input that is already preprocessed (see the sidecar's `preprocessing`) with a
dynamic batch dimension, and returns logits. After writing, the file is loaded back by its own runtime
(onnxruntime, torch.jit.load, torch.export.load, safetensors into a freshly built model) and run on real test
images at several batch sizes; the largest absolute difference from the eager model must be ≤ 1e-4, else exit 6.
The file is written under a temporary name beside its destination and renamed only once that check has passed: an
interrupted or failed export never leaves a partial or unchecked file at the final name.
A JSON sidecar (`<file>.json`) carries what a consumer needs: class names, input shape, preprocessing constants
and a recipe for every preprocessing kind. A safetensors export of a classic-dropout model holds a standard
inference model: the test-time × (1 − p) is folded into the weights (`fold_classic_dropout`).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from nin_cli.data import raw_test_images, to_input
from nin_cli.errors import CheckFailed, ConfigError, DataError
from nin_cli.files import atomic_write, require_utf8_path
from nin_cli.model import Dropout, LocallyConnected2d, build_model
from nin_cli.trained import load_trained

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "exported-program": ".pt2",
           "safetensors": ".safetensors"}
TOLERANCE = 1e-4
PARITY_IMAGES = 32


class ParityError(CheckFailed):
    """The reloaded export disagrees with the eager model: a check that did not hold (exit 6), not a crash."""


def _batch_dim():
    return torch.export.Dim("batch", min=1, max=65536)


def export_onnx(model: torch.nn.Module, example: torch.Tensor, out: Path) -> None:
    program = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"],
                                output_names=["logits"], dynamic_shapes=({0: _batch_dim()},), verbose=False)
    program.save(str(out))


@contextmanager
def _without_jit_deprecation() -> Iterator[None]:
    """torch.jit is deprecated upstream (FutureWarning on trace and load) but still what many runtimes load: only
    that warning is hidden, any other still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, out: Path) -> None:
    with _without_jit_deprecation():
        torch.jit.trace(model, example, check_trace=False).save(str(out))


def export_program(model: torch.nn.Module, example: torch.Tensor, out: Path) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},))
    torch.export.save(program, str(out))


# Between a dropout and the layer it feeds: modules that pass a scale through unchanged (a Flatten, the gap head's
# Identity, another dropout). Before it, back to the layer that made its input: f(a·x) = a·f(x) for a > 0.
_FORWARD_THROUGH = (nn.Flatten, nn.Identity)
_BACKWARD_THROUGH = (nn.Flatten, nn.Identity, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d)


def _scale_layer(layer: nn.Module, scale: float, bias: bool) -> None:
    with torch.no_grad():
        layer.weight.mul_(scale)
        if bias and getattr(layer, "bias", None) is not None:
            layer.bias.mul_(scale)


def _fold_one(leaves: list[tuple[str, nn.Module]], i: int, scale: float) -> nn.Module | None:
    """Fold a test-time × `scale` at leaves[i] into the next layer's weights (its input scaled: bias untouched,
    exact through zero padding and a batch norm after it) or, with no layer after it (a dropout before the gap
    head's mean), into the previous layer's weight and bias. Returns that layer, None when neither exists."""

    linear = (nn.Conv2d, nn.Linear, LocallyConnected2d)
    for _, module in leaves[i + 1:]:
        if isinstance(module, linear):
            _scale_layer(module, scale, bias=False)
            return module
        if not isinstance(module, (*_FORWARD_THROUGH, Dropout)):
            break
    for _, module in reversed(leaves[:i]):
        if isinstance(module, (*linear, nn.BatchNorm2d)) and getattr(module, "weight", None) is not None:
            _scale_layer(module, scale, bias=True)  # the output scaled: weight and bias (a batch norm's γ and β)
            return module
        if not isinstance(module, (*_BACKWARD_THROUGH, Dropout)):
            return None
    return None


def fold_classic_dropout(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of `model` whose classic dropouts' test-time × (1 − p) lives in the weights, each dropout then an
    identity at test time: its state dict is a standard inference model (PyTorch's inverted dropout, or none).
    Returns the copy and one note per fold; raises ValueError when a factor has no layer to go into."""

    model = copy.deepcopy(model)
    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]  # forward order in NIN
    names = {id(m): name for name, m in leaves}
    names.update({id(m): name for name, m in getattr(model, "named_layers", list)()})  # the paper's: conv2, cccp5
    notes = []
    for i, (name, module) in enumerate(leaves):
        if isinstance(module, Dropout) and module.classic and module.p > 0:
            target = _fold_one(leaves, i, 1 - module.p)
            if target is None:
                raise ValueError(f"the classic dropout {name} has no layer to fold its × (1 − p) into")
            module.classic = False  # inverted: the identity at test time
            notes.append(f"{name} (p={module.p:g}) → {names[id(target)]}")
    return model, notes


def inference_config(config: dict) -> dict:
    """The config a folded state dict loads into: the same model with PyTorch's (inverted) dropout."""
    model = config.get("model") or {}
    if model.get("dropout_style") != "classic":
        return config
    return {**config, "model": {**model, "dropout_style": "inverted"}}


def dropout_note(notes: list[str]) -> str:
    return ("classic dropout's test-time × (1 − p) is folded into the weights (" + "; ".join(notes) + "): load "
            "them into the same network with standard (inverted) dropout or none") if notes else ""


def export_safetensors(model: torch.nn.Module, out: Path, config: dict | None = None) -> None:
    """The state dict with the config it loads into in the metadata; a classic-dropout model folded first, and the
    fold said in the metadata too (where a loader looks first), so the weights are a standard inference model."""
    from safetensors.torch import save  # to bytes: the library's own file functions take UTF-8 paths only

    model, notes = fold_classic_dropout(model)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", "nin_config": json.dumps(inference_config(config or {}))}
    if notes:
        metadata["nin_dropout"] = dropout_note(notes)
    atomic_write(out, save(tensors, metadata=metadata))  # the one writer: never through a link at the temp name


def reload_runner(fmt: str, out: Path, trained) -> Callable[[torch.Tensor], torch.Tensor]:
    """The export as loaded by its own runtime: a function from a float32 batch to logits."""
    if fmt == "onnx":
        import onnx
        import onnxruntime

        onnx.checker.check_model(str(out))
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])
    if fmt == "torchscript":
        with _without_jit_deprecation():
            module = torch.jit.load(str(out), map_location="cpu").eval()
        return lambda x: module(x)
    if fmt == "exported-program":
        module = torch.export.load(str(out)).module()
        return lambda x: module(x)
    from safetensors.torch import load  # from bytes, as saved


    model_cfg = replace(trained.cfg.model, dropout_style="inverted")  # the file's weights are folded (see above)
    fresh = build_model(model_cfg, trained.cfg.head, trained.image_shape, len(trained.classes))
    fresh.load_state_dict(load(out.read_bytes()), strict=True)
    fresh.eval()
    return lambda x: fresh(x)


def parity_inputs(trained) -> tuple[torch.Tensor, str]:
    """Up to PARITY_IMAGES real test images, preprocessed with the checkpoint's constants; random inputs only when
    the dataset is not on this machine (said so in the output)."""

    try:
        images = raw_test_images(trained.cfg.dataset, PARITY_IMAGES).images
    except DataError:
        images = torch.zeros(0)
    if len(images) >= 2 and list(images.shape[1:]) == trained.image_shape:
        return to_input(images, trained.preprocessing), f"{len(images)} {trained.cfg.dataset.name} test images"
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(8, *trained.image_shape, generator=generator),
            f"8 random inputs ({trained.cfg.dataset.name} test images are not available here)")


@torch.no_grad()
def max_difference(run: Callable[[torch.Tensor], torch.Tensor], model: torch.nn.Module, x: torch.Tensor
                   ) -> tuple[float, list[int]]:
    """Largest |export − eager| over the whole batch and two other batch sizes (1 and 3): the batch is dynamic."""
    sizes = sorted({len(x), 1, min(3, len(x))}, reverse=True)
    worst = 0.0
    for size in sizes:
        batch = x[:size].contiguous()
        worst = max(worst, (run(batch).float() - model(batch).float()).abs().max().item())
    return worst, sizes


def encode_array(tensor: torch.Tensor) -> dict:
    """A large float array in JSON: little-endian float32 bytes, row-major, base64 (exact, 4 bytes a value)."""
    array = tensor.detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4")
    return {"dtype": "float32", "byte_order": "little", "shape": list(array.shape),
            "base64": base64.b64encode(array.tobytes()).decode("ascii")}


_GCN = ("x = float64(image uint8, C×H×W) flattened; x −= mean(x); x *= gcn_scale / n, n = ‖x‖₂, or 1 when "
        "‖x‖₂ < 1e-8")
_ROUNDING = ("; training stored these inputs rounded to float16 (round x to float16 and back to reproduce them "
             "bit for bit; unrounded float32 differs by at most 2⁻¹¹ relative)")
SCALE_STEP = "; then x *= input_scale (dataset.input_scale), before any rounding named above"
RECIPES = {  # kind → what a consumer does to one raw uint8 C×H×W image with the constants beside the recipe
    "none": "x = float32(image uint8, C×H×W) / 255 (no normalisation: mean 0, std 1)",
    "mean_std": "x = float32(image uint8, C×H×W) / 255; x[c] = (x[c] − mean[c]) / std[c] for each channel c",
    "mean_image": "x = float32(image uint8, C×H×W) − mean_image (C×H×W, in raw 0–255 units; no ÷255, no std)",
    "unit_mean_image": "x = float32(image uint8, C×H×W) / 255 − mean_image (C×H×W, stored already ÷255: the "
                       "mean of the training images on the [0, 1] scale; no std)",
    "gcn_zca": _GCN + "; x = (x − zca_mean) @ zca_matrix; reshape to C×H×W; float32" + _ROUNDING,
    "gcn_lcn": _GCN + "; reshape to C×H×W; then LeCun LCN on each channel's H×W map: k[i] = exp(−(i − "
               "lcn_kernel//2)² / (2·lcn_sigma²)) for i = 0..lcn_kernel−1, k /= sum(k), G = outer(k, k); "
               "blur(m) = G applied to m zero-padded to the same size ('same' correlation; G is symmetric); "
               "v = x − blur(x); d = √max(blur(x²), 0); x = v / max(d, mean(d) over the map, lcn_threshold) "
               "elementwise; float32" + _ROUNDING,
}


def preprocessing_for_json(consts: dict) -> dict:
    """The checkpoint's preprocessing constants plus the recipe that uses them: one per kind, each checked against
    `apply_preprocessing` by tests/test_export.py (a NumPy implementation of the recipe text)."""
    kind = consts.get("kind", "mean_std")
    if kind not in RECIPES:
        raise DataError(f"preprocessing kind {kind!r} has no export recipe; kinds are {', '.join(RECIPES)}")
    out = {k: (encode_array(v) if isinstance(v, torch.Tensor) else v) for k, v in consts.items()}
    out["kind"] = kind
    out["recipe"] = RECIPES[kind] + (SCALE_STEP if "input_scale" in consts else "")
    return out


def sidecar(trained, fmt: str, out: Path, difference: float, sizes: list[int], source: str) -> dict:
    config = trained.record["config"]
    meta = {
        "format": fmt, "file": out.name, "checkpoint": str(trained.path), "weights": trained.weights,
        "checkpoint_sha256": trained.record.get("sha256"),
        "classes": trained.classes,
        "input": {"name": "images", "dtype": "float32", "layout": "NCHW", "shape": ["batch", *trained.image_shape]},
        "output": {"name": "logits", "shape": ["batch", len(trained.classes)]},
        "preprocessing": preprocessing_for_json(trained.preprocessing),
        "parity": {"max_abs_diff": difference, "tolerance": TOLERANCE, "batch_sizes": sizes, "inputs": source},
        "config": config,
    }
    if fmt == "safetensors":  # the config the file's weights load into, and the fold when there was one
        meta["config"] = inference_config(config)
        meta["dropout"] = dropout_note(fold_classic_dropout(trained.model)[1]) or "no classic dropout: nothing folded"
    return meta


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A temporary path beside `out` for the exporter and its runtime (both need a path, not the open file that
    `atomic_write` hands out), renamed to `out` when the block succeeds. On failure or interruption the final name
    is never touched: the temp file is removed (a failed parity check moves it to `out.rejected` first)."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_and_check(trained, fmt: str, path: Path, x: torch.Tensor) -> tuple[float, list[int]]:
    """Write the export to `path`, reload it with its runtime, and return (max |export − eager|, batch sizes)."""
    writers = {"onnx": export_onnx, "torchscript": export_torchscript, "exported-program": export_program,
               "safetensors": lambda model, _, file: export_safetensors(model, file, trained.record["config"])}
    writers[fmt](trained.model, x[:max(2, min(4, len(x)))], path)  # a batch > 1: torch.export specialises 1
    return max_difference(reload_runner(fmt, path, trained), trained.model, x)


def export_command(path: Path, fmt: str, out: Path | None, weights: str = "auto", as_json: bool = False) -> dict:
    """`nin export`: write under a temporary name, reload, check parity, rename, write the sidecar; returns it."""

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: must be one of {', '.join(FORMATS)}")
    trained = load_trained(path, device="cpu", weights=weights)
    out = Path(out) if out else Path(path).with_name(Path(path).stem + FORMATS[fmt])
    if fmt != "safetensors":  # written and reloaded by C++ runtimes that take UTF-8 paths only (safetensors: bytes)
        require_utf8_path(out, f"--format {fmt} export", "its C++ writer and runtime")
    x, source = parity_inputs(trained)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with staged(out) as tmp:
            difference, sizes = write_and_check(trained, fmt, tmp, x)
            if not difference <= TOLERANCE:
                rejected = out.with_name(out.name + ".rejected")
                os.replace(tmp, rejected)
                raise ParityError(f"{fmt} export disagrees with the eager model: max |difference| {difference:.3g} "
                                  f"> {TOLERANCE:g} on {source}; nothing written to {out}, the file is kept as "
                                  f"{rejected}")
            meta = sidecar(trained, fmt, out, difference, sizes, source)  # before the rename: it can still fail
        sidecar_path = out.with_name(out.name + ".json")
        atomic_write(sidecar_path, json.dumps(meta, indent=1) + "\n")
    except OSError as err:
        raise DataError(f"cannot write {out}: {err.strerror or err}") from None
    report = sys.stderr if as_json else sys.stdout  # --json: stdout holds the sidecar alone
    print(f"{fmt}: reloaded with its runtime, max |export − eager| = {difference:.3g} (≤ {TOLERANCE:g}) on "
          f"{source}, batch sizes {', '.join(map(str, sizes))}", file=report)
    print(f"wrote {out} and {sidecar_path}", file=report)
    return meta
