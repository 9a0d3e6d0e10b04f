"""Bit-exact resume after a kill -9 anywhere, crash-safe checkpoints, and the ways to continue a run.

Kills are real (SIGKILL through NIN_FAULT_INJECT, see nin_cli/faults.py) in processes forked from a server that has
already imported torch (`run_forked`); everything else runs in-process through the `nin` fixture.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import threading
from pathlib import Path

import pytest
import torch

from conftest import run_forked

# 2 epochs of 10 steps (104 synthetic 8×8 images: 20 test, 4 val, 80 train), a checkpoint every 4 steps. One thread:
# the same float reductions in every process, and no OpenMP spinning against the other processes on a busy machine.
TINY = ["dataset=synthetic", "model=nin_small", "dataset.image_shape=[3,8,8]", "dataset.size=104",
        "dataset.val_size=4", "trainer.batch_size=8", "trainer.progress=plain", "trainer.epochs=2",
        "trainer.checkpoint_every_steps=4", "trainer.log_every=2", "trainer.num_threads=1"]
STEPS, STEPS_PER_EPOCH, EVERY = 20, 10, 4
SAVE_STEPS = {s for s in range(1, STEPS + 1) if s % EVERY == 0 or s % STEPS_PER_EPOCH == 0}
WRITE_PHASES = ("mid_write", "before_rename", "after_rename")
TIMING = ("images_per_s", "epoch_time_s", "elapsed_s")  # wall-clock figures: never bit-identical


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """In-process runs set torch's thread count (trainer.num_threads); later tests get theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> Path:
    """A finished 1-epoch TINY run (last.pt at step 10, best.pt); tests continue copies of it."""
    cwd = tmp_path_factory.mktemp("one_epoch")
    assert run_forked("train", *TINY, "trainer.epochs=1", "hydra.run.dir=run", cwd=cwd).code == 0
    return cwd / "run"


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def kill_points(seed: int, n: int = 20) -> list[tuple[str, int]]:
    """n points at distinct, increasing steps, so each resumed process reaches the next one: after an optimizer
    step anywhere, or inside a checkpoint save where one happens."""
    rng = random.Random(seed)
    steps = sorted(rng.sample(range(1, STEPS + 1), n))
    return [(rng.choice((*WRITE_PHASES, "after_step")) if s in SAVE_STEPS else "after_step", s) for s in steps]


def assert_same(a, b, where: str = "") -> None:
    """Bit-identical nested checkpoint content: every tensor equal in dtype, shape and bits."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        bits_a, bits_b = (t.reshape(-1).clone().view(torch.uint8) if t.is_floating_point() else t for t in (a, b))
        assert torch.equal(bits_a, bits_b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            if key not in TIMING:
                assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def assert_same_training(reference: Path, run: Path) -> None:
    """Final weights, optimizer, scaler, state, RNGs (the whole checkpoint) and metrics.jsonl bit-identical."""
    for name in ("last.pt", "best.pt"):
        want = torch.load(reference / "checkpoints" / name, weights_only=True)
        got = torch.load(run / "checkpoints" / name, weights_only=True)
        # every key but the content hash: the state's elapsed_s is wall-clock time (trainer.max_time), so the hash
        # over it differs; assert_same compares everything else bit for bit
        assert want.keys() == got.keys()
        for key in want.keys() - {"sha256"}:
            assert_same(want[key], got[key], f"{name}:{key}")
    assert metrics(reference) == metrics(run)
    assert not temp_files(run)


def temp_files(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if ".tmp" in p.name]


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kill_chain(cwd: Path, points: list[tuple[str, int]], failures: list[str]) -> None:
    """Kill `nin train` at each point in turn, resuming each time, then let it finish."""
    for i, (phase, step) in enumerate(points):
        args = TINY if i == 0 else []  # later runs: a bare run dir replays the run's own overrides
        result = run_forked("train", *args, "hydra.run.dir=run", cwd=cwd,
                            env={"NIN_FAULT_INJECT": f"{phase}@{step}=kill"})
        if result.code != -9:
            failures.append(f"{phase}@{step} was not reached (exit {result.code}): {result.err[-600:]}")
            return
    final = run_forked("train", "hydra.run.dir=run", cwd=cwd)
    if final.code != 0 or "resuming from" not in final.err:
        failures.append(f"the final resume failed: {final.err[-600:]}")


def test_kill_9_at_20_seeded_points_then_resume_is_bit_exact(tmp_path):
    points = kill_points(seed=5)
    assert {phase for phase, _ in points} == {*WRITE_PHASES, "after_step"}  # every kind of crash is covered
    assert run_forked("train", *TINY, "hydra.run.dir=run", cwd=tmp_path).code == 0  # the reference
    # Two chains of 10 kills each, side by side (a core each when the machine has them).
    failures: list[str] = []
    chains = [threading.Thread(target=kill_chain, args=(tmp_path / name, points[i::2], failures))
              for i, name in enumerate(("a", "b"))]
    for name, chain in zip(("a", "b"), chains, strict=True):
        (tmp_path / name).mkdir()
        chain.start()
    for chain in chains:
        chain.join()
    assert not failures, failures
    for name in ("a", "b"):
        assert_same_training(tmp_path / "run", tmp_path / name / "run")
        assert_same_events(tmp_path / "run", tmp_path / name / "run")


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return {tag: sorted((e.step, e.value) for e in events.Scalars(tag)) for tag in events.Tags()["scalars"]
            if not tag.endswith("images_per_s")}


def assert_same_events(reference: Path, run: Path) -> None:
    """TensorBoard holds each step once, with the uninterrupted run's values."""
    want, got = scalars(reference), scalars(run)
    assert want.keys() == got.keys() and "step/loss" in want and "epoch/train_loss" in want
    for tag in want:
        assert got[tag] == want[tag], tag


