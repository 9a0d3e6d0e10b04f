"""Training: `fit` runs epochs of `train_one_epoch` + `evaluate`, checkpointing each epoch (and every
`trainer.checkpoint_every_steps` steps, and on SIGINT / SIGTERM).

Resume is bit-exact on the CPU: learning rates are set every step from `lr_multiplier` (a pure function of
progress and the plateau state), the data order and augmentation are a function of (seed, epoch, step), and a
checkpoint holds the model, optimizer, grad scaler, `TrainState` (with the position inside the epoch), the epoch's
running sums and every RNG. Losses and accuracies are summed on the device and read once per log interval: no host
synchronisation per step on a GPU (non-finite losses are then caught at the interval and before every save).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nin_cli.checkpoint import load_checkpoint, save_checkpoint
from nin_cli.collectives import (
    Dist,
    agree_stop,
    all_sum,
    barrier,
    broadcast_object,
    lost_peer,
    shutdown,
    wrap_model,
)
from nin_cli.config import NinConfig, to_dict
from nin_cli.data import Data, Split, load_data, steps_per_epoch, to_input, train_batches
from nin_cli.errors import (
    CollapsedError,
    DataError,
    DivergedError,
    Interrupted,
    InterruptedNow,
    PeerFailed,
)
from nin_cli.faults import inject
from nin_cli.files import number, one_line, read_json
from nin_cli.finetune import prepare_model
from nin_cli.maps import log_class_maps
from nin_cli.metrics import evaluate, evaluation_sums, metrics_from_sums
from nin_cli.model import build_model
from nin_cli.results import read_metrics
from nin_cli.resume import checkpoint_payload, restore, resume_source
from nin_cli.runs import (
    RunPaths,
    append_metrics,
    epoch_progress,
    progress_mode,
    record_provenance,
    remove_stale_temps,
    run_dir_lock,
    truncate_events,
    truncate_metrics,
    write_json,
    write_run_files,
)
from nin_cli.runtime import (
    autocast,
    autocast_dtype,
    compiled,
    resolve_device,
    seed_everything,
    set_tf32,
    tune_malloc,
    with_precision,
)
from nin_cli.schedule import build_optimizer, step_multipliers, update_plateau
from nin_cli.state import EpochSums, Loop, NullWriter, StopRequest, TrainState, elapsed, epoch_totals

log = logging.getLogger("nin")


# ------------------------------------------------------------------------------------------- device and setup


# ------------------------------------------------------------------------------------------------- schedule


# ------------------------------------------------------------------------------------------------- the loop


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """SIGINT / SIGTERM ask the loop to finish its step, save and exit 130 / 143; a second one leaves at once.

    SIGUSR2 (submitit's warning before a time limit or pre-emption, `--signal=USR2@90`) saves the same way and exits
    140; inside a submitit job it then hands over to submitit's own handler (its checkpoint() and requeue), and
    SIGTERM stays submitit's. The handler only sets a flag (no logging or I/O: it may run in the middle of either)."""
    stop = StopRequest()

    def handler(signum: int, frame: Any) -> None:
        if stop.signum is not None:
            raise InterruptedNow(128 + signum)
        stop.signum = signum

    def leave_now(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield stop
        return
    requeue = submitit_requeue_handler()
    # under submitit, SIGTERM (SLURM's, as it pre-empts or requeues) is submitit's to ignore while it requeues
    signals = (signal.SIGINT, signal.SIGUSR2) if requeue else (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    saved = False
    try:
        yield stop
    except Interrupted:  # the loop saved last.pt before raising it
        saved = True
        raise
    finally:
        for sig, old in previous.items():  # after a stop the process is on its way out: another signal ends it
            signal.signal(sig, old if stop.reason is None else leave_now)  # reason: own or agreed stop
        if saved and requeue is not None and stop.reason == signal.SIGUSR2:
            log.warning("SIGUSR2: last.pt saved; handing over to submitit's checkpoint and requeue")
            requeue(signal.SIGUSR2, None)  # submitit: checkpoint(), requeue, exit; returns only on ranks > 0


def submitit_requeue_handler() -> Any:
    """The SIGUSR2 handler submitit installed when this process is a submitit job (SUBMITIT_EXECUTOR is set for
    its jobs, local or SLURM): its checkpoint-and-requeue. None elsewhere, and in a job's child processes (e.g.
    `trainer.devices=N` workers), which inherit the variable but not the handler."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    previous = signal.getsignal(signal.SIGUSR2)
    return previous if callable(previous) else None


def train_step(loop: Loop, images: torch.Tensor, labels: torch.Tensor, steps: int) -> tuple[torch.Tensor, float]:
    """One optimizer step; returns its loss and lr multiplier. A non-finite loss raises DivergedError before the
    update on the CPU, and at the next check on an accelerator (the weights it spoilt are never saved)."""
    cfg, state, sums = loop.cfg, loop.state, loop.sums
    tr = cfg.trainer
    mult, bias_mult = step_multipliers(loop, steps)
    for group in loop.optimizer.param_groups:
        group["lr"] = group["base_lr"] * (bias_mult if group.get("is_bias") else mult)
    amp = autocast_dtype(tr.precision)
    device = images.device
    with autocast(device.type, amp):
        logits = loop.step_model(to_input(images, loop.data.preprocessing, tr.channels_last))
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=tr.label_smoothing)
    if inject("loss", state.step + 1):
        loss = loss * float("nan")
    if len(labels) > 1:  # one output for every image of the batch: the network ignores its input
        same = (logits.detach() == logits.detach()[:1]).all()
        loop.dead_steps.copy_(torch.where(same, loop.dead_steps + 1, torch.zeros_like(loop.dead_steps)))
    if loop.check_every_step:
        raise_if_not_finite(loop, loss.item())
        raise_if_collapsed(loop)
    else:
        loop.nonfinite.logical_or_(~torch.isfinite(loss.detach()))
        if (state.step + 1) % tr.log_every == 0:  # an accelerator reads the counter only now and then
            raise_if_collapsed(loop)
    loop.optimizer.zero_grad(set_to_none=True)
    loop.scaler.scale(loss).backward()
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    if loop.ema is not None and state.step >= tr.ema_start_step:
        loop.ema.update_parameters(loop.model)  # its first update copies the weights
    state.step += 1
    state.epoch_step += 1
    sums.loss += loss.detach() * len(labels)
    sums.correct += (logits.argmax(dim=1) == labels).sum()
    sums.seen += len(labels)
    return loss, mult


def raise_if_not_finite(loop: Loop, loss: float | None = None, weights: bool = False) -> None:
    """The one non-finite check. `loss`: the step's loss, read every step on the CPU (before the update); on an
    accelerator the device-side flag instead, read at each log interval and before every save; `weights`: the
    weights, buffers and optimizer state, before a save, so no checkpoint ever holds NaN or inf."""
    state = loop.state
    if loss is not None and not math.isfinite(loss):
        what = f"loss is {loss} at step {state.step + 1}"
    elif not loop.check_every_step and loop.nonfinite.item():
        what = f"a non-finite loss by step {state.step}"
    elif weights and not all_finite(loop):
        what = f"non-finite weights at step {state.step}"
    else:
        return
    saved = loop.paths.last.exists() or loop.paths.best.exists()
    raise DivergedError(f"training diverged: {what} (epoch {state.epoch + 1}); "
                        + ("the last good checkpoint is kept" if saved else "no checkpoint had been saved yet"))


def all_finite(loop: Loop) -> bool:
    tensors = [t for t in loop.model.state_dict().values() if t.is_floating_point()]
    tensors += [t for s in loop.optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return not tensors or bool(torch.stack([t.isfinite().all() for t in tensors]).all())


def raise_if_collapsed(loop: Loop) -> None:
    """The known trap, seen within `trainer.collapse_steps` steps of happening: every image gets the same output.
    That state is absorbing: behind a ReLU that is dead for every input (all class maps, or a whole layer) no
    gradient reaches the weights before it, so the loss stays at about ln C for good. Called during step
    `state.step + 1`, before the optimizer update."""
    steps, state = loop.cfg.trainer.collapse_steps, loop.state
    dead = int(loop.dead_steps.item()) if steps else 0
    if not steps or dead < steps:
        return
    first = state.step + 2 - dead
    chance = math.log(loop.data.num_classes)
    raise CollapsedError(
        f"training collapsed at step {first}: every image has got the same output for {dead} steps (dead class maps "
        f"or a dead layer; loss about ln {loop.data.num_classes} = {chance:.4f}, no gradient reaches the weights); "
        "set trainer.collapse_restarts=N to restart with the next seed, or use a remedy: schedule.warmup_epochs=1, "
        "model.final_relu=false, model.batch_norm=true", first, loop.cfg.trainer.seed)


def log_step(loop: Loop, loss: torch.Tensor, mult: float, images_per_s: float) -> None:
    """Step scalars for TensorBoard: the one host synchronisation per log interval."""
    state = loop.state
    raise_if_not_finite(loop)
    loop.writer.add_scalar("step/loss", loss.item(), state.step)
    loop.writer.add_scalar("step/lr", loop.optimizer.param_groups[0]["base_lr"] * mult, state.step)
    loop.writer.add_scalar("step/images_per_s", images_per_s, state.step)


def train_one_epoch(loop: Loop, advance, plain: bool = False) -> dict[str, float] | None:
    """The rest of the current epoch (all of it, or from `state.epoch_step` after a mid-epoch resume), in the
    order train_batches gives for (seed, epoch). Returns {"loss", "accuracy", "images_per_s"}, or None when a
    signal or the time limit stopped it between two steps. `plain`: a progress line every progress_every_s."""
    cfg, state, sums = loop.cfg, loop.state, loop.sums
    tr, world = cfg.trainer, loop.dist.world_size
    loop.step_model.train()
    steps = steps_per_epoch(len(loop.data.train), tr.batch_size, tr.max_steps_per_epoch)
    seen_before, start = sums.seen, time.perf_counter()
    batches = train_batches(loop.data.train, tr.batch_size, tr.seed, state.epoch, cfg.dataset.translate,
                            cfg.dataset.flip, start_step=state.epoch_step, max_steps=tr.max_steps_per_epoch,
                            rank=loop.dist.rank, world_size=loop.dist.world_size)
    reported = start
    for images, labels in batches:
        if stop_requested(loop) or out_of_time(loop):
            return None
        loss, mult = train_step(loop, images, labels, steps)
        if plain and time.perf_counter() - reported >= tr.progress_every_s:
            reported = report_progress(loop, steps, world * (sums.seen - seen_before) / (time.perf_counter() - start))
        if state.step % tr.log_every == 0 or state.epoch_step == steps:  # logged before any save of this step
            log_step(loop, loss, mult, world * (sums.seen - seen_before) / (time.perf_counter() - start))
        inject("after_step", state.step)
        every = tr.checkpoint_every_steps
        if every and state.step % every == 0 and state.epoch_step < steps:  # the epoch's end saves anyway
            save_checkpoints(loop, best=False)
        advance(1, f"loss {sums.loss.item() / sums.seen:.3f} lr×{mult:.3g}" if tr.progress == "rich"
                and state.epoch_step % 10 == 0 else "")
    elapsed = time.perf_counter() - start
    loss, correct, seen = epoch_totals(loop)
    return {"loss": loss / seen, "accuracy": correct / seen,
            "images_per_s": world * (sums.seen - seen_before) / max(elapsed, 1e-9)}


def report_progress(loop: Loop, steps: int, images_per_s: float) -> float:
    """One line for logs without a terminal (SLURM, nohup): where the epoch is, its loss so far, speed, ETA."""
    state, tr = loop.state, loop.cfg.trainer
    eta = (steps - state.epoch_step) * tr.batch_size / max(images_per_s, 1e-9)
    log.info("epoch %d/%d  step %d/%d  loss %.4f  %.0f img/s  epoch ETA %dm%02ds", state.epoch + 1, tr.epochs,
             state.epoch_step, steps, loop.sums.loss.item() / max(loop.sums.seen, 1), images_per_s, eta // 60,
             eta % 60)
    return time.perf_counter()


def stop_requested(loop: Loop) -> bool:
    """A signal received by this process or, with several, by any of them: all stop before the same step."""
    loop.stop.agreed = agree_stop(loop.stop.signum, loop.dist)  # never into `signum`: see StopRequest
    return loop.stop.agreed is not None


def evaluate_shards(loop: Loop, split: Split, model: nn.Module | None = None) -> dict[str, float]:
    """`evaluate` of `model` (default: the raw weights) on the whole split; with several processes each scores
    every world_size-th image and the sums are added up."""
    tr, dist = loop.cfg.trainer, loop.dist
    if dist.enabled:
        split = Split(split.images[dist.rank::dist.world_size], split.labels[dist.rank::dist.world_size])
    sums = evaluation_sums(model or loop.model, split, loop.data.preprocessing, tr.eval_batch_size, tr.channels_last,
                           autocast_dtype(tr.precision))
    return metrics_from_sums(all_sum(sums, dist))


def end_epoch(loop: Loop, train: dict[str, float], epoch_start: float) -> None:
    """Validate, advance the plateau rule, write the metrics row and TensorBoard, save best/last, and stop on a
    collapse. State is complete before the save, so a resume from it repeats nothing and skips nothing."""
    cfg, state, data, optimizer = loop.cfg, loop.state, loop.data, loop.optimizer
    tr = cfg.trainer
    val = evaluate_shards(loop, data.val)
    state.epoch += 1
    state.epoch_step = 0
    state.stopped_early = update_plateau(state, cfg.schedule, train["accuracy"])
    improved = val["n"] > 0 and val["error"] < state.best_val_error
    if improved:
        state.best_val_error, state.best_epoch = val["error"], state.epoch
    state.epochs_without_val_gain = 0 if improved else state.epochs_without_val_gain + 1
    patience = tr.early_stop_patience
    if patience and val["n"] > 0 and state.epochs_without_val_gain >= patience:
        state.stopped_because = (f"early stopping: no better validation error for {patience} epochs (best "
                                 f"{state.best_val_error:.2f} % at epoch {state.best_epoch})")
    collapsed = count_chance_epochs(state, cfg, train, data.num_classes)
    lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["base_lr"] * cfg.optim.lr
    row = {"epoch": state.epoch, "step": state.step, "lr": lr, "train_loss": train["loss"],
           "train_accuracy": train["accuracy"], "val_loss": val["loss"], "val_error": val["error"],
           "images_per_s": train["images_per_s"], "epoch_time_s": time.perf_counter() - epoch_start}
    if loop.ema is not None:  # the moving average beside the raw weights (model choice stays on the raw ones)
        ema = evaluate_shards(loop, data.val, loop.ema.module)
        row.update(val_loss_ema=ema["loss"], val_error_ema=ema["error"])
    if loop.dist.is_main:
        log_epoch(loop.writer, row, tr.epochs)
        append_metrics(loop.paths.metrics, {k: None if v != v else v for k, v in row.items()})  # JSON: null, not NaN
    loop.sums.set()
    save_checkpoints(loop, best=improved)
    if collapsed:
        raise collapse_error(state, train, data.num_classes, cfg.trainer.seed)


def train_epochs(loop: Loop) -> None:
    """Epochs until `trainer.epochs`, the plateau rule's end, early stopping or the time limit; a signal saves where
    the loop is and raises Interrupted (exit 130 / 143 / 140)."""
    state, tr = loop.state, loop.cfg.trainer
    mode = progress_mode(tr.progress)
    while state.epoch < tr.epochs and not state.stopped_early and state.stopped_because is None:
        epoch_start = time.perf_counter()
        steps = steps_per_epoch(len(loop.data.train), tr.batch_size, tr.max_steps_per_epoch)
        with epoch_progress(mode, steps, f"epoch {state.epoch + 1}/{tr.epochs}") as advance:
            advance(state.epoch_step, "")
            train = train_one_epoch(loop, advance, plain=mode == "plain")
        if train is None and state.stopped_because is not None:  # the time limit, inside an epoch
            save_checkpoints(loop, best=False)
            break
        if train is None:
            log.warning("%s: saving a checkpoint at step %d, then stopping (again to stop at once)",
                        signal.Signals(loop.stop.reason).name, state.step)
            save_checkpoints(loop, best=False)
            raise interrupted(loop)
        end_epoch(loop, train, epoch_start)
        if stop_requested(loop):
            raise interrupted(loop)
    if state.stopped_because:
        log.info("stopped: %s", state.stopped_because)


def out_of_time(loop: Loop) -> bool:
    limit = loop.cfg.trainer.max_time
    if limit is None or elapsed(loop) < limit:
        return False
    loop.state.stopped_because = f"time limit: trainer.max_time={limit:g} s reached at step {loop.state.step}"
    return True


def interrupted(loop: Loop) -> Interrupted:
    signum, state = loop.stop.reason or signal.SIGINT, loop.state
    where = (f"at epoch {state.epoch + 1}, step {state.step}" if state.epoch_step else
             f"at epoch {state.epoch} (finished), step {state.step}")  # between epochs: the one that ended
    return Interrupted(f"{signal.Signals(signum).name}: stopped {where}; saved {loop.paths.last}; "
                       f"`nin train hydra.run.dir={loop.paths.root}` continues", 128 + signum)


def count_chance_epochs(state: TrainState, cfg: NinConfig, train: dict, num_classes: int) -> bool:
    """The known trap: loss stuck at ln C and chance accuracy (all class maps dead behind the final ReLU).
    Counts such epochs; True when training should stop."""
    chance_loss = math.log(num_classes)
    at_chance = abs(train["loss"] - chance_loss) < 0.01 * chance_loss and train["accuracy"] < 1.5 / num_classes
    state.chance_epochs = state.chance_epochs + 1 if at_chance else 0
    return bool(cfg.trainer.collapse_epochs) and state.chance_epochs >= cfg.trainer.collapse_epochs


def collapse_error(state: TrainState, train: dict, num_classes: int, seed: int) -> CollapsedError:
    chance_loss = math.log(num_classes)
    return CollapsedError(
        f"training collapsed to chance: loss {train['loss']:.4f} ≈ ln {num_classes} = {chance_loss:.4f} for "
        f"{state.chance_epochs} epochs (dead class maps behind the final ReLU); try model.final_relu=false, "
        "schedule.warmup_epochs=1 or model.batch_norm=true; the last checkpoint is kept",
        state.step, seed, absorbing=False)


# ------------------------------------------------------------------------------------------------ checkpoints


def save_checkpoints(loop: Loop, best: bool) -> None:
    """best.pt (when improved) and last.pt, after TensorBoard is flushed: everything logged up to this step is on
    disk, so a resume from this checkpoint purges only what came later. Every process takes part (RNG states and
    sums are gathered); process 0 writes, and the others wait until the files are complete."""
    raise_if_not_finite(loop, weights=True)
    loop.writer.flush()
    payload = checkpoint_payload(loop)
    if loop.dist.is_main:
        if best:
            save_checkpoint(loop.paths.best, payload)
        save_checkpoint(loop.paths.last, payload)
        if loop.state.epoch_step == 0:  # an epoch's end
            keep_epoch_checkpoints(loop)
    barrier(loop.dist)


def keep_epoch_checkpoints(loop: Loop) -> None:
    """trainer.keep_last / keep_every: this epoch's last.pt kept as checkpoints/epoch_NNNN.pt (a hard link: no
    second write, and the file is already verified), then every epoch file neither rule keeps is removed."""
    tr, paths, epoch = loop.cfg.trainer, loop.paths, loop.state.epoch
    if not (tr.keep_last or tr.keep_every):
        return
    target = paths.checkpoints / f"epoch_{epoch:04d}.pt"
    target.unlink(missing_ok=True)  # a resumed run saves this epoch again
    os.link(paths.last, target)
    kept = sorted(paths.checkpoints.glob("epoch_*.pt"))
    recent = set(kept[-tr.keep_last:]) if tr.keep_last else set()
    for path in kept:
        number = int(path.stem.split("_")[1])
        if path not in recent and not (tr.keep_every and number % tr.keep_every == 0):
            path.unlink()


# ------------------------------------------------------------------------------------------------------ fit


def setup(cfg: NinConfig, paths: RunPaths, stop: StopRequest, dist: Dist) -> Loop:
    """Device, seeds, data, model, optimizer; then the resume (own checkpoint or resume=...), if any. With several
    processes, process 0 alone touches the run directory and picks the checkpoint every process resumes from."""
    from torch.utils.tensorboard import SummaryWriter

    device = resolve_device(cfg.trainer.device)
    cfg, _ = with_precision(cfg, device)  # trainer.precision=auto: bf16 or fp32 for this device (logged)
    tr = cfg.trainer
    if tr.num_threads:
        torch.set_num_threads(tr.num_threads)
    if device.type == "cpu":
        tune_malloc()
    seed_everything(tr.seed, tr.deterministic)
    set_tf32(tr.tf32)
    data = load_data(cfg.dataset, device)  # before anything is written to checkpoints/
    model = build_model(cfg.model, cfg.head, data.image_shape, data.num_classes).to(device)
    if tr.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dist.rank:  # the same initial weights everywhere, but each process its own dropout masks
        torch.manual_seed(tr.seed * 1_000_003 + dist.rank)
    loop = new_loop(cfg, paths, data, model, stop=stop, dist=dist)
    if dist.is_main:
        for path in remove_stale_temps(paths):
            log.info("removed %s, left by an interrupted write", path)
    source = broadcast_object(resume_source(cfg, paths) if dist.is_main else None, dist)
    if source is not None:
        restore(*source, loop)
        log.info("resuming from %s at epoch %d, step %d (%d into the epoch)", source[0], loop.state.epoch + 1,
                 loop.state.step, loop.state.epoch_step)
        if (loop.state.stopped_because or "").startswith("time limit"):  # judged again: a larger max_time goes on
            loop.state.stopped_because = None
    prepare_model(loop, resumed=source is not None)  # trainer.init_from (never over a resume), trainer.freeze
    step_model = wrap_model(model, device, dist)
    writer = NullWriter()
    if dist.is_main:
        truncate_metrics(paths.metrics, loop.state.epoch)
        truncate_events(paths.tb, loop.state.step)
        writer = SummaryWriter(str(paths.tb))
    # training time starts now (data loading and setup not counted)
    return replace(loop, step_model=compiled(step_model, tr.compile, tr.compile_mode), writer=writer,
                   clock=time.perf_counter())


def new_loop(cfg: NinConfig, paths: RunPaths, data: Data, model: nn.Module, step_model: nn.Module | None = None,
             optimizer: torch.optim.Optimizer | None = None, scaler: torch.amp.GradScaler | None = None,
             stop: StopRequest | None = None, dist: Dist = Dist()) -> Loop:
    """The one place a training loop is assembled (`setup`, `nin bench` and the tests alike): fresh state, sums and
    device-side flags on the model's device; the optimizer and grad scaler from the config unless given."""
    device = next(model.parameters()).device
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=cfg.trainer.precision == "fp16")
    return Loop(cfg, paths, data, model, step_model or model, optimizer or build_optimizer(model, cfg.optim), scaler,
                TrainState(), EpochSums.zeros(device), NullWriter(), stop or StopRequest(),
                torch.zeros((), dtype=torch.bool, device=device), torch.zeros((), dtype=torch.long, device=device),
                dist, ema=new_ema(model, cfg.trainer.ema_decay))


def new_ema(model: nn.Module, decay: float | None) -> torch.optim.swa_utils.AveragedModel | None:
    """The weights' exponential moving average (batch-norm statistics averaged too: `use_buffers`); None when off."""
    if decay is None:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def fit(cfg: NinConfig, run_dir: Path, dist: Dist | None = None) -> dict | None:
    """Train `cfg` in `run_dir`, continuing from its newest checkpoint (or `resume=`) when there is one; returns
    the summary (process 0; None on the others). Ctrl-C / SIGTERM: checkpoint, then Interrupted (130 / 143)."""
    dist, paths, summary = dist or Dist(), RunPaths(run_dir), None
    try:
        with run_dir_lock(run_dir) if dist.is_main else nullcontext(), stop_on_signals() as stop:
            loop = setup(cfg, paths, stop, dist)
            try:
                train_epochs(loop)
                if dist.is_main:
                    summary = finish(loop, elapsed(loop))  # resumes included (state.elapsed_s)
                barrier(dist)
            except RuntimeError as err:  # another process died: its own error is the one to report
                if not lost_peer(err, dist):
                    raise
                raise PeerFailed(f"rank {dist.rank} lost contact with the other processes: "
                                 f"{one_line(err, 160)}") from None
            finally:
                loop.writer.close()
    finally:
        shutdown(dist)
    return summary


def train_run(cfg: NinConfig, run_dir: Path) -> dict:
    """What every single-process training does in its run directory (`nin train`, sweep jobs, the table runner):
    config.yaml and provenance.json, then `fit`. After a collapse, with `trainer.collapse_restarts=N`, the run starts
    again from scratch with the next seed, at most N times; each restart is recorded in RUN/restarts.json (so a
    resume continues the right attempt), summary.json and provenance.json."""
    restarts_file = run_dir / "restarts.json"
    restarts = read_restarts(restarts_file)
    first = None
    while True:
        attempt = replace(cfg, trainer=replace(cfg.trainer, seed=restart_seed(cfg.trainer.seed, len(restarts))))
        first = first or attempt
        write_run_files(attempt, run_dir, str(resolve_device(cfg.trainer.device)), start=attempt is first)
        try:
            summary = fit(attempt, run_dir)
        except CollapsedError as err:
            if not err.absorbing or len(restarts) >= cfg.trainer.collapse_restarts:
                if not restarts:
                    raise
                seeds = ", ".join(str(r["seed"]) for r in restarts)
                raise CollapsedError(f"{err} [seed {err.seed} was the last attempt; seeds {seeds} collapsed before, "
                                     f"see {restarts_file}]", err.step, err.seed, err.absorbing) from None
            restarts.append({"seed": err.seed, "collapsed_at_step": err.step, "reason": one_line(err, 300),
                             "kept_in": f"attempts/seed{err.seed}"})
            log.warning("seed %d collapsed at step %d; restarting with seed %d (restart %d of at most %d)", err.seed,
                        err.step, restart_seed(cfg.trainer.seed, len(restarts)), len(restarts),
                        cfg.trainer.collapse_restarts)
            archive_attempt(RunPaths(run_dir), run_dir / "attempts" / f"seed{err.seed}")
            write_json(restarts_file, restarts)
            record_provenance(run_dir, {"collapse_restarts": restarts})
            continue
        if restarts:
            summary["collapse_restarts"] = restarts
            write_json(RunPaths(run_dir).summary, summary)
        return summary


def read_restarts(path: Path) -> list[dict]:
    try:
        restarts = read_json(path, expect=list)
    except FileNotFoundError:
        return []
    except DataError as err:
        raise DataError(f"{err}; repair or remove it") from None
    if not isinstance(restarts, list) or not all(isinstance(r, dict) and isinstance(r.get("seed"), int)
                                                 for r in restarts):
        raise DataError(f"{path}: not a list of restarts; repair or remove it")
    return restarts


RESTART_SEED_STRIDE = 1000  # restart k of seed s trains seed s + 1000·k: never another seed slot's seed (0, 1, 2)


def restart_seed(seed: int, restart: int) -> int:
    return seed + RESTART_SEED_STRIDE * restart


def archive_attempt(paths: RunPaths, keep: Path) -> None:
    """A collapsed attempt's metrics and TensorBoard events move to `keep` (evidence, read by nobody else); its
    checkpoints go. The next seed starts afresh in the run directory."""
    import shutil

    shutil.rmtree(paths.checkpoints, ignore_errors=True)
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir(parents=True)
    for source in (paths.tb, paths.metrics):
        if source.exists() and not source.is_symlink():
            source.rename(keep / source.name)


def finish(loop: Loop, wall_time: float) -> dict:
    """The test scores, the class maps and hyper-parameters in TensorBoard, summary.json."""
    cfg, paths = loop.cfg, loop.paths
    summary = final_summary(loop.model, loop.data, cfg, loop.state, paths, wall_time)
    if loop.ema is not None:
        tr = cfg.trainer
        test = evaluate(loop.ema.module, loop.data.test, loop.data.preprocessing, tr.eval_batch_size,
                        tr.channels_last, autocast_dtype(tr.precision))
        summary["test_error_ema"] = test["error"]
    log_class_maps(loop.writer, loop.model, loop.data, loop.state.step)  # the paper's confidence maps
    loop.writer.add_hparams(hparams(cfg), {"hparam/val_error": summary["best_val_error"] or float("nan"),
                                           "hparam/test_error": summary["test_error"]},
                            run_name=".", global_step=loop.state.step)
    loop.writer.close()
    write_json(paths.summary, summary)
    return summary


def log_epoch(writer, row: dict, total_epochs: int) -> None:
    """Epoch scalars at the global step of the epoch's end: one x-axis for every tag, so a resume can cut
    everything a crashed attempt logged after its checkpoint's step."""
    # One unit for every error in TensorBoard: percent (metrics.jsonl keeps train_accuracy as a fraction)
    scalars = {**row, "train_error": 100 * (1 - row["train_accuracy"])}
    for key in ("train_loss", "train_error", "val_loss", "val_error", "val_loss_ema", "val_error_ema", "lr",
                "images_per_s"):
        if key in scalars and scalars[key] == scalars[key]:  # skip NaN (no validation split), EMA keys when off
            writer.add_scalar(f"epoch/{key}", scalars[key], row["step"])
    val = f"val err {row['val_error']:5.2f}%" if row["val_error"] == row["val_error"] else "no val split"
    ema_error = row.get("val_error_ema")
    if ema_error is not None and ema_error == ema_error:
        val += f" (EMA {ema_error:5.2f}%)"
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
    rows = read_metrics(paths.root)  # none: stopped in epoch 1; a row may lack a value (null): typed by `number`
    speeds = [v for v in (number(row.get("images_per_s")) for row in rows) if v is not None]
    summary = {
        "experiment": cfg.experiment, "dataset": cfg.dataset.name, "model": cfg.model.name, "head": cfg.head.type,
        "epochs": state.epoch, "steps": state.step, "stopped_early": state.stopped_early,
        "params": sum(p.numel() for p in model.parameters()),
        "final_train_loss": None, "test_error": test["error"], "test_loss": test["loss"],
        "best_val_error": state.best_val_error if math.isfinite(state.best_val_error) else None,
        "best_epoch": state.best_epoch if state.best_epoch >= 0 else None, "best_test_error": best_test,
        "wall_time_s": wall_time, "images_per_s": sum(speeds) / len(speeds) if speeds else None,
        "device": str(data.train.images.device), "seed": tr.seed, "stopped_because": state.stopped_because,
    }
    if rows:
        summary["final_train_loss"] = number(rows[-1].get("train_loss"))
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
            elif isinstance(value, list) and all(isinstance(v, bool | int | float | str | None) for v in value):
                flat[f"{group}.{key}"] = str(value)  # e.g. model.widths: the widths sweep's column
    return flat
