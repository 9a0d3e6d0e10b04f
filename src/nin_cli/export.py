"""`nin export`: a checkpoint's model as ONNX, TorchScript, a torch.export program or safetensors weights.

Every export takes float32 NCHW input that is already preprocessed (see the sidecar's `preprocessing`) with a
dynamic batch dimension, and returns logits. After writing, the file is loaded back by its own runtime
(onnxruntime, torch.jit.load, torch.export.load, safetensors into a freshly built model) and run on real test
images at several batch sizes; the largest absolute difference from the eager model must be ≤ 1e-4, else exit 1.
A JSON sidecar (`<file>.json`) carries what a consumer needs: class names, input shape, preprocessing constants.
"""

from __future__ import annotations

import base64
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from nin_cli.errors import CheckFailed, ConfigError, DataError

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


def export_safetensors(model: torch.nn.Module, out: Path, config: dict | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out), metadata={"format": "pt", "nin_config": json.dumps(config or {})})


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
    from safetensors.torch import load_file

    from nin_cli.model import build_model

    fresh = build_model(trained.cfg.model, trained.cfg.head, trained.image_shape, len(trained.classes))
    fresh.load_state_dict(load_file(str(out)), strict=True)
    fresh.eval()
    return lambda x: fresh(x)


def parity_inputs(trained) -> tuple[torch.Tensor, str]:
    """Up to PARITY_IMAGES real test images, preprocessed with the checkpoint's constants; random inputs only when
    the dataset is not on this machine (said so in the output)."""
    from nin_cli.data import raw_test_images, to_input

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


def preprocessing_for_json(consts: dict) -> dict:
    """The checkpoint's preprocessing constants plus the recipe that uses them."""
    out = {k: (encode_array(v) if isinstance(v, torch.Tensor) else v) for k, v in consts.items()}
    if consts.get("kind") == "gcn_zca":
        out["recipe"] = ("x = float(image uint8, C×H×W) flattened; x -= mean(x); x *= gcn_scale / max(‖x‖₂, 1e-8); "
                         "x = (x − zca_mean) @ zca_matrix; reshape to C×H×W (float32)")
    else:
        out["recipe"] = "x = image uint8 C×H×W / 255; x[c] = (x[c] − mean[c]) / std[c] (float32)"
    return out


def sidecar(trained, fmt: str, out: Path, difference: float, sizes: list[int], source: str) -> dict:
    return {
        "format": fmt, "file": out.name, "checkpoint": str(trained.path), "weights": trained.weights,
        "checkpoint_sha256": trained.record.get("sha256"),
        "classes": trained.classes,
        "input": {"name": "images", "dtype": "float32", "layout": "NCHW", "shape": ["batch", *trained.image_shape]},
        "output": {"name": "logits", "shape": ["batch", len(trained.classes)]},
        "preprocessing": preprocessing_for_json(trained.preprocessing),
        "parity": {"max_abs_diff": difference, "tolerance": TOLERANCE, "batch_sizes": sizes, "inputs": source},
        "config": trained.record["config"],
    }


def export_command(path: Path, fmt: str, out: Path | None, weights: str = "auto", as_json: bool = False) -> dict:
    """`nin export`: write, reload, check parity, write the sidecar; returns the sidecar."""
    from nin_cli.checkpoint import load_trained

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: must be one of {', '.join(FORMATS)}")
    trained = load_trained(path, device="cpu", weights=weights)
    out = Path(out) if out else Path(path).with_name(Path(path).stem + FORMATS[fmt])
    x, source = parity_inputs(trained)
    writers = {"onnx": export_onnx, "torchscript": export_torchscript, "exported-program": export_program,
               "safetensors": lambda model, _, file: export_safetensors(model, file, trained.record["config"])}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        writers[fmt](trained.model, x[:max(2, min(4, len(x)))], out)  # a batch > 1: torch.export specialises 1
    except OSError as err:
        raise DataError(f"cannot write {out}: {err.strerror or err}") from None
    difference, sizes = max_difference(reload_runner(fmt, out, trained), trained.model, x)
    if not difference <= TOLERANCE:
        raise ParityError(f"{fmt} export {out} disagrees with the eager model: max |difference| {difference:.3g} "
                          f"> {TOLERANCE:g} on {source}; the file is kept for inspection, no sidecar written")
    meta = sidecar(trained, fmt, out, difference, sizes, source)
    sidecar_path = out.with_name(out.name + ".json")
    sidecar_path.write_text(json.dumps(meta, indent=1) + "\n")
    report = sys.stderr if as_json else sys.stdout  # --json: stdout holds the sidecar alone
    print(f"{fmt}: reloaded with its runtime, max |export − eager| = {difference:.3g} (≤ {TOLERANCE:g}) on "
          f"{source}, batch sizes {', '.join(map(str, sizes))}", file=report)
    print(f"wrote {out} and {sidecar_path}", file=report)
    return meta
