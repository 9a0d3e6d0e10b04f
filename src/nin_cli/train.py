"""Training: `fit` runs epochs of `train_one_epoch` + `evaluate`, checkpointing each epoch.

Learning rates are set every step from `lr_multiplier` (a pure function of progress and the plateau state), so
resuming needs only the step counter and `TrainState`. Losses and accuracies are summed on the device and read
once per log interval: no host synchronisation per step on a GPU.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nin_cli.checkpoint import load_checkpoint, save_checkpoint
from nin_cli.config import NinConfig, OptimConfig, ScheduleConfig, to_dict
from nin_cli.data import Data, load_data, steps_per_epoch, to_input, train_batches
from nin_cli.errors import ConfigError, DivergedError
from nin_cli.evaluate import evaluate
from nin_cli.model import NIN, build_model
from nin_cli.runs import RunPaths, append_metrics, epoch_progress, progress_mode, truncate_metrics, write_json

log = logging.getLogger("nin")


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken in all
    best_val_error: float = math.inf
    best_epoch: int = -1
    lr_scale: float = 1.0  # paper_plateau: product of the drops so far
    best_train_accuracy: float = -1.0
    epochs_without_gain: int = 0
    drops: int = 0
    chance_epochs: int = 0
    stopped_early: bool = False


# ------------------------------------------------------------------------------------------- device and setup


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda: no CUDA device is visible; use trainer.device=auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("trainer.device=mps: MPS is not available here; use trainer.device=auto or cpu")
    return torch.device(name)


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build_optimizer(model: NIN, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Per-parameter-group learning rates: biases × bias_lr_mult, the last layer × last_layer_lr_mult; weight
    decay on conv/linear weights only. Each group remembers its `base_lr` for the schedule."""
    last = model.last_layer()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            is_weight = name == "weight" and isinstance(module, nn.Conv2d | nn.Linear)
            groups.setdefault((module is last, is_weight), []).append(param)
    param_groups = []
    for (is_last, is_weight), params in groups.items():
        lr = cfg.lr * (cfg.last_layer_lr_mult if is_last else 1.0) * (1.0 if is_weight else cfg.bias_lr_mult)
        param_groups.append({"params": params, "lr": lr, "base_lr": lr,
                             "weight_decay": cfg.weight_decay if is_weight else 0.0})
    if cfg.name == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=tuple(cfg.betas))
    return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


# ------------------------------------------------------------------------------------------------- schedule


def lr_multiplier(cfg: ScheduleConfig, progress: float, total_epochs: int, lr_scale: float = 1.0) -> float:
    """The factor on every group's base lr at `progress` epochs (fractional) into training."""
    if cfg.name == "milestones":
        factor = cfg.gamma ** sum(progress >= m for m in cfg.milestones)
    elif cfg.name == "paper_plateau":
        factor = lr_scale
    elif cfg.name == "cosine":
        t = min(1.0, max(0.0, (progress - cfg.warmup_epochs) / max(1e-9, total_epochs - cfg.warmup_epochs)))
        factor = cfg.final_lr_mult + (1 - cfg.final_lr_mult) * 0.5 * (1 + math.cos(math.pi * t))
    elif cfg.name == "onecycle":
        peak = cfg.pct_start * total_epochs
        if progress < peak:
            return max(progress / peak, 1e-3)
        t = min(1.0, (progress - peak) / max(1e-9, total_epochs - peak))
        factor = 1 - (1 - cfg.final_lr_mult) * t
    else:
        factor = 1.0
    if cfg.warmup_epochs > 0 and progress < cfg.warmup_epochs:
        factor *= max(progress / cfg.warmup_epochs, 1e-3)
    return factor


def update_plateau(state: TrainState, cfg: ScheduleConfig, train_accuracy: float) -> bool:
    """The paper's rule, after each epoch: when training accuracy has not improved for `patience` epochs,
    divide lr by 10; after `max_drops` drops the next plateau ends training. Returns True to stop."""
    if cfg.name != "paper_plateau":
        return False
    if train_accuracy > state.best_train_accuracy + cfg.min_delta:
        state.best_train_accuracy = train_accuracy
        state.epochs_without_gain = 0
        return False
    state.epochs_without_gain += 1
    if state.epochs_without_gain < cfg.patience:
        return False
    if state.drops >= cfg.max_drops:
        return True
    state.drops += 1
    state.lr_scale *= cfg.gamma
    state.epochs_without_gain = 0
    state.best_train_accuracy = train_accuracy
    return False


