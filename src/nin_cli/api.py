"""nin's Python API: train, load a checkpoint, evaluate, predict, read a run's results.

    from nin_cli import api
    summary = api.train(["experiment=demo_digits", "trainer.epochs=3"], run_dir=Path("runs/demo"))
    metrics = api.evaluate("runs/demo/checkpoints/best.pt")            # nin eval --json's report
    probs = api.predict("runs/demo/checkpoints/best.pt", images)       # uint8 N×C×H×W → N×classes
    run = api.read_run("runs/demo")                                    # config, summary, metrics rows

Each function goes through the code the commands use (`nin train`, `nin eval`, the checkpoint loader) and raises
what a command would turn into an exit code: `nin_cli.errors.ConfigError` (2), `DataError` (3), `UnsafeFileError`
(4), `DivergedError` (5), `Interrupted` (130 / 143); `err.exit_code` holds the code. Importing this module sets up no
logging and no signal handler, and imports neither torch nor Hydra (each function imports what it needs).
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from nin_cli.trained import Trained  # lazy: torch-free import

__all__ = ["train", "load", "evaluate", "predict", "read_run"]


@contextmanager
def _process_state_kept() -> Iterator[None]:
    """Training sets up Hydra's job logging (train.log, stderr) and signal handlers, as `nin train` does; a caller's
    process keeps running afterwards, so its root logger and handlers are put back, whatever happened."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
    main = threading.current_thread() is threading.main_thread()  # handlers can only be set from the main thread
    previous = {sig: signal.getsignal(sig) for sig in signals} if main else {}
    try:
        yield
    finally:
        for handler in set(root.handlers) - set(handlers):
            handler.close()  # closes train.log
        root.handlers[:] = handlers
        root.setLevel(level)
        for sig, old in previous.items():
            if old is not None:  # None: set outside Python, cannot be put back from here
                signal.signal(sig, old)


def train(overrides: Sequence[str], run_dir: Path | str | None = None) -> dict[str, Any]:
    """Train one model like `nin train OVERRIDES...` and return its summary (summary.json's content).

    `overrides` use Hydra's grammar (`["experiment=demo_digits", "trainer.epochs=3"]`); `run_dir` is
    `hydra.run.dir` (default: outputs/train/<time>_<dataset>_<model>/ under the working directory). A `run_dir`
    that holds an unfinished run continues it, as `nin train hydra.run.dir=DIR` does. The config is validated
    before anything is created (ConfigError). One process only: `trainer.devices > 1` needs `nin train`.
    """
    from nin_cli.errors import ConfigError  # lazy: torch-free import
    from nin_cli.hydra_app import hydra_run  # lazy: torch-free import
    from nin_cli.overrides import load_config  # lazy: torch-free import
    from nin_cli.runs import resume_overrides  # lazy: torch-free import

    if run_dir is not None and any(o.lstrip("+").startswith("hydra.run.dir=") for o in overrides):
        raise ConfigError("the run directory is given twice: as run_dir and as hydra.run.dir; give one")
    args = [*overrides, *([f"hydra.run.dir={_quoted(run_dir)}"] if run_dir is not None else [])]
    args = resume_overrides(args)  # an existing run continues with its own overrides first
    cfg = load_config(args)  # validate before torch is imported or a run directory exists
    if cfg.trainer.devices > 1:
        raise ConfigError(f"trainer.devices={cfg.trainer.devices}: the API trains in one process; use "
                          "`nin train` for several")
    from nin_cli.train import train_run  # torch: only once the config is known to be good

    with _process_state_kept():
        return hydra_run(args, train_run)


def _quoted(path: Path | str) -> str:
    """A path as a quoted Hydra override value, so spaces, commas or '=' in it stay part of it. Hydra's quoting:
    a quote inside is escaped, and backslashes count as escapes only right before a quote (doubled there)."""
    text = re.sub(r"(\\*)'", lambda m: m[1] * 2 + "\\'", str(path))
    return "'" + re.sub(r"(\\+)$", lambda m: m[1] * 2, text) + "'"


def load(checkpoint: Path | str, device: str | None = None, weights: str = "auto") -> Trained:
    """The model of a checkpoint, rebuilt from the file alone through nin's safe loader, in eval mode.

    Returns a `nin_cli.trained.Trained`: `.model` (a torch module taking preprocessed float32 N×C×H×W
    batches), `.classes`, `.image_shape` ([C, H, W]), `.preprocessing` (the constants training fitted), `.cfg`
    (the run's config). `device`: default the run's trainer.device; `weights`: auto | ema | raw (auto: the moving
    average when the checkpoint has one).
    """
    from nin_cli.trained import load_trained  # lazy: torch-free import

    return load_trained(checkpoint, device=device, weights=weights)


def evaluate(checkpoint: Path | str, split: str = "test", overrides: Sequence[str] = (), tta: bool = False,
             weights: str = "auto") -> dict[str, Any]:
    """`nin eval CKPT --json`'s report of one split (test | val | train) of the checkpoint's dataset:
    top1_error and top5_error (%), nll, ece, per_class_accuracy, confusion, n; nothing is written."""
    from nin_cli.evaluate import evaluate_checkpoint  # lazy: torch-free import

    metrics, _ = evaluate_checkpoint(checkpoint, list(overrides), split, tta, weights)
    return metrics


def predict(checkpoint: Path | str | Trained, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Class probabilities (float32, N × classes, on `images`' device) of raw uint8 images N×C×H×W of the
    checkpoint's image shape, preprocessed with the constants stored in the checkpoint, as training saw them.
    Pass `load(...)`'s result instead of a path to load the checkpoint once for many calls."""
    import torch

    from nin_cli.data import Split  # lazy: torch-free import
    from nin_cli.metrics import predict_log_probs  # lazy: torch-free import
    from nin_cli.trained import Trained  # lazy: torch-free import

    trained = checkpoint if isinstance(checkpoint, Trained) else load(checkpoint)
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError(f"images: a uint8 tensor of raw pixels expected, got {getattr(images, 'dtype', images)!r}")
    if images.dim() != 4 or list(images.shape[1:]) != list(trained.image_shape):
        raise ValueError(f"images: shape N×{'×'.join(map(str, trained.image_shape))} expected (the model's input), "
                         f"got {'×'.join(map(str, images.shape))}")
    device = next(trained.model.parameters()).device
    split = Split(images.to(device), torch.zeros(len(images), dtype=torch.long, device=device))  # labels unused
    log_probs = predict_log_probs(trained.model, split, trained.preprocessing, batch_size)
    return log_probs.exp().to(images.device)


def read_run(run_dir: Path | str) -> dict[str, Any]:
    """A run directory's results as data: {"run_dir", "config" (config.yaml), "summary" (summary.json; None while
    the run is unfinished), "metrics" (metrics.jsonl: one dict per finished epoch)}. Read through results.py, the
    one reader of run directories: a missing config.yaml or a damaged file is a DataError naming it."""
    from nin_cli.results import read_config, read_metrics, read_summary  # lazy: torch-free import

    run = Path(run_dir)
    return {"run_dir": str(run), "config": read_config(run), "summary": read_summary(run),
            "metrics": read_metrics(run, running=True)}
