"""Nothing is lost silently: a finished run whose checkpoints were deleted is refused (exit 3), never trained again
in place; a resume continues from the checkpoint with the later (epoch, step) recorded inside it, whatever the
files' dates say."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest import FAST
from nin_cli.checkpoint import load_checkpoint


def contents(root: Path, names: list[str]) -> dict[str, bytes]:
    """Every file under `names` (files or folders) of `root`, by relative path."""
    found = {}
    for name in names:
        path = root / name
        for item in ([path] if path.is_file() else sorted(path.rglob("*"))):
            if item.is_file():
                found[item.relative_to(root).as_posix()] = item.read_bytes()
    return found


def test_a_finished_run_without_checkpoints_is_refused_not_retrained(nin, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval"))
    shutil.rmtree(run / "checkpoints")  # deleted to save space
    kept = ["metrics.jsonl", "summary.json", "tb"]
    before = contents(run, kept)
    assert len(before) >= 3
    threads = torch.get_num_threads()
    result = nin("train", f"hydra.run.dir={run}")
    torch.set_num_threads(threads)  # the run's trainer.num_threads=1 is process-wide
    assert result.code == 3, result.err
    assert len(result.err_lines) == 1 and str(run / "summary.json") in result.err
    assert "start over" in result.err and "Traceback" not in result.err
    assert contents(run, kept) == before  # metrics, events and summary untouched
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory) -> Path:
    """A 2-epoch run that kept both epochs' checkpoints (epoch_0001.pt, epoch_0002.pt)."""
    import sys

    from nin_cli.cli import main

    run = tmp_path_factory.mktemp("silent") / "run"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(run.parent)
        patch.setattr(sys, "argv", ["nin", "train", *FAST, "trainer.epochs=2", "trainer.keep_last=2",
                                    "trainer.num_threads=1", f"hydra.run.dir={run}"])
        with pytest.raises(SystemExit) as exit_:
            main()
    torch.set_num_threads(threads)
    assert exit_.value.code == 0
    return run


def arrange(source: Path, run: Path, last_epoch: int, best_epoch: int, newer: str) -> None:
    """`run` as a copy of `source` whose last.pt / best.pt hold the given epochs' checkpoints; `newer`'s file date
    is the later one (a copy or a `touch` does that)."""
    shutil.copytree(source, run)
    ckpts = run / "checkpoints"
    for name, epoch in (("last.pt", last_epoch), ("best.pt", best_epoch)):
        (ckpts / name).unlink()
        shutil.copyfile(ckpts / f"epoch_{epoch:04d}.pt", ckpts / name)
    for path in ckpts.glob("epoch_*.pt"):
        path.unlink()
    other = "best.pt" if newer == "last.pt" else "last.pt"
    stamp = (ckpts / other).stat().st_mtime_ns + 10**9
    os.utime(ckpts / newer, ns=(stamp, stamp))


@pytest.mark.parametrize(("last_epoch", "best_epoch", "newer", "chosen"), [
    (2, 1, "best.pt", "last.pt"),  # a touched best.pt must not roll the run back one epoch
    (1, 2, "last.pt", "best.pt"),  # a crash between an epoch end's two saves: best.pt is the later one
    (2, 2, "best.pt", "last.pt"),  # the same save: last.pt
])
def test_the_checkpoint_with_the_later_step_is_resumed_whatever_the_file_dates(two_epochs, tmp_path, last_epoch,
                                                                                best_epoch, newer, chosen):
    from nin_cli.resume import newest_checkpoint
    from nin_cli.runs import RunPaths

    run = tmp_path / "run"
    arrange(two_epochs, run, last_epoch, best_epoch, newer)
    path, record = newest_checkpoint(RunPaths(run))
    assert path == run / "checkpoints" / chosen
    assert record["state"]["epoch"] == max(last_epoch, best_epoch) == 2
    assert record["state"]["step"] == 10  # FAST: 5 steps per epoch


def test_a_touched_best_checkpoint_does_not_roll_the_run_back(nin, two_epochs, tmp_path):
    run = tmp_path / "run"
    arrange(two_epochs, run, 2, 1, "best.pt")
    rows = (run / "metrics.jsonl").read_text().splitlines()
    result = nin("train", "trainer.epochs=3", "trainer.keep_last=0", f"hydra.run.dir={run}")
    assert result.code == 0, result.err
    assert f"resuming from {run / 'checkpoints' / 'last.pt'} at epoch 3, step 10" in result.err
    after = (run / "metrics.jsonl").read_text().splitlines()
    assert after[:2] == rows and len(after) == 3  # epochs 1-2 kept as they were, epoch 3 added
    assert load_checkpoint(run / "checkpoints" / "last.pt")["state"]["step"] == 15