def test_disk_full_during_a_save_keeps_the_previous_checkpoint_and_exits_3(nin, tmp_path, monkeypatch, one_epoch):
    run = copy_run(one_epoch, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    before = file_hash(last)
    monkeypatch.setenv("NIN_FAULT_INJECT", "mid_write@12=enospc")  # the next save: step 12, mid-epoch 2
    result = nin("train", "trainer.epochs=2", f"hydra.run.dir={run}")
    assert result.code == 3, result.err
    assert "no space left" in result.err_lines[-1] and "Traceback" not in result.err
    assert file_hash(last) == before and not temp_files(run)
    monkeypatch.delenv("NIN_FAULT_INJECT")
    assert nin("train", "trainer.epochs=2", f"hydra.run.dir={run}").code == 0
    assert [row["epoch"] for row in metrics(run)] == [1, 2]


def test_resume_key_continues_a_run_or_forks_from_a_checkpoint(nin, tmp_path, one_epoch):
    run, fork = copy_run(one_epoch, tmp_path / "run"), tmp_path / "fork"
    result = nin("train", f"resume={run}", "trainer.epochs=2")  # the run's own config, one more epoch
    assert result.code == 0, result.err
    assert [row["epoch"] for row in metrics(run)] == [1, 2]
    assert "synthetic" in (run / "config.yaml").read_text()
    assert len(json.loads((run / "provenance.json").read_text())["resumes"]) == 1
    result = nin("train", f"resume={one_epoch}/checkpoints/last.pt", "trainer.epochs=2", f"hydra.run.dir={fork}")
    assert result.code == 0, result.err
    assert [row["epoch"] for row in metrics(fork)] == [2]  # a new run directory, from epoch 2 on
    assert json.loads((fork / "provenance.json").read_text())["resumed_from"].endswith("last.pt")


def test_resume_mistakes_exit_2_with_one_line(nin, tmp_path, one_epoch):
    (tmp_path / "empty").mkdir()
    cases = [([f"resume={tmp_path / 'nowhere'}"], "no such run directory or checkpoint"),
             ([f"resume={tmp_path / 'empty'}"], "no checkpoint in"),
             ([f"resume={one_epoch}", f"hydra.run.dir={tmp_path / 'other'}"], "name different runs")]
    for args, needle in cases:
        result = nin("train", *args)
        assert result.code == 2 and len(result.err_lines) == 1 and needle in result.err, result.err
    fork = tmp_path / "fork"  # a checkpoint continued with another architecture
    result = nin("train", f"resume={one_epoch}/checkpoints/last.pt", "model.batch_norm=false", f"hydra.run.dir={fork}")
    assert result.code == 2 and "does not fit the configured model" in result.err_lines[-1], result.err


def test_a_run_directory_in_use_is_refused(nin, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a live `nin train` on this directory holds
        result = nin("train", *TINY, f"hydra.run.dir={run}")
    finally:
        os.close(fd)
    assert result.code == 2 and "in use by another" in result.err_lines[-1]
    assert not (run / "checkpoints").exists()


def test_a_damaged_last_checkpoint_falls_back_to_best_or_exits_3(nin, tmp_path, one_epoch):
    run = copy_run(one_epoch, tmp_path / "run")
    last, best = run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt"
    last.write_bytes(last.read_bytes()[:1000])  # what a non-atomic writer would leave
    result = nin("train", "trainer.epochs=2", f"hydra.run.dir={run}")
    assert result.code == 0 and f"resuming from {best}" in result.err, result.err
    for path in (last, best):
        path.write_bytes(b"garbage")
    result = nin("train", "trainer.epochs=3", f"hydra.run.dir={run}")
    assert result.code == 3 and "no complete checkpoint to resume from" in result.err_lines[-1]


def test_a_newer_file_date_alone_does_not_choose_the_checkpoint(tmp_path, one_epoch):
    """Both files hold the same save (epoch 1): last.pt, even when best.pt was touched later. Which of two saves is
    later is told by the (epoch, step) inside (tests/test_nothing_silent.py)."""
    from nin_cli.resume import newest_checkpoint
    from nin_cli.runs import RunPaths

    run = copy_run(one_epoch, tmp_path / "run")
    paths = RunPaths(run)
    assert newest_checkpoint(paths)[0] == paths.last
    os.utime(paths.best, ns=(paths.last.stat().st_mtime_ns + 10**9,) * 2)
    assert newest_checkpoint(paths)[0] == paths.last


def test_a_resume_cuts_metrics_and_events_back_to_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from nin_cli.runs import truncate_events, truncate_metrics

    rows = tmp_path / "metrics.jsonl"
    rows.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "train_lo')  # the last line cut short by a crash
    truncate_metrics(rows, 1)
    assert rows.read_text() == '{"epoch": 1}\n'
    writer = SummaryWriter(str(tmp_path / "tb"))
    for step in range(1, 6):
        writer.add_scalar("step/loss", float(step), step)
    writer.flush()
    (event_file,) = (tmp_path / "tb").glob("events.*")
    with open(event_file, "ab") as f:
        f.write(b"\x20\x00\x00")  # a record cut short by a crash
    writer.add_hparams({"lr": 0.1}, {"hparam/val_error": 1.0}, run_name=".", global_step=2)
    writer.close()
    truncate_events(tmp_path / "tb", 3)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("step/loss")] == [1, 2, 3]
    assert not [tag for tag in events.Tags()["scalars"] if tag.startswith("hparam/")]
