"""`trainer.devices=N`: N processes on gloo (CPU) through torch.distributed.run, one run directory, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import FAST, run_subprocess
from nin_cli.checkpoint import load_checkpoint
from nin_cli.collectives import Dist, wrap_model
from nin_cli.distributed import ERROR_FILE_ENV, printed_its_error, report_failure, root_cause
from nin_cli.model import NIN

# No batch norm (PyTorch's SyncBatchNorm has no CPU kernel: on the CPU each rank would normalise over its half of
# the batch) and no dropout (each process draws its own masks): then N processes must train exactly as one.
EXACT = [*FAST, "model.batch_norm=false", "model.dropout=0", "trainer.batch_size=8", "trainer.max_steps_per_epoch=5",
         "trainer.num_threads=1", "optim.lr=0.01"]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def files(run: Path) -> list[str]:
    """The run directory's files, with the process-specific parts of TensorBoard event file names removed."""
    names = []
    for path in sorted(run.rglob("*")):
        if path.is_file():
            rel = path.relative_to(run)
            names.append(str(rel.parent / "events") if rel.name.startswith("events.out") else str(rel))
    return sorted(names)


def metric_rows(run: Path) -> list[dict]:
    import json

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("images_per_s", "epoch_time_s")} for row in rows]


def test_two_processes_train_as_one_with_the_same_global_batch(nin, tmp_path):
    one = nin("train", *EXACT, "trainer.epochs=2", f"hydra.run.dir={tmp_path / 'one'}")
    assert one.code == 0, one.err
    two = run_subprocess("train", *EXACT, "trainer.epochs=2", "trainer.devices=2", f"hydra.run.dir={tmp_path / 'two'}",
                         cwd=tmp_path)
    assert two.code == 0, two.err
    assert two.out.count("test error") == 1  # one report, from rank 0
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-5), (key, (a[key] - b[key]).abs().max())
    assert load_checkpoint(tmp_path / "two" / "checkpoints" / "last.pt")["state"]["step"] == 10
    # One set of run files, as one process writes them; metrics summed over both processes' halves of each batch.
    assert files(tmp_path / "two") == files(tmp_path / "one")
    for x, y in zip(metric_rows(tmp_path / "one"), metric_rows(tmp_path / "two"), strict=True):
        assert x.keys() == y.keys() and x["step"] == y["step"]
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), key


def test_sigterm_on_one_rank_saves_once_and_the_resumed_run_matches_the_uninterrupted_one(tmp_path):
    args = [*EXACT, "trainer.epochs=2", "trainer.devices=2", "trainer.checkpoint_every_steps=2"]
    full = run_subprocess("train", *args, f"hydra.run.dir={tmp_path / 'full'}", cwd=tmp_path)
    assert full.code == 0, full.err

    run = tmp_path / "cut"
    cut = run_subprocess("train", *args, f"hydra.run.dir={run}", cwd=tmp_path,
                         env={"NIN_FAULT_INJECT": "after_step@7=term", "NIN_FAULT_RANK": "1"})
    assert cut.code == 143, cut.err
    errors = [line for line in cut.err_lines if line.startswith("nin: ")]
    assert len(errors) == 1 and "SIGTERM" in errors[0] and "continues" in errors[0], cut.err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["step"] == 7  # both stopped after step 7
    assert not (run / "summary.json").exists()

    resumed = run_subprocess("train", f"hydra.run.dir={run}", cwd=tmp_path)  # its own overrides: devices=2 again
    assert resumed.code == 0, resumed.err
    a, b = weights(tmp_path / "full"), weights(run)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert metric_rows(run) == metric_rows(tmp_path / "full")
    assert set(files(run)) == set(files(tmp_path / "full"))  # (each attempt starts its own TensorBoard file)


def test_a_failing_rank_is_reported_in_one_line_with_its_exit_code(tmp_path):
    result = run_subprocess("train", *EXACT, "trainer.devices=2", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                            env={"NIN_FAULT_INJECT": "loss@3=nan", "NIN_FAULT_RANK": "1"})
    assert result.code == 5, result.err
    lines = [line for line in result.err_lines if line.startswith("nin: ")]
    assert lines == [lines[0]] and lines[0].startswith("nin: error: rank 1: training diverged"), result.err
    assert "Traceback" not in result.err