# ------------------------------------------------------------------------------------------------- the loop


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    data: Data, cfg: NinConfig, state: TrainState, writer, advance) -> dict[str, float]:
    """One pass over the shuffled, augmented training split. Returns {"loss", "accuracy", "images_per_s"}."""
    tr = cfg.trainer
    model.train()
    device = data.train.images.device
    steps = steps_per_epoch(len(data.train), tr.batch_size, tr.max_steps_per_epoch)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, start = 0, time.perf_counter()
    amp = autocast_dtype(tr.precision)
    for i, (images, labels) in enumerate(train_batches(data.train, tr.batch_size, tr.seed, state.epoch,
                                                       cfg.dataset.translate, cfg.dataset.flip,
                                                       max_steps=tr.max_steps_per_epoch)):
        mult = lr_multiplier(cfg.schedule, state.epoch + i / steps, tr.epochs, state.lr_scale)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * mult
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(to_input(images, data.preprocessing, tr.channels_last))
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=tr.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        state.step += 1
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += len(labels)
        if state.step % tr.log_every == 0 or i == steps - 1:
            step_loss = loss.item()  # the one host sync per interval
            if not math.isfinite(step_loss):
                raise DivergedError(f"training diverged: loss is {step_loss} at epoch {state.epoch + 1}, "
                                    f"step {state.step}; the last good checkpoint is kept")
            writer.add_scalar("step/loss", step_loss, state.step)
            writer.add_scalar("step/lr", optimizer.param_groups[0]["base_lr"] * mult, state.step)
            writer.add_scalar("step/images_per_s", seen / (time.perf_counter() - start), state.step)
        advance(1, f"loss {loss_sum.item() / seen:.3f}" if tr.progress == "rich" and i % 10 == 0 else "")
    elapsed = time.perf_counter() - start
    return {"loss": loss_sum.item() / seen, "accuracy": correct.item() / seen, "images_per_s": seen / elapsed}


def check_collapse(state: TrainState, cfg: NinConfig, train: dict, num_classes: int) -> None:
    """The known trap: loss stuck at ln C and chance accuracy (all class maps dead behind the final ReLU)."""
    chance_loss = math.log(num_classes)
    at_chance = abs(train["loss"] - chance_loss) < 0.01 * chance_loss and train["accuracy"] < 1.5 / num_classes
    state.chance_epochs = state.chance_epochs + 1 if at_chance else 0
    if cfg.trainer.collapse_epochs and state.chance_epochs >= cfg.trainer.collapse_epochs:
        raise DivergedError(
            f"training collapsed to chance: loss {train['loss']:.4f} ≈ ln {num_classes} = {chance_loss:.4f} for "
            f"{state.chance_epochs} epochs (dead class maps behind the final ReLU); try model.final_relu=false, "
            "schedule.warmup_epochs=1 or model.batch_norm=true; the last checkpoint is kept")


def checkpoint_payload(model: nn.Module, optimizer, scaler, state: TrainState, cfg: NinConfig, data: Data) -> dict:
    rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()]}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"config": to_dict(cfg), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(), "state": asdict(state), "rng": rng,
            "data": {"classes": data.classes, "image_shape": data.image_shape, "preprocessing": data.preprocessing}}


