"""Fine-tuning: `trainer.init_from=CKPT` starts a run from another checkpoint's weights, `trainer.freeze` keeps
named blocks or layers as loaded.

Weights only: the source goes through the one safe loader (`checkpoint.load_checkpoint`: exit 3 for a missing or
corrupt file, 4 for one that would run code) and only its tensors are used — its config, optimizer, schedule and
preprocessing constants are not (this run's config is the command line's, checked as always, and its data fits
its own constants). Every tensor of the new model whose name and shape match the source's is copied; the rest keep
this run's init (the class-map layer for another class count, a first conv for grey instead of RGB input, ...)
and are named in one log line, as are the layers `trainer.init_reset` re-initialises on purpose. The source file's
sha256 goes to provenance.json. `prepare_model` runs after a resume was looked for: a resumed run continues from
its own checkpoint and never loads init_from again; freezing applies to every process of the run, resumed or not.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch import nn

from nin_cli.checkpoint import load_checkpoint
from nin_cli.errors import ConfigError, DataError
from nin_cli.runs import record_provenance
from nin_cli.trained import chosen_weights

log = logging.getLogger("nin")


def prepare_model(loop, resumed: bool) -> None:
    """The one call `train.setup` makes once the loop (model, optimizer, moving average) and the resume choice
    exist; `loop` is a `state.Loop`."""
    tr, model, is_main = loop.cfg.trainer, loop.model, loop.dist.is_main
    if tr.init_reset and not tr.init_from:
        raise ConfigError("trainer.init_reset re-initialises layers loaded by trainer.init_from, which is not set")
    unit_prefixes(model, tr.freeze, "trainer.freeze")  # a misspelt name: exit 2 before the source is read
    if tr.init_from and not resumed:
        init_from(model, Path(tr.init_from).expanduser(), tr.init_reset, loop.paths.root, is_main)
        if loop.ema is not None:  # it copied the fresh init when the loop was built
            loop.ema.module.load_state_dict(model.state_dict())
    if tr.freeze:
        freeze(model, tr.freeze, is_main)


def units(model: nn.Module) -> dict[str, nn.Module]:
    """Names a user can give: block1, block2, ... (whole mlpconv blocks) and the paper's layer names (conv1,
    cccp1, ..., fc1: `NIN.named_layers`)."""
    named = {f"block{i + 1}": block for i, block in enumerate(model.features)}
    named.update(model.named_layers())
    return named


def unit_prefixes(model: nn.Module, names: list[str], what: str) -> dict[str, str]:
    """{name: its state-dict key prefix}; an unknown name is exit 2 with the names there are."""
    known = units(model)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"{what}: no block or layer named {', '.join(unknown)}; this model has "
                          f"{', '.join(known)}")
    prefix_of = {id(module): prefix for prefix, module in model.named_modules()}
    return {name: prefix_of[id(known[name])] + "." for name in names}


def load_source_weights(path: Path) -> tuple[dict, str]:
    """(state dict, file sha256) of a nin checkpoint, through the safe loader; its moving average when it has one
    (what `nin eval` scores by default)."""
    record = load_checkpoint(path)
    if not isinstance(record.get("model"), dict):
        raise DataError(f"{path}: a nin checkpoint without model weights")
    state, _ = chosen_weights(record, "auto", path)
    with open(path, "rb") as f:  # the loader accepted it as a bounded regular file
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return state, digest


def copy_matching(model: nn.Module, source: dict, reset_prefixes: list[str]) -> tuple[list[str], list[str]]:
    """Copy every source tensor whose name and shape match, in place (the optimizer holds these very tensors);
    returns (copied keys, keys that keep this run's init)."""
    copied, kept = [], []
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            src = source.get(key)
            if (any(key.startswith(p) for p in reset_prefixes) or not isinstance(src, torch.Tensor)
                    or src.shape != tensor.shape):
                kept.append(key)
                continue
            if src.is_floating_point() and not bool(torch.isfinite(src).all()):
                raise DataError(f"non-finite weights (NaN or inf in {key}) in the trainer.init_from checkpoint")
            tensor.copy_(src)
            copied.append(key)
    return copied, kept


def describe_kept(kept: list[str], source: dict, model: nn.Module) -> str:
    """`conv1.weight (source 32×3×3×3, here 32×1×3×3)`: layer names where the key has one, shapes where they differ."""
    names = {f"{prefix}.": name for prefix, module in model.named_modules()
             for name, layer in model.named_layers() if layer is module}
    here = model.state_dict()
    parts = []
    for key in kept:
        prefix = next((p for p in names if key.startswith(p)), None)
        label = names[prefix] + "." + key[len(prefix):] if prefix else key
        src = source.get(key)
        if isinstance(src, torch.Tensor) and src.shape != here[key].shape:
            label += f" (source {'×'.join(map(str, src.shape))}, here {'×'.join(map(str, here[key].shape))})"
        parts.append(label)
    return ", ".join(parts)


def init_from(model: nn.Module, path: Path, reset: list[str], run_dir: Path, is_main: bool) -> None:
    reset_prefixes = list(unit_prefixes(model, reset, "trainer.init_reset").values())
    source, digest = load_source_weights(path)
    copied, kept = copy_matching(model, source, reset_prefixes)
    if not copied:
        raise ConfigError(f"trainer.init_from={path}: none of its weights fits this model (another model= or "
                          "head=?); nothing to start from")
    if not is_main:
        return
    unused = len(set(source) - set(model.state_dict()))
    kept_text = f"; this run's init kept for {describe_kept(kept, source, model)}" if kept else ""
    log.info("init_from %s (sha256 %s): %d of %d tensors loaded%s%s", path, digest[:16], len(copied),
             len(copied) + len(kept), kept_text, f"; {unused} source tensors unused" if unused else "")
    record_provenance(run_dir, {"init_from": {"path": str(path.absolute()), "sha256": digest,
                                              "loaded": len(copied), "kept_init": kept, "reset": reset}})


def freeze(model: nn.Module, names: list[str], is_main: bool) -> None:
    """requires_grad off: the optimizer skips them (no gradient, no weight decay). Batch-norm running statistics
    in a frozen block still follow the new data (the loop trains the whole model in training mode)."""
    frozen = 0
    for name in unit_prefixes(model, names, "trainer.freeze"):
        for param in units(model)[name].parameters():
            frozen += param.numel() * param.requires_grad
            param.requires_grad_(False)
    if is_main:
        log.info("frozen: %s (%d parameters not trained)", ", ".join(names), frozen)
