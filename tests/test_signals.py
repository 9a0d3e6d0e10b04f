"""Ctrl-C / SIGTERM finish the step, save and exit 130 / 143; a second one leaves at once; NaN stops with exit 5.

Signals are real: sent by the process to itself at a chosen step (NIN_FAULT_INJECT=after_step@N=term) or by this
test from outside, to processes forked from a server that has already imported torch (`run_forked`).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from conftest import run_forked
from test_resume import TINY, assert_same_training, metrics, restore_torch_threads, temp_files  # noqa: F401


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """TINY run straight through, in a forked process like the interrupted runs it is compared with."""
    cwd = tmp_path_factory.mktemp("reference")
    assert run_forked("train", *TINY, "hydra.run.dir=run", cwd=cwd).code == 0
    return cwd / "run"


def last_checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def all_finite(record: dict) -> bool:
    tensors = [t for t in record["model"].values() if t.is_floating_point()]
    tensors += [t for s in record["optimizer"]["state"].values() for t in s.values()
                if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return all(bool(t.isfinite().all()) for t in tensors)


def test_sigterm_mid_epoch_exits_143_then_resumes_bit_exact(tmp_path, reference):
    result = run_forked("train", *TINY, "hydra.run.dir=run", cwd=tmp_path,
                        env={"NIN_FAULT_INJECT": "after_step@13=term"})  # epoch 2, step 3 of 10; no save due
    assert result.code == 143, result.err
    assert result.err_lines[-1].startswith("nin: error: SIGTERM: stopped at epoch 2, step 13; saved ")
    state = last_checkpoint(tmp_path / "run")["state"]
    assert (state["epoch"], state["step"], state["epoch_step"]) == (1, 13, 3)
    resumed = run_forked("train", "hydra.run.dir=run", cwd=tmp_path)
    assert resumed.code == 0, resumed.err
    assert_same_training(reference, tmp_path / "run")


@pytest.mark.parametrize("sig, code", [("int", 130), ("term", 143)])
def test_a_second_signal_during_the_save_exits_at_once_and_corrupts_nothing(tmp_path, reference, sig, code):
    # The first signal after step 14 asks for a save; the second arrives halfway through writing it.
    fault = f"after_step@14={sig},mid_write@14={sig}"
    result = run_forked("train", *TINY, "hydra.run.dir=run", cwd=tmp_path, env={"NIN_FAULT_INJECT": fault})
    assert result.code == code, result.err
    assert "Traceback" not in result.err and result.err_lines[-1] == (
        f"nin: error: interrupted again: stopped at once (exit {code}); the last checkpoint is kept")
    assert last_checkpoint(tmp_path / "run")["state"]["step"] == 12  # the save before, intact
    assert not temp_files(tmp_path / "run")
    resumed = run_forked("train", "hydra.run.dir=run", cwd=tmp_path)  # and the run goes on as if nothing happened
    assert resumed.code == 0, resumed.err
    assert "resuming from" in resumed.err and "at epoch 2, step 12" in resumed.err
    assert_same_training(reference, tmp_path / "run")


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def wait_for_text(path: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or text not in path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.02)


def send_one(pid: int, run: Path) -> None:
    os.kill(pid, signal.SIGTERM)


def send_after_acknowledged(pid: int, run: Path) -> None:
    """The second Ctrl-C only once the first is acknowledged in train.log (sent back to back, the kernel merges
    two of the same signal into one): it lands while the run saves or leaves, never as a first request."""
    os.kill(pid, signal.SIGINT)
    wait_for_text(run / "train.log", "SIGINT: saving a checkpoint at step")
    os.kill(pid, signal.SIGINT)


def send_two_while_stopped(pid: int, run: Path) -> None:
    """Two different signals pending at once (the process stopped meanwhile): Python runs SIGINT's handler, then
    SIGTERM's, which finds a stop already requested: the "second signal leaves at once" path, deterministically."""
    os.kill(pid, signal.SIGSTOP)
    try:
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("send, code, last_line", [
    (send_one, 143, "nin: error: SIGTERM: stopped at epoch "),
    (send_after_acknowledged, 130, "nin: error: "),
    (send_two_while_stopped, 143, "nin: error: interrupted again: stopped at once (exit 143); the last checkpoint "
                                  "is kept"),
], ids=["sigterm", "sigint-twice", "second-leaves-at-once"])
def test_signals_from_outside_stop_a_long_run_cleanly(tmp_path, send, code, last_line):
    """Sent from another process at an arbitrary moment of a long run."""
    import multiprocessing
    import threading

    run = tmp_path / "run"
    last = run / "checkpoints" / "last.pt"
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(r=run_forked(
        "train", *TINY, "trainer.epochs=500", "hydra.run.dir=run", cwd=tmp_path)))
    worker.start()
    wait_for(last)  # training is under way
    (child,) = multiprocessing.active_children()
    send(child.pid, run)
    worker.join(60)
    result = outcome["r"]
    assert result.code == code, result.err
    assert "Traceback" not in result.err and result.err_lines[-1].startswith(last_line), result.err
    if send is send_after_acknowledged:  # the second, during the save or after it: at once, or as the first said
        assert result.err_lines[-1].startswith(("nin: error: interrupted again", "nin: error: SIGINT: stopped"))
    from nin_cli.checkpoint import load_checkpoint

    assert load_checkpoint(last)["state"]["step"] >= 3  # complete, integrity checked
    assert not temp_files(run)


def test_forced_nan_exits_5_within_one_step_and_no_checkpoint_holds_it(nin, tmp_path, monkeypatch):
    monkeypatch.setenv("NIN_FAULT_INJECT", "loss@6=nan")
    run = tmp_path / "run"
    result = nin("train", *TINY, f"hydra.run.dir={run}")
    assert result.code == 5, result.err
    assert result.err_lines[-1] == ("nin: error: training diverged: loss is nan at step 6 (epoch 1); the last good "
                                    "checkpoint is kept")
    record = last_checkpoint(run)
    assert record["state"]["step"] == 4 and all_finite(record)


def test_on_an_accelerator_nan_is_caught_before_the_next_save_without_a_sync_per_step(nin, tmp_path, monkeypatch):
    """The GPU path (no host sync per step), forced on the CPU: the poisoned step's weights are never saved."""
    from nin_cli.state import Loop

    monkeypatch.setattr(Loop, "check_every_step", property(lambda self: False))
    monkeypatch.setenv("NIN_FAULT_INJECT", "loss@5=nan")
    run = tmp_path / "run"
    result = nin("train", *TINY, "trainer.log_every=50", f"hydra.run.dir={run}")
    assert result.code == 5, result.err
    assert "training diverged: a non-finite loss by step 8" in result.err_lines[-1]  # the save at step 8 checked
    record = last_checkpoint(run)
    assert record["state"]["step"] == 4 and all_finite(record)