def restore(path: Path, model: nn.Module, optimizer, scaler) -> TrainState:
    record = load_checkpoint(path)
    model.load_state_dict(record["model"])
    optimizer.load_state_dict(record["optimizer"])
    if record.get("scaler"):
        scaler.load_state_dict(record["scaler"])
    rng = record["rng"]
    torch.set_rng_state(rng["torch"])
    random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
    np.random.set_state((rng["numpy"][0], np.array(rng["numpy"][1], dtype=np.uint32), *rng["numpy"][2:]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return TrainState(**record["state"])


def fit(cfg: NinConfig, run_dir: Path) -> dict:
    """Train `cfg` in `run_dir` (resuming from checkpoints/last.pt when present); returns the summary."""
    from torch.utils.tensorboard import SummaryWriter

    paths, tr = RunPaths(run_dir), cfg.trainer
    device = resolve_device(tr.device)
    if tr.num_threads:
        torch.set_num_threads(tr.num_threads)
    seed_everything(tr.seed, tr.deterministic)
    data = load_data(cfg.dataset, device)  # before anything is written to checkpoints/
    model = build_model(cfg.model, cfg.head, data.image_shape, data.num_classes).to(device)
    if tr.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=tr.precision == "fp16")
    state = restore(paths.last, model, optimizer, scaler) if paths.last.exists() else TrainState()
    if state.epoch:
        log.info("resuming %s at epoch %d (step %d)", paths.last, state.epoch, state.step)
    truncate_metrics(paths.metrics, state.epoch)
    step_model = torch.compile(model) if tr.compile else model
    writer = SummaryWriter(str(paths.tb), purge_step=state.step or None)
    mode = progress_mode(tr.progress)
    amp = autocast_dtype(tr.precision)
    start = time.perf_counter()
    try:
        while state.epoch < tr.epochs and not state.stopped_early:
            epoch_start = time.perf_counter()
            steps = steps_per_epoch(len(data.train), tr.batch_size, tr.max_steps_per_epoch)
            with epoch_progress(mode, steps, f"epoch {state.epoch + 1}/{tr.epochs}") as advance:
                train = train_one_epoch(step_model, optimizer, scaler, data, cfg, state, writer, advance)
            val = evaluate(model, data.val, data.preprocessing, tr.eval_batch_size, tr.channels_last, amp)
            state.epoch += 1
            state.stopped_early = update_plateau(state, cfg.schedule, train["accuracy"])
            improved = val["n"] > 0 and val["error"] < state.best_val_error
            if improved:
                state.best_val_error, state.best_epoch = val["error"], state.epoch
            lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["base_lr"] * cfg.optim.lr
            row = {"epoch": state.epoch, "step": state.step, "lr": lr, "train_loss": train["loss"],
                   "train_accuracy": train["accuracy"], "val_loss": val["loss"], "val_error": val["error"],
                   "images_per_s": train["images_per_s"], "epoch_time_s": time.perf_counter() - epoch_start}
            log_epoch(writer, row, tr.epochs)
            append_metrics(paths.metrics, row)
            payload = checkpoint_payload(model, optimizer, scaler, state, cfg, data)
            if improved:
                save_checkpoint(paths.best, payload)
            save_checkpoint(paths.last, payload)
            check_collapse(state, cfg, train, data.num_classes)
        summary = final_summary(model, data, cfg, state, paths, time.perf_counter() - start)
        writer.add_hparams(hparams(cfg), {"hparam/val_error": summary["best_val_error"] or float("nan"),
                                          "hparam/test_error": summary["test_error"]}, run_name=".")
    finally:
        writer.close()
    write_json(paths.summary, summary)
    return summary


def log_epoch(writer, row: dict, total_epochs: int) -> None:
    for key in ("train_loss", "train_accuracy", "val_loss", "val_error", "lr", "images_per_s"):
        if row[key] == row[key]:  # skip NaN (no validation split)
            writer.add_scalar(f"epoch/{key}", row[key], row["epoch"])
    writer.flush()
    val = f"val err {row['val_error']:5.2f}%" if row["val_error"] == row["val_error"] else "no val split"
    log.info("epoch %*d/%d  train loss %.4f acc %5.2f%%  %s  lr %.3g  %.0f img/s  %.1fs",
             len(str(total_epochs)), row["epoch"], total_epochs, row["train_loss"], 100 * row["train_accuracy"],
             val, row["lr"], row["images_per_s"], row["epoch_time_s"])


def final_summary(model: nn.Module, data: Data, cfg: NinConfig, state: TrainState, paths: RunPaths,
                  wall_time: float) -> dict:
    tr = cfg.trainer
    amp = autocast_dtype(tr.precision)
    test = evaluate(model, data.test, data.preprocessing, tr.eval_batch_size, tr.channels_last, amp)
    best_test = None
    if paths.best.exists():  # the model chosen on validation, scored once on test
        best = build_model(cfg.model, cfg.head, data.image_shape, data.num_classes).to(data.test.images.device)
        best.load_state_dict(load_checkpoint(paths.best)["model"])
        best_test = evaluate(best, data.test, data.preprocessing, tr.eval_batch_size, False, amp)["error"]
    rows = [line for line in paths.metrics.read_text().splitlines() if line.strip()]
    speeds = [json.loads(line)["images_per_s"] for line in rows]
    summary = {
        "experiment": cfg.experiment, "dataset": cfg.dataset.name, "model": cfg.model.name, "head": cfg.head.type,
        "epochs": state.epoch, "steps": state.step, "stopped_early": state.stopped_early,
        "params": sum(p.numel() for p in model.parameters()),
        "final_train_loss": None, "test_error": test["error"], "test_loss": test["loss"],
        "best_val_error": state.best_val_error if math.isfinite(state.best_val_error) else None,
        "best_epoch": state.best_epoch if state.best_epoch >= 0 else None, "best_test_error": best_test,
        "wall_time_s": wall_time, "images_per_s": sum(speeds) / len(speeds) if speeds else None,
        "device": str(data.train.images.device), "seed": tr.seed,
    }
    if rows:
        summary["final_train_loss"] = json.loads(rows[-1])["train_loss"]
    log.info("done: test error %.2f%% (final model)%s, %.1fs", test["error"],
             f", {best_test:.2f}% (best on val, epoch {state.best_epoch})" if best_test is not None else "",
             wall_time)
    return summary


def hparams(cfg: NinConfig) -> dict:
    """Flat scalar hyper-parameters for TensorBoard's HParams tab."""
    flat = {}
    for group in ("dataset", "model", "head", "optim", "schedule", "trainer"):
        for key, value in to_dict(cfg)[group].items():
            if isinstance(value, bool | int | float | str):
                flat[f"{group}.{key}"] = value
    return flat
