"""What one training run carries through train.py's functions: a frozen `Loop` (the run's context: config, run
directory, data, model, optimizer, writer, processes) holding the only things that change, each changed in place:
`TrainState` (epoch, step, best metric, plateau and stop bookkeeping: what a checkpoint records), `EpochSums` (the
epoch's running loss and accuracy) and two device-side counters (non-finite loss, identical outputs)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nin_cli.collectives import Dist, all_sum
from nin_cli.config import NinConfig
from nin_cli.data import Data
from nin_cli.runs import RunPaths


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken in all
    epoch_step: int = 0  # steps taken inside epoch `epoch` (non-zero in a mid-epoch checkpoint)
    best_val_error: float = math.inf
    best_epoch: int = -1
    lr_scale: float = 1.0  # paper_plateau: product of the drops so far
    best_train_accuracy: float = -1.0
    epochs_without_gain: int = 0
    drops: int = 0
    chance_epochs: int = 0
    stopped_early: bool = False
    dead_steps: int = 0  # consecutive steps on which every image got the same output (see `raise_if_collapsed`)
    elapsed_s: float = 0.0  # training time of the run's earlier processes (trainer.max_time survives a resume)
    epochs_without_val_gain: int = 0  # trainer.early_stop_patience
    stopped_because: str | None = None  # early stopping or the time limit: said in the log and summary.json


@dataclass
class EpochSums:
    """Running sums of the current epoch, kept on the device and saved in mid-epoch checkpoints, so an epoch
    resumed halfway reports the same loss and accuracy as one that ran through."""

    loss: torch.Tensor
    correct: torch.Tensor
    seen: int = 0

    @classmethod
    def zeros(cls, device: torch.device) -> EpochSums:
        return cls(torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long))

    def set(self, loss: float | torch.Tensor = 0.0, correct: int | torch.Tensor = 0, seen: int = 0) -> None:
        """In place: zero at an epoch's end, or a checkpoint's sums on a mid-epoch resume."""
        self.loss.fill_(torch.as_tensor(loss, dtype=torch.float32).item())
        self.correct.fill_(int(torch.as_tensor(correct).item()))
        self.seen = int(seen)


@dataclass
class StopRequest:
    """`signum` is written by this process's signal handler only; `agreed` by the loop only, with what every process
    agreed on between two steps. Kept apart: a signal handled while the processes agree (the handler runs during
    that wait) stays in `signum` for the next agreement instead of being overwritten with "no stop"."""

    signum: int | None = None
    agreed: int | None = None

    @property
    def reason(self) -> int | None:
        """The signal the run stops for: the agreed one, else this process's own."""
        return self.agreed or self.signum


@dataclass(frozen=True)
class Loop:
    """What one training run threads through its functions (fit's locals, not a framework). Frozen: its fields
    are never reassigned. What changes during training is in `state`, `sums`, `nonfinite` and `dead_steps`, each
    changed in place (and `stop`, set by the signal handler)."""

    cfg: NinConfig
    paths: RunPaths
    data: Data
    model: nn.Module  # the module whose weights are saved
    step_model: nn.Module  # the same, or its torch.compile / DDP wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    state: TrainState  # changes: epoch, step, best metric, plateau rule, stop reasons (what checkpoints record)
    sums: EpochSums  # changes: the epoch's running loss and accuracy
    writer: Any
    stop: StopRequest
    nonfinite: torch.Tensor  # changes: accelerators' "a loss since the last check was not finite", read lazily
    dead_steps: torch.Tensor  # changes: consecutive steps with one output for every image, counted on the device
    dist: Dist = Dist()  # this process's place among the run's processes (Dist(): the only one)
    clock: float = field(default_factory=time.perf_counter)  # when this process started training the run
    ema: torch.optim.swa_utils.AveragedModel | None = None  # trainer.ema_decay: the weights' moving average

    @property
    def check_every_step(self) -> bool:
        """On the CPU reading the loss each step costs nothing; on an accelerator it would stall the queue, so the
        flag is read at each log interval and before every checkpoint save instead."""
        return self.nonfinite.device.type == "cpu"


class NullWriter:
    """The TensorBoard writer of processes other than 0: the run's events are process 0's."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def epoch_totals(loop: Loop) -> tuple[float, int, int]:
    """The epoch's loss sum, correct count and images seen so far, over all processes."""
    sums = loop.sums
    totals = all_sum(torch.stack([sums.loss.double(), sums.correct.double(),
                                  torch.tensor(float(sums.seen), dtype=torch.float64, device=sums.loss.device)]),
                     loop.dist)
    loss, correct, seen = totals.tolist()
    return loss, round(correct), round(seen)


def elapsed(loop: Loop) -> float:
    """Training time of the run so far, over every process that worked on it (resumes included)."""
    return loop.state.elapsed_s + time.perf_counter() - loop.clock