def test_global_batch_must_divide_over_the_processes(nin, tmp_path):
    result = nin("train", *FAST, "trainer.batch_size=9", "trainer.devices=2")
    assert result.code == 2
    assert result.err_lines == ["nin: error: trainer.batch_size=9 is the global batch: it must divide evenly over "
                                "trainer.devices=2"]
    assert not (tmp_path / "outputs").exists()


def test_one_process_trains_the_bare_model():
    model = NIN.__new__(NIN)
    assert wrap_model(model, torch.device("cpu"), Dist()) is model


def test_root_cause_prefers_an_anticipated_failure_over_the_crashes_it_caused():
    class Failure:
        def __init__(self, exitcode: int, timestamp: int):
            self.exitcode, self.timestamp = exitcode, timestamp

    crash, diverged, killed = Failure(1, 100), Failure(5, 101), Failure(-15, 99)
    assert root_cause({0: crash, 1: diverged, 2: killed}) == (1, diverged)
    assert root_cause({0: crash, 1: Failure(1, 90)})[0] == 1


@pytest.mark.parametrize("printed", [True, False])
def test_the_launcher_learns_whether_a_worker_printed_its_error(tmp_path, monkeypatch, printed):
    """Every rank of an agreed stop fails alike; the parent must not repeat the line rank 0 printed, whichever
    rank it picks as the root cause (their error-file timestamps tie to the second)."""
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    monkeypatch.setenv(ERROR_FILE_ENV, str(tmp_path / "error.json"))
    report_failure("SIGTERM: stopped at epoch 2, step 7", 143, printed)
    failure = ProcessFailure(local_rank=0, pid=1, exitcode=143, error_file=str(tmp_path / "error.json"))
    assert failure.message["message"] == "SIGTERM: stopped at epoch 2, step 7"
    assert printed_its_error(failure) is printed


def test_sigterm_to_the_launcher_reaches_every_worker_once(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    run = tmp_path / "run"
    # schedule=constant: the plateau rule would end these 1000 epochs after ~20 (2 s), racing the signal
    proc = subprocess.Popen([sys.executable, "-m", "nin_cli", "train", *EXACT, "trainer.epochs=1000",
                             "schedule=constant", "trainer.devices=2", f"hydra.run.dir={run}"], cwd=tmp_path,
                            env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until_training(proc, run / "checkpoints" / "last.pt")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    errors = [line for line in err.splitlines() if line.startswith("nin: ")]
    assert len(errors) == 1 and errors[0].startswith("nin: error: SIGTERM: stopped at epoch"), err
    state = load_checkpoint(run / "checkpoints" / "last.pt")["state"]
    assert 0 < state["epoch"] < 1000 and not (run / "summary.json").exists()
    assert len(metric_rows(run)) == state["epoch"]  # one row per finished epoch, written once


def wait_until_training(proc, ready: Path, limit: float = 120) -> None:
    """Until `ready` exists (both workers are in the training loop, their handlers installed): a run that ended
    or never got there fails here with its output, not later as a puzzling exit code."""
    import time

    deadline = time.monotonic() + limit
    while not ready.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {ready} was written: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {ready} after {limit:g} s: {proc.communicate()[1]}")
        time.sleep(0.1)


def test_a_signal_handled_while_the_processes_agree_is_kept_for_the_next_step(monkeypatch):
    """The handler may run while a process waits in the all-reduce that agrees on stopping: the agreement (no stop,
    the other process had none) must not overwrite this process's own request, so the next step stops."""
    import signal
    from types import SimpleNamespace

    import torch.distributed as tdist

    from nin_cli.state import StopRequest
    from nin_cli.train import stop_requested

    loop = SimpleNamespace(stop=StopRequest(), dist=Dist(rank=0, world_size=2))
    calls = []

    def all_reduce(flag, op=None, group=None):  # the peer had no signal; ours arrives during the wait
        calls.append(int(flag.item()))
        if len(calls) == 1:
            loop.stop.signum = signal.SIGTERM

    monkeypatch.setattr(tdist, "all_reduce", all_reduce)
    assert stop_requested(loop) is False and loop.stop.signum == signal.SIGTERM
    assert stop_requested(loop) is True
    assert calls == [0, signal.SIGTERM] and loop.stop.agreed == signal.SIGTERM == loop.stop.reason
