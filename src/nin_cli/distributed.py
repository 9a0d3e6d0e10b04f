"""Several processes, one run: `nin train trainer.devices=N` on PyTorch's own distributed engine.

The parent process launches N copies of the same command through `torch.distributed.run` (elastic launch,
standalone rendezvous) and waits; `torchrun --nnodes ... -m nin_cli train ...` starts the same workers across
machines. In a worker, rank 0 runs the Hydra job (it alone picks and writes the run directory, takes its lock and
logs) and sends every other rank the config and the directory. Each rank trains on its slice of every global
batch (`data.train_batches`), `DistributedDataParallel` averages the gradients, metrics are summed across ranks,
and a signal on any rank stops all of them at the same step (`agree_stop`). NCCL on CUDA, gloo on the CPU; the
stop flag and Python objects always travel over gloo, so the per-step check never waits for a GPU.

A worker's anticipated failure goes to torchelastic's error file (`report_failure`), from which the parent prints
one line for the failing rank: no traceback and no duplicate lines from the other ranks.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import Any

from nin_cli.collectives import Dist, broadcast_object, env_rank, init_distributed, launched_by_torchrun  # noqa: F401
from nin_cli.errors import ConfigError, NinError, PeerFailed

ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"
# The longest a rank whose peer died waits for the agent's SIGTERM (see `wait_to_be_stopped`); only reached when no
# agent is there to send it.
PEER_WAIT_LIMIT_S = 120.0


def wait_to_be_stopped(limit_s: float = PEER_WAIT_LIMIT_S) -> None:
    """A rank whose peer died lets torchrun's agent, which watches every rank, record the peer's own failure first:
    instead of racing it to exit (its failure would then read as the cause), it waits for the SIGTERM the agent
    sends the remaining ranks once it has seen a failure. An ordering, not a guess of how long the agent takes."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        signal.sigtimedwait({signal.SIGTERM}, limit_s)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


# --------------------------------------------------------------------------------------------------- parent


def launch(devices: int, device: str, args: list[str]) -> int:
    """`nin train ARGS` in `devices` local worker processes through torch.distributed.run; returns the exit code.

    A failing worker's one line (from its error file) is printed here unless a worker printed its own; Ctrl-C and
    SIGTERM reach the workers through the elastic agent (one signal each), which save once and exit 130 / 143."""
    import signal
    import sys

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # failures: reported below
    command = parse_args(["--standalone", f"--nproc-per-node={devices}", "--module", "nin_cli", "train", *args])
    threads = os.environ.get("OMP_NUM_THREADS")
    if device != "cuda" and threads is None:  # the cores shared out, not oversubscribed
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // devices))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    try:
        run(command)  # the elastic agent installs its own signal handlers: they forward the signal to the workers
    except ChildFailedError as err:
        rank, failure = root_cause(err.failures)
        message = failure.message.get("message", "") if isinstance(failure.message, dict) else failure.message
        if not any(printed_its_error(f) for f in err.failures.values()):  # rank 0 prints its anticipated errors
            print(f"nin: error: rank {rank}: {message or f'exit code {failure.exitcode}'}", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as err:  # the workers have been stopped with the same signal and saved
        return 128 + int(err.sigval)
    finally:  # this process may go on (a sweep's next job)
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    return 0


def root_cause(failures: dict) -> tuple[int, Any]:
    """The failure to report: the earliest anticipated one (exit codes 2-5, 130, 143), else the earliest."""
    def order(item: tuple[int, Any]) -> tuple:
        rank, failure = item
        return failure.exitcode not in (2, 3, 4, 5, 130, 143), failure.timestamp, rank

    return min(failures.items(), key=order)


def printed_its_error(failure: Any) -> bool:
    info = failure.message.get("extraInfo", {}) if isinstance(failure.message, dict) else {}
    return bool(info.get("printed"))


def shown_here(err: NinError) -> bool:
    """The error protocol of `main` for a known error: whether this process prints its line. A worker of
    `trainer.devices=N` also records it for the parent (the error file); a worker that only lost its peers waits to
    be stopped, so that the agent reports the process that failed first."""
    if isinstance(err, PeerFailed):
        wait_to_be_stopped()
    printed = env_rank() == 0 and not isinstance(err, PeerFailed)
    report_failure(str(err), err.exit_code, printed)
    return printed


def report_failure(message: str, exit_code: int, printed: bool = False) -> None:
    """A worker's one-line failure into torchelastic's error file, where the parent (or torchrun) finds it;
    `printed`: the worker showed the line itself, so the parent must not repeat it."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return
    record = {"message": {"message": message, "extraInfo": {"py_callstack": "", "timestamp": str(int(time.time())),
                                                            "exit_code": exit_code, "printed": printed}}}
    try:
        with open(path, "w") as f:
            json.dump(record, f)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------------- worker


def train_command(args: list[str]) -> dict | None:
    """`nin train ARGS`: validated before torch is imported or a run directory exists, then one process, N
    processes (trainer.devices=N: this process launches them and exits with their code) or, launched by torchrun,
    one of them. Returns the summary (None on ranks > 0)."""
    from nin_cli.overrides import load_config  # Hydra: after the command line is parsed
    from nin_cli.runs import resume_overrides  # ditto

    overrides = resume_overrides(args)  # an existing run continues with its own overrides first
    cfg = load_config(overrides)
    if launched_by_torchrun():  # one of N processes: rank 0 makes the run directory and reports
        return train_worker(overrides)
    if cfg.trainer.devices > 1:
        raise SystemExit(launch(cfg.trainer.devices, cfg.trainer.device, args))
    from nin_cli.hydra_app import hydra_run  # torch: after the config is valid
    from nin_cli.train import train_run  # ditto

    return hydra_run(overrides, train_run)


def train_worker(args_overrides: list[str]) -> dict | None:
    """One rank of a distributed `nin train`: rank 0 runs the Hydra job and shares (config, run directory); every
    rank then calls `fit` with it. Returns rank 0's summary (None elsewhere)."""
    import dataclasses

    def start(cfg) -> tuple[Any, Dist]:
        dist, device = init_distributed(cfg.trainer.device)
        if cfg.trainer.batch_size % dist.world_size:
            raise ConfigError(f"trainer.batch_size={cfg.trainer.batch_size} is the global batch: it must divide "
                              f"evenly over the {dist.world_size} processes")
        return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, device=device)), dist

    from nin_cli.hydra_app import hydra_run  # torch and Hydra: workers only (cli.main imports this module)
    from nin_cli.overrides import load_config  # ditto
    from nin_cli.runs import write_run_files  # ditto
    from nin_cli.train import fit  # torch: workers only

    if env_rank() == 0:
        def task(cfg, run_dir):
            cfg, dist = start(cfg)
            broadcast_object((cfg, run_dir), dist)
            write_run_files(cfg, run_dir, cfg.trainer.device)
            return fit(cfg, run_dir, dist)

        return hydra_run(args_overrides, task)
    for name in ("nin", "nin_cli"):  # rank 0 logs for the run
        logging.getLogger(name).setLevel(logging.ERROR)
    cfg, dist = start(load_config(args_overrides))
    rank0_cfg, run_dir = broadcast_object(None, dist)
    device = cfg.trainer.device  # each rank its own GPU
    cfg = dataclasses.replace(rank0_cfg, trainer=dataclasses.replace(rank0_cfg.trainer, device=device,
                                                                       progress="none"))
    fit(cfg, run_dir, dist)
    return None


# ----------------------------------------------------------------------------------------------- collectives


