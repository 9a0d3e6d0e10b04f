"""SLURM requeue through submitit: SIGUSR2 saves `last.pt`, then submitit's own handler (checkpoint() and requeue)
runs; SIGTERM stays submitit's; the requeued job resumes from `last.pt`.

Two levels: submitit's job environment simulated in this process (SUBMITIT_EXECUTOR set, stand-in handlers where
submitit's would be), and a real sweep through hydra-submitit-launcher's local executor, whose controller restarts
a job that asks for a requeue exactly as SLURM would.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import FAST, signal_at_step


def metrics_epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


class SubmititStandIn:
    """What submitit's `process_job` sets up before the job's function runs: a SIGTERM bypass and a SIGUSR2
    checkpoint-and-requeue. These record their calls, and the step of `last.pt` when the requeue is called."""

    def __init__(self, run: Path):
        self.run, self.calls, self.saved_step = run, [], []

    def bypass(self, signum, frame):
        self.calls.append(("bypass", signum))

    def requeue(self, signum, frame):
        self.calls.append(("requeue", signum))
        self.saved_step.append(torch.load(self.run / "checkpoints" / "last.pt", weights_only=True)["state"]["step"])
        raise SystemExit(-1)  # submitit's _exit() after `scontrol requeue`


@pytest.fixture
def submitit(monkeypatch, tmp_path):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # what submitit's job scripts export
    stand_in = SubmititStandIn(tmp_path / "run")
    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, stand_in.bypass),
           signal.SIGUSR2: signal.signal(signal.SIGUSR2, stand_in.requeue)}
    yield stand_in
    for sig, handler in old.items():
        signal.signal(sig, handler)


def test_sigusr2_under_submitit_saves_then_hands_over_and_the_requeued_job_resumes(nin, monkeypatch, submitit):
    import nin_cli.train as train

    run, real_step = submitit.run, train.train_step

    def step(loop, *args):
        out = real_step(loop, *args)
        if loop.state.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # SLURM's SIGTERM: submitit's bypass, training goes on
        if loop.state.step == 3:
            os.kill(os.getpid(), signal.SIGUSR2)
        return out

    monkeypatch.setattr(train, "train_step", step)
    result = nin("train", *FAST, "trainer.epochs=2", f"hydra.run.dir={run}")
    assert result.code == -1, result.err  # submitit's exit, not nin's 140: the handover happened
    assert submitit.calls == [("bypass", signal.SIGTERM), ("requeue", signal.SIGUSR2)]
    assert submitit.saved_step == [3]  # called after the save: last.pt of step 3 already on disk
    assert signal.getsignal(signal.SIGTERM) == submitit.bypass  # nin never took SIGTERM from submitit
    assert "handing over to submitit's checkpoint and requeue" in (run / "train.log").read_text()

    monkeypatch.setattr(train, "train_step", real_step)
    resumed = nin("train", f"hydra.run.dir={run}")  # the requeued job: same run directory, same command
    assert resumed.code == 0, resumed.err
    assert f"resuming from {run / 'checkpoints' / 'last.pt'} at epoch 1, step 3" in (run / "train.log").read_text()
    assert metrics_epochs(run) == [1, 2]
    assert len(submitit.calls) == 2  # no second handover


def test_outside_submitit_sigusr2_exits_140_and_calls_no_previous_handler(nin, tmp_path, monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    called: list[int] = []
    old = signal.signal(signal.SIGUSR2, lambda signum, frame: called.append(signum))
    signal_at_step(monkeypatch, 3, signal.SIGUSR2)
    try:
        result = nin("train", *FAST, "trainer.epochs=2", f"hydra.run.dir={tmp_path / 'run'}")
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert result.code == 140, result.err
    assert called == []


def job_process(folder: Path) -> int | None:
    """The pid of the submitit job running from `folder` (its command line names the folder), if started."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in cmdline and any(str(folder).encode() in arg for arg in cmdline):
            return int(proc.name)
    return None


def signal_after_first_epoch(job: Path, folder: Path, sent: list[int]) -> None:
    """Once the job has finished an epoch (its handler is in place), SIGUSR2 to it, as SLURM's --signal does."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        metrics = job / "metrics.jsonl"
        pid = job_process(folder)
        if pid and metrics.exists() and metrics.read_text().strip():
            os.kill(pid, signal.SIGUSR2)
            sent.append(pid)
            return
        time.sleep(0.02)


@pytest.mark.slow  # about 30 s: three fresh processes import torch (two jobs, one requeued)
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the job's process through /proc")
def test_a_submitit_local_job_is_requeued_and_resumes_from_last_pt(nin, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    epochs = 8
    sent: list[int] = []
    thread = threading.Thread(target=signal_after_first_epoch, args=(sweep / "0", sweep / ".submitit", sent))
    thread.start()
    result = nin("sweep", "dataset=synthetic", "model=nin_small", "dataset.image_shape=[3,16,16]",
                 "dataset.size=128", "dataset.val_size=16", "trainer.batch_size=16", f"trainer.epochs={epochs}",
                 "trainer.num_threads=1", "trainer.progress=none", "trainer.device=cpu", "head=gap,fc",
                 "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}")
    thread.join()
    assert len(sent) == 1 and result.code == 0, result.err
    job = sweep / "0"
    log = (job / "train.log").read_text()
    handover = log.index("handing over to submitit's checkpoint and requeue")
    resumed = log.index(f"resuming from {job / 'checkpoints' / 'last.pt'} at epoch ")
    assert handover < resumed
    assert metrics_epochs(job) == list(range(1, epochs + 1))  # every epoch once: nothing repeated, nothing lost
    assert json.loads((job / "summary.json").read_text())["best_val_error"] is not None
    submitit_logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.err"))
    assert "Calling checkpoint method." in submitit_logs and "Requeued job" in submitit_logs
    assert "resuming from" not in (sweep / "1" / "train.log").read_text()  # the job not signalled ran straight
