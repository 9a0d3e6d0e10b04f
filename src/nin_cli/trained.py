"""A trained model from a checkpoint: `load_trained(path)` rebuilds it (eval mode, on a device) through the safe
loader of checkpoint.py, with the config it was trained with (overrides on top, checked like `nin train`'s), the
weights chosen (raw or their moving average) and everything needed to feed it (classes, image shape, the fitted
preprocessing constants). `nin eval`, `export`, `cam`, `predict`, fine-tuning and the Python API use it;
checkpoint.py stays the file format alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nin_cli.checkpoint import load_checkpoint
from nin_cli.config import HeadConfig, ModelConfig, NinConfig
from nin_cli.errors import ConfigError, DataError, NinError
from nin_cli.files import one_line
from nin_cli.model import NIN, build_model
from nin_cli.overrides import checkpoint_config
from nin_cli.runtime import resolve_device


@dataclass
class Trained:
    """A checkpoint turned back into a model (eval mode), with everything needed to feed it."""

    path: Path
    cfg: NinConfig  # the checkpoint's config with the command line's overrides applied
    model: NIN
    classes: list[str]
    image_shape: list[int]
    preprocessing: dict
    record: dict
    weights: str = "raw"  # which weights the model holds: the raw ones or their moving average ("ema")


def _refuse_non_finite(path: Path, state: dict) -> None:
    """Weights or buffers with NaN or inf give meaningless outputs (training never saves them: a file that has
    them was damaged or made elsewhere)."""
    bad = [name for name, t in state.items()
           if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise DataError(f"{path}: non-finite weights (NaN or inf in {bad[0]}{more}); the file is not a usable model")


WEIGHTS = ("auto", "ema", "raw")


def chosen_weights(record: dict, choice: str, path: Path) -> tuple[dict, str]:
    """The state dict `choice` asks for: the moving average when the checkpoint has one (auto, ema) or the raw
    weights (raw, or auto without one); `--weights ema` on a checkpoint without it is a config error."""
    if choice not in WEIGHTS:
        raise ConfigError(f"--weights {choice}: must be one of {', '.join(WEIGHTS)}")
    ema = record.get("ema")
    if choice == "raw" or (choice == "auto" and not isinstance(ema, dict)):
        return record["model"], "raw"
    if not isinstance(ema, dict):
        raise ConfigError(f"--weights ema: {path} holds no moving average (it was trained without trainer.ema_decay)")
    return {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}, "ema"


def load_trained(path: str | Path, overrides: list[str] | tuple[str, ...] = (), device: str | None = None,
                 weights: str = "auto") -> Trained:
    """Rebuild the model from a checkpoint alone (through `load_checkpoint`), in eval mode on `device`
    (default: the config's trainer.device, which overrides may change), with the `weights` chosen: the moving
    average when the checkpoint has one (`auto`), else the raw weights."""
    path = Path(path)
    record = load_checkpoint(path)
    data = record.get("data")
    if not isinstance(record.get("config"), dict) or not isinstance(record.get("model"), dict) or not (
            isinstance(data, dict) and {"classes", "image_shape", "preprocessing"} <= set(data)):
        raise DataError(f"{path}: a nin checkpoint without its config, weights or data description")
    state, kind = chosen_weights(record, weights, path)
    _refuse_non_finite(path, state)
    try:
        cfg = checkpoint_config(record["config"], list(overrides))
    except ConfigError as err:
        if overrides:
            raise
        raise DataError(f"{path}: its stored config is not valid ({err})") from None
    classes, shape = list(data["classes"]), list(data["image_shape"])

    def rebuild(model_cfg: ModelConfig, head_cfg: HeadConfig) -> NIN:
        model = build_model(model_cfg, head_cfg, shape, len(classes))
        model.load_state_dict(state)
        return model

    try:
        model = rebuild(cfg.model, cfg.head)
    except (RuntimeError, ValueError, TypeError) as err:
        problem = one_line(err, 160)
        try:  # whose fault: the command line's (exit 2) only when the stored config fits the weights
            stored = checkpoint_config(record["config"], []) if overrides else None
            if stored is not None:
                rebuild(stored.model, stored.head)
        except (NinError, RuntimeError, ValueError, TypeError):
            stored = None
        if stored is not None:
            raise ConfigError(f"{path}: cannot rebuild the model (the overrides change the model: {problem})"
                              ) from None
        raise DataError(f"{path}: cannot rebuild the model (its config does not match its weights: {problem}); "
                        "the file is not what it claims") from None
    target = torch.device(device) if device else resolve_device(cfg.trainer.device)
    return Trained(path, cfg, model.to(target).eval(), classes, shape, data["preprocessing"], record, kind)
