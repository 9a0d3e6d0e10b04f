"""What a checkpoint holds and how a run continues from one: the payload (weights, optimizer, scaler, state, the
epoch's sums, every RNG, the EMA), which file a resume reads (its own newest complete checkpoint, else `resume=`),
and restoring all of it in place so that the resumed run is bit-exact on the CPU."""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from nin_cli.checkpoint import load_checkpoint
from nin_cli.collectives import gather_objects
from nin_cli.config import NinConfig, to_dict
from nin_cli.errors import ConfigError, DataError
from nin_cli.files import one_line
from nin_cli.runs import RunPaths, refuse_finished_without_checkpoint
from nin_cli.state import Loop, TrainState, elapsed, epoch_totals

log = logging.getLogger("nin")


def checkpoint_payload(loop: Loop) -> dict:
    """Everything a bit-exact resume needs: weights, optimizer, scaler, state (epoch, step, position inside the
    epoch, best metric, plateau rule), the epoch's running sums and every RNG. The data order is a function of
    (seed, epoch, step), recorded as `data_order`."""
    state, data = loop.state, loop.data
    loss, correct, seen = epoch_totals(loop)
    state.dead_steps = int(loop.dead_steps)
    if loop.dist.enabled:  # each process's own RNGs (dropout masks differ between ranks) and epoch sums, in one
        # gather: resumed, each adds its remaining steps to its own sums in the uninterrupted run's order (float32
        # sums added in another order differ in the last bit)
        sums = loop.sums
        own = {"loss": sums.loss.item(), "correct": sums.correct.item(), "seen": sums.seen}
        rng, own_sums = zip(*gather_objects((rng_states(), own), loop.dist), strict=True)
        per_rank = {"rng_ranks": list(rng), "epoch_sums_ranks": list(own_sums)}
    else:
        rng, per_rank = [rng_states()], {}
    return {"config": to_dict(loop.cfg), "model": loop.model.state_dict(), "optimizer": loop.optimizer.state_dict(),
            "scaler": loop.scaler.state_dict(), "state": {**asdict(state), "elapsed_s": elapsed(loop)},
            "rng": rng[0], **per_rank, **({"ema": loop.ema.state_dict()} if loop.ema is not None else {}),
            "epoch_sums": {"loss": torch.tensor(loss, dtype=torch.float32), "correct": torch.tensor(correct),
                           "seen": seen},
            "data_order": {"seed": loop.cfg.trainer.seed, "epoch": state.epoch, "step": state.epoch_step},
            "data": {"classes": data.classes, "image_shape": data.image_shape, "preprocessing": data.preprocessing}}


def restore_epoch_sums(loop: Loop, record: dict) -> None:
    """A mid-epoch resume continues the epoch's sums: each process its own when the process count is unchanged,
    else the first process all of them (counted once)."""
    if not loop.state.epoch_step or not record.get("epoch_sums"):
        return
    per_rank, dist = record.get("epoch_sums_ranks") or [], loop.dist
    if len(per_rank) == dist.world_size:
        sums = per_rank[dist.rank]
    elif dist.is_main:
        sums = record["epoch_sums"]
    else:
        return
    loop.sums.set(sums["loss"], sums["correct"], sums["seen"])


def restore(path: Path, record: dict, loop: Loop) -> None:
    """Put a checkpoint's state into the loop's model, optimizer, scaler, state, sums and the RNGs."""
    changed = config_changes(record.get("config", {}), to_dict(loop.cfg))
    if changed:
        # the stored side comes from a file: one line, bounded (a newline in it could forge log lines)
        log.warning("resuming with a changed config: %s", one_line("; ".join(changed[:8]), 400))
    try:
        loop.model.load_state_dict(record["model"])
        loop.optimizer.load_state_dict(record["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise ConfigError(f"{path} does not fit the configured model or optimizer ({one_line(err, 200)}"
                          "); resume with the run's own config") from None
    if record.get("scaler"):
        loop.scaler.load_state_dict(record["scaler"])
    if loop.ema is not None and isinstance(record.get("ema"), dict):
        loop.ema.load_state_dict(record["ema"])
    known = {f.name for f in fields(TrainState)}
    saved = TrainState(**{k: v for k, v in record["state"].items() if k in known})
    for name in known:  # in place: the loop keeps its one TrainState
        setattr(loop.state, name, getattr(saved, name))
    restore_epoch_sums(loop, record)
    loop.dead_steps.fill_(loop.state.dead_steps)
    per_rank = record.get("rng_ranks") or []
    restore_rng(per_rank[loop.dist.rank] if len(per_rank) == loop.dist.world_size else record["rng"])


def rng_states() -> dict:
    """Every RNG's state; Python's and NumPy's 624-word states as one tensor each (cheap to pickle and hash)."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    rng = {"torch": torch.get_rng_state(),
           "python": {"version": version, "state": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
           "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                     "has_gauss": has_gauss, "cached_gaussian": cached}}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    py, npy = rng["python"], rng["numpy"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


def config_changes(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """'key: old → new' for every leaf that differs (resume itself aside): a resumed run says what it changed."""
    changes = []
    for key in sorted(set(saved) | set(current)):
        name, old, new = f"{prefix}{key}", saved.get(key), current.get(key)
        if name == "resume":
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changes += config_changes(old, new, f"{name}.")
        elif old != new:
            changes.append(f"{name}: {old!r} → {new!r}")
    return changes


def saved_position(record: dict) -> tuple[int, int]:
    """(epoch, step) a checkpoint records: which of two saves is later. A file's date says nothing (a copy or a
    `touch` changes it); a record without them counts as the earliest."""
    state = record.get("state") if isinstance(record.get("state"), dict) else {}
    position = [state.get("epoch"), state.get("step")]
    return tuple(v if isinstance(v, int) and not isinstance(v, bool) else -1 for v in position)  # type: ignore


def newest_checkpoint(paths: RunPaths) -> tuple[Path, dict] | None:
    """The run's latest complete checkpoint: of last.pt and best.pt, the one with the later (epoch, step) inside it
    (best.pt is later only when a crash fell between the two saves of an epoch's end; a tie goes to last.pt). A
    damaged one is skipped with a warning; only damaged files is exit 3, never a silent restart."""
    loaded, errors = [], []
    for path in (paths.last, paths.best):
        if not path.exists():
            continue
        try:
            loaded.append((path, load_checkpoint(path)))
        except DataError as err:
            log.warning("skipping %s", err)
            errors.append(err)
    if loaded:
        return max(loaded, key=lambda item: (saved_position(item[1]), item[0] == paths.last))
    if errors:
        raise DataError(f"{errors[0]}; no complete checkpoint to resume from (move {paths.checkpoints} away to "
                        "start over)")
    return None


def resume_source(cfg: NinConfig, paths: RunPaths) -> tuple[Path, dict] | None:
    """Where a run continues from: its own latest checkpoint, else `resume=DIR|CKPT`, else nowhere (a fresh run,
    never over a finished one)."""
    own = newest_checkpoint(paths)
    if own:
        return own
    refuse_finished_without_checkpoint(paths)
    if not cfg.resume:
        return None
    target = Path(cfg.resume).expanduser()
    if target.is_dir():
        other = newest_checkpoint(RunPaths(target))
        if other is None:
            raise DataError(f"resume={cfg.resume}: no checkpoint in {target / 'checkpoints'}")
        return other
    return target, load_checkpoint(target)
