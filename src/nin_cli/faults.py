"""Fault injection for the crash-safety tests: the one place that reads NIN_FAULT_INJECT.

`NIN_FAULT_INJECT="POINT@STEP=ACTION[,POINT@STEP=ACTION...]"` makes `inject(POINT, STEP)` act when the named point
is reached at that optimizer step. Points: `loss` (before the backward of step STEP), `after_step` (after the
optimizer update of step STEP), and inside `save_checkpoint` for a checkpoint of step STEP: `mid_write` (half the
bytes written), `before_rename` (written and verified, not yet renamed), `after_rename` (renamed, directory not yet
fsynced). Actions: `kill` (SIGKILL: a crash), `term` / `int` (send this process SIGTERM / SIGINT), `enospc` (a full
disk: OSError ENOSPC), `nan` (`inject` returns True; the caller poisons the loss). Unset, `inject` returns False.
With several processes (`trainer.devices=N`), `NIN_FAULT_RANK=R` limits the faults to the process of rank R.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "NIN_FAULT_INJECT"
ACTIONS = ("kill", "term", "int", "enospc", "nan")


def inject(point: str, step: int) -> bool:
    spec = os.environ.get(ENV)
    if not spec or os.environ.get("NIN_FAULT_RANK", os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
        return False
    for item in spec.split(","):
        where, _, action = item.strip().partition("=")
        if where != f"{point}@{step}":
            continue
        if action not in ACTIONS:
            raise ValueError(f"{ENV}: unknown action {action!r} in {item!r}; one of {', '.join(ACTIONS)}")
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action in ("term", "int"):
            os.kill(os.getpid(), signal.SIGTERM if action == "term" else signal.SIGINT)
        elif action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return True
    return False
