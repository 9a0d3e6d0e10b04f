"""Evaluation: loss and error during training (`evaluate`), and `nin eval`'s full report of a checkpoint.

`nin eval` rebuilds the model from the checkpoint alone (`trained.load_trained`), loads the split of the
checkpoint's dataset (overrides may change it) preprocessed with the constants stored in the checkpoint (the fitted
ZCA included), and reports top-1/top-5 error, NLL, expected calibration error, per-class accuracy and the
confusion matrix: a rich table, JSON, a PNG and a TensorBoard image.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from nin_cli.config import DatasetConfig
from nin_cli.data import Data, load_data
from nin_cli.errors import ConfigError, DataError
from nin_cli.files import atomic_write, is_utf8_path, prepare_output_dir
from nin_cli.maps import confusion_image
from nin_cli.metrics import classification_metrics, evaluate, predict_log_probs  # noqa: F401 (evaluate: re-exported)
from nin_cli.runs import output_dir_problem
from nin_cli.trained import load_trained

log = logging.getLogger("nin")
SPLITS = ("test", "val", "train")
# Dataset keys that decide the preprocessing constants: while the overrides leave them as trained, the stored
# constants are used; otherwise they are fitted afresh on the (new) training split.
PREPROCESSING_KEYS = ("preprocessing", "gcn_scale", "zca_bias", "input_scale")


# ----------------------------------------------------------------------------------------------- metrics


# ------------------------------------------------------------------------------------------------- data


def load_eval_data(trained, device: torch.device, split: str) -> Data:
    """The split the overridden config names, preprocessed with the checkpoint's constants while the overrides
    leave preprocessing as trained (the ZCA travels in the checkpoint; nothing is fitted, no other split is
    prepared), else fitted afresh on its training split."""
    ds = trained.cfg.dataset
    stored = trained.record["config"].get("dataset", {})
    defaults = DatasetConfig()  # a key an older checkpoint's config lacks had its default then
    refit = any(stored.get(k, getattr(defaults, k)) != getattr(ds, k) for k in PREPROCESSING_KEYS)
    data = load_data(ds, device, None if refit else trained.preprocessing, splits=(split,))
    if data.num_classes != len(trained.classes) or data.image_shape != trained.image_shape:
        raise ConfigError(f"dataset={ds.name} gives {data.num_classes} classes of {data.image_shape} images; the "
                          f"checkpoint's model takes {len(trained.classes)} classes of {trained.image_shape}")
    return data


def evaluate_checkpoint(path: str | Path, overrides: list[str], split: str = "test", tta: bool = False,
                        weights: str = "auto") -> tuple[dict, object]:
    """(metrics, trained) of a checkpoint on one split of its (possibly overridden) dataset."""

    if split not in SPLITS:
        raise ConfigError(f"--split {split}: must be one of {', '.join(SPLITS)}")
    trained = load_trained(path, overrides, weights=weights)
    device = next(trained.model.parameters()).device
    data = load_eval_data(trained, device, split)
    part = getattr(data, split)
    if len(part) == 0:
        raise DataError(f"dataset={trained.cfg.dataset.name} has no {split} images (dataset.val_size=0?)")
    log_probs = predict_log_probs(trained.model, part, data.preprocessing, trained.cfg.trainer.eval_batch_size, tta)
    metrics = {"checkpoint": str(path), "split": split, "tta": tta, "weights": trained.weights,
               **classification_metrics(log_probs, part.labels, trained.classes)}
    return metrics, trained


# ------------------------------------------------------------------------------------------------ output


def default_eval_dir(path: Path, split: str, tta: bool) -> Path:
    """RUN/eval/<checkpoint>_<split>[_tta] for a checkpoint inside RUN/checkpoints/, else next to the file."""
    name = f"{path.stem}_{split}" + ("_tta" if tta else "")
    if path.parent.name == "checkpoints":
        return path.parent.parent / "eval" / name
    return path.parent / f"{path.stem}_eval" / name


def write_eval_outputs(metrics: dict, classes: list[str], out: Path, step: int) -> None:
    """metrics.json, confusion.png and a TensorBoard event file (scalars + the confusion image) under `out`."""
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter


    # out.parent.parent: the run (RUN/eval/NAME) or the checkpoint's folder (DIR/STEM_eval/NAME)
    prepare_output_dir(out, out.parent.parent, "evaluation folder")
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    title = (f"{metrics['split']}: top-1 error {metrics['top1_error']:.2f}%, n={metrics['n']}; "
             "rows true, columns predicted")
    image = confusion_image(metrics["confusion"], classes, title)
    atomic_write(out / "confusion.png", lambda f: image.save(f, format="PNG"))
    if not is_utf8_path(out):  # TensorBoard encodes file names as UTF-8 only; the JSON and the PNG are written
        log.warning("%r: not a UTF-8 path; TensorBoard cannot name its event file there: no tb/ (metrics.json and "
                    "confusion.png are written)", os.fsencode(out))
        return
    writer = SummaryWriter(str(out / "tb"))
    try:
        split = metrics["split"]
        for key in ("top1_error", "top5_error", "nll", "ece"):
            writer.add_scalar(f"eval/{split}/{key}", metrics[key], step)
        writer.add_image(f"eval/{split}/confusion", np.asarray(image), step, dataformats="HWC")
    finally:
        writer.close()


def show_eval(metrics: dict, classes: list[str], out: Path) -> None:
    """The human report: headline numbers, per-class accuracy and (up to 20 classes) the confusion matrix."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"{metrics['checkpoint']} on {metrics['split']} ({metrics['n']} images"
                  f"{', mirror TTA' if metrics['tta'] else ''}): top-1 error {metrics['top1_error']:.2f}%, "
                  f"top-5 error {metrics['top5_error']:.2f}%, NLL {metrics['nll']:.4f}, ECE {metrics['ece']:.4f}",
                  markup=False, highlight=False)
    confusion = metrics["confusion"]
    shown = sorted(range(len(classes)), key=lambda i: metrics["per_class_accuracy"][classes[i]] or 0.0)
    shown = sorted(shown[:10]) if len(classes) > 20 else list(range(len(classes)))
    per_class = Table(title="per-class accuracy" + (" (10 worst)" if len(classes) > 20 else ""))
    for column in ("class", "images", "accuracy"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for i in shown:
        accuracy = metrics["per_class_accuracy"][classes[i]]
        per_class.add_row(classes[i], str(sum(confusion[i])), "-" if accuracy is None else f"{100 * accuracy:.1f}%")
    console.print(per_class)
    if len(classes) <= 20:
        matrix = Table(title="confusion matrix")
        matrix.add_column("true \\ predicted")
        for j in range(len(classes)):
            matrix.add_column(str(j), justify="right")  # indices keep 20 columns within a terminal
        for i, row in enumerate(confusion):
            matrix.add_row(f"{i} {classes[i]}"[:16], *(f"[bold]{v}[/bold]" if i == j else str(v)
                                                       for j, v in enumerate(row)))
        console.print(matrix)
    console.print(f"wrote {out / 'metrics.json'}, {out / 'confusion.png'} and TensorBoard events in {out / 'tb'}",
                  markup=False, highlight=False)


def eval_command(path: Path, overrides: list[str], split: str, tta: bool, as_json: bool, out: Path | None,
                 weights: str = "auto") -> None:
    """`nin eval`: evaluate, write the outputs, then print JSON or the rich report. An output folder that is a
    file, under a file or not writable is exit 2 with nothing written (`--out` is checked before any work)."""
    import errno

    def check(where: Path) -> Path:
        problem = output_dir_problem(where)
        if problem:
            given = f"--out {out}" if out else f"the default output folder {where}"
            raise ConfigError(f"{given}: {problem}; give --out DIR, a directory you can write")
        return where

    if out:  # given: checked before any work; the default (next to the checkpoint) once the checkpoint is read
        check(out)
    metrics, trained = evaluate_checkpoint(path, overrides, split, tta, weights)
    where = check(out or default_eval_dir(Path(path), split, tta))
    try:
        write_eval_outputs(metrics, trained.classes, where, int(trained.record.get("state", {}).get("step", 0)))
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(f"no space left on the device writing the outputs in {where}") from None
        raise ConfigError(f"cannot write the outputs in {where} ({err.strerror or err}: {err.filename}); give "
                          "--out DIR, a directory you can write") from None
    if as_json:
        print(json.dumps(metrics))
    else:
        show_eval(metrics, trained.classes, where)


def run_checkpoints(path: Path) -> list[Path]:
    """Every checkpoint of a run directory (or of a checkpoints/ folder): epoch files in order, then best, last."""
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = sorted(folder.glob("*.pt"), key=lambda p: (not p.stem.startswith("epoch_"), p.stem != "best", p.name))
    if not found:
        raise DataError(f"{path}: no checkpoints (*.pt) to score in {folder}")
    return found


def eval_run_command(path: Path, overrides: list[str], split: str, tta: bool, as_json: bool,
                     weights: str = "auto") -> list[dict]:
    """`nin eval RUN_DIR`: every checkpoint of the run scored on one split, in one table (or one JSON object)."""
    rows = []
    for checkpoint in run_checkpoints(path):
        metrics, trained = evaluate_checkpoint(checkpoint, overrides, split, tta, weights)
        state = trained.record.get("state") or {}
        rows.append({"checkpoint": checkpoint.name, "epoch": state.get("epoch"), "step": state.get("step"),
                     "weights": metrics["weights"], **{k: metrics[k] for k in ("top1_error", "top5_error", "nll",
                                                                               "ece")}})
    if as_json:
        print(json.dumps({"run": str(path), "split": split, "tta": tta, "checkpoints": rows}))
        return rows
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{path}: every checkpoint on {split}{' (mirror TTA)' if tta else ''}")
    for column in ("checkpoint", "epoch", "step", "weights", "top-1 error %", "top-5 error %", "NLL", "ECE"):
        table.add_column(column, justify="left" if column in ("checkpoint", "weights") else "right")
    for r in rows:
        table.add_row(r["checkpoint"], str(r["epoch"]), str(r["step"]), r["weights"], f"{r['top1_error']:.2f}",
                      f"{r['top5_error']:.2f}", f"{r['nll']:.4f}", f"{r['ece']:.4f}")
    Console().print(table)
    return rows
