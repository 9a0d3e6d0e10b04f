"""The optimizer's parameter groups and the learning-rate schedules: a pure function of training progress — epochs,
or with `schedule.by_time` the share of `trainer.max_time` spent — so a resumed run sets exactly the lr of an
uninterrupted one, plus the paper's plateau rule, advanced once per epoch."""

from __future__ import annotations

import math

import torch
from torch import nn

from nin_cli.config import OptimConfig, ScheduleConfig
from nin_cli.model import NIN
from nin_cli.state import Loop, TrainState, elapsed


def build_optimizer(model: NIN, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Per-parameter-group learning rates: biases × bias_lr_mult, the last layer × last_layer_lr_mult; weight
    decay on conv/linear weights only. Each group remembers its `base_lr` for the schedule."""
    last = model.last_layer()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            is_weight = name == "weight" and param.ndim > 1  # conv, linear and locally connected kernels
            groups.setdefault((module is last, is_weight), []).append(param)
    param_groups = []
    for (is_last, is_weight), params in groups.items():
        lr = cfg.lr * (cfg.last_layer_lr_mult if is_last else 1.0) * (1.0 if is_weight else cfg.bias_lr_mult)
        param_groups.append({"params": params, "lr": lr, "base_lr": lr, "is_bias": not is_weight,
                             "weight_decay": cfg.weight_decay if is_weight else 0.0})
    if cfg.name == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=tuple(cfg.betas))
    return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def lr_multiplier(cfg: ScheduleConfig, progress: float, total_epochs: int, lr_scale: float = 1.0,
                  drops: bool = True, time_share: float | None = None) -> float:
    """The factor on a group's base lr at `progress` epochs (fractional) into training. `drops=False`: without the
    ÷gamma drops of milestones / paper_plateau (the biases' factor when `schedule.drop_bias_lr` is false).
    `time_share` (schedule.by_time): the share of trainer.max_time spent, which then replaces progress / total
    as the position along cosine / onecycle; warm-up still counts epochs."""
    if cfg.name == "milestones":
        factor = cfg.gamma ** sum(progress >= m for m in cfg.milestones) if drops else 1.0
    elif cfg.name == "paper_plateau":
        factor = lr_scale if drops else 1.0
    elif cfg.name == "cosine":
        t = time_share if time_share is not None else (
            (progress - cfg.warmup_epochs) / max(1e-9, total_epochs - cfg.warmup_epochs))
        t = min(1.0, max(0.0, t))
        factor = cfg.final_lr_mult + (1 - cfg.final_lr_mult) * 0.5 * (1 + math.cos(math.pi * t))
    elif cfg.name == "onecycle":
        position, total = (time_share, 1.0) if time_share is not None else (progress, total_epochs)
        peak = cfg.pct_start * total
        if position < peak:
            return max(position / peak, 1e-3)
        t = min(1.0, (position - peak) / max(1e-9, total - peak))
        factor = 1 - (1 - cfg.final_lr_mult) * t
    else:
        factor = 1.0
    if cfg.warmup_epochs > 0 and progress < cfg.warmup_epochs:
        factor *= max(progress / cfg.warmup_epochs, 1e-3)
    return factor


def step_multipliers(loop: Loop, steps: int) -> tuple[float, float]:
    """(weights', biases') lr factors for the step about to run, `steps` steps to the epoch. A pure function of the
    state — epoch, step, plateau drops and, with schedule.by_time, the training time the run has had (resumes
    included: `state.elapsed_s`) — so a resumed run continues the lr of an uninterrupted one."""
    cfg, state = loop.cfg, loop.state
    progress = state.epoch + state.epoch_step / steps
    share = elapsed(loop) / cfg.trainer.max_time if cfg.schedule.by_time and cfg.trainer.max_time else None
    mult = lr_multiplier(cfg.schedule, progress, cfg.trainer.epochs, state.lr_scale, time_share=share)
    if cfg.schedule.drop_bias_lr:
        return mult, mult
    return mult, lr_multiplier(cfg.schedule, progress, cfg.trainer.epochs, drops=False, time_share=share)


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

