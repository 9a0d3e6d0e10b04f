"""A shared directory writes nowhere else (README "Reliability"): every writer × a link (or a FIFO) planted in a run or
sweep directory someone else made. Each command is refused with exit 4 and one line naming the entry, before it
writes anything: the canary outside stays byte for byte, the directory too, and nothing hangs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from conftest import FAST

# Every file or folder `nin train` writes in a run directory (Hydra's own included).
RUN_ENTRIES = [".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "train.log", "config.yaml",
               "provenance.json", "metrics.jsonl", "summary.json", "tb", "checkpoints", "checkpoints/last.pt"]


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under root without following links: a file's bytes, a link's target."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[key] = "-> " + os.readlink(path)
        elif path.is_file():
            found[key] = path.read_bytes()
    return found


@pytest.fixture
def shared_run(tiny_run, tmp_path) -> Path:
    run = tmp_path / "shared"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval"))
    return run


@pytest.fixture
def canary(tmp_path) -> Path:
    """A folder outside holding a precious file: what a link points at."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("precious\n")
    return outside


def plant_link(run: Path, entry: str, canary: Path) -> None:
    target = run / entry
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(canary if entry in ("tb", "checkpoints") else canary / "precious", target)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("entry", RUN_ENTRIES)
def test_resuming_a_run_with_a_link_inside_is_refused_and_writes_nothing(nin, shared_run, canary, entry):
    plant_link(shared_run, entry, canary)
    before, outside = snapshot(shared_run), snapshot(canary)
    result = nin("train", f"hydra.run.dir={shared_run}", "trainer.epochs=3")
    assert result.code == 4, result.err
    assert f"{shared_run / entry} is a symbolic link" in result.err_lines[-1]
    assert snapshot(shared_run) == before and snapshot(canary) == outside


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entry", ["metrics.jsonl", "train.log"])
def test_a_fifo_in_a_run_directory_is_refused_without_hanging(nin, shared_run, entry):
    (shared_run / entry).unlink()
    os.mkfifo(shared_run / entry)
    result = nin("train", f"hydra.run.dir={shared_run}", "trainer.epochs=3")
    assert result.code == 4 and f"{shared_run / entry} is a special file" in result.err_lines[-1]


def test_log_and_state_files_are_never_opened_through_a_link(tmp_path, canary):
    from nin_cli.errors import DataError, UnsafeFileError
    from nin_cli.files import atomic_write, open_append, read_json

    link = tmp_path / "train.log"
    os.symlink(canary / "precious", link)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        open_append(link)
    with pytest.raises(DataError, match="symbolic link"):
        read_json(link)
    atomic_write(link, "mine\n")  # a rename replaces the link itself
    assert not link.is_symlink() and link.read_text() == "mine\n"
    assert (canary / "precious").read_text() == "precious\n"
    planted = tmp_path / f".x.json.{os.getpid()}.tmp"  # even a link at the temp name is replaced, not followed
    os.symlink(canary / "precious", planted)
    atomic_write(tmp_path / "x.json", "{}")
    assert (canary / "precious").read_text() == "precious\n" and not planted.exists()


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory) -> Path:
    """Two jobs that the real sweep writer made (one thread each: the machine may be shared)."""
    import logging
    import sys

    from nin_cli.cli import main

    sweep = tmp_path_factory.mktemp("sweep") / "s"
    root = logging.getLogger()
    handlers = list(root.handlers)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(sweep.parent)
        patch.setattr(sys, "argv", ["nin", "sweep", *FAST, "trainer.max_steps_per_epoch=2", "trainer.num_threads=1",
                                    "model.dropout=0,0.5", f"hydra.sweep.dir={sweep}"])
        with pytest.raises(SystemExit) as done:
            main()
    for handler in set(root.handlers) - set(handlers):
        handler.close()
    root.handlers[:] = handlers
    assert done.value.code in (0, None)
    return sweep


@pytest.fixture
def shared_sweep(real_sweep, tmp_path) -> Path:
    sweep = tmp_path / "sweep"
    shutil.copytree(real_sweep, sweep, symlinks=True)
    return sweep


@pytest.mark.parametrize("entry", ["summary.csv", "summary.md", "summary_seeds.csv", "0/summary.json"])
def test_a_sweep_summary_is_never_written_through_a_link(nin, shared_sweep, canary, entry):
    plant_link(shared_sweep, entry, canary)
    outside = snapshot(canary)
    result = nin("sweep", "--summary", shared_sweep)
    assert result.code == 4 and f"{shared_sweep / entry} is a symbolic link" in result.err_lines[-1]
    assert snapshot(canary) == outside


def test_a_sweep_into_a_directory_holding_a_link_is_refused(nin, shared_sweep, canary):
    plant_link(shared_sweep, "multirun.yaml", canary)
    outside = snapshot(canary)
    result = nin("sweep", *FAST, "model.dropout=0,0.5", f"hydra.sweep.dir={shared_sweep}")
    assert result.code == 4 and "multirun.yaml is a symbolic link" in result.err_lines[-1]
    assert snapshot(canary) == outside


def test_a_reason_copied_from_a_job_stays_on_one_line(nin, shared_sweep):
    import csv
    import json

    (shared_sweep / "1" / "failure.json").write_text(json.dumps(
        {"reason": "boom\n$(touch /tmp/owned)\r\nrm -rf ~", "exit_code": 3}))
    result = nin("sweep", "--summary", shared_sweep)
    assert result.code == 0  # --summary reports; only the sweep itself exits with a failed job's code
    text = (shared_sweep / "summary.csv").read_text()
    rows = list(csv.reader(text.splitlines()))
    assert len(rows) == 3 and len(text.splitlines()) == 3  # header + two jobs: no line break inside a cell
    assert rows[2][-1] == "boom $(touch /tmp/owned) rm -rf ~"


@pytest.mark.parametrize("link", ["eval", "checkpoints_cam"])
def test_eval_and_cam_outputs_are_never_written_through_a_link(nin, shared_run, canary, link):
    best = shared_run / "checkpoints" / "best.pt"
    target = shared_run / link if link == "eval" else shared_run / "checkpoints" / "best_cam"
    os.symlink(canary, target)
    outside = snapshot(canary)
    result = nin("eval", best) if link == "eval" else nin("cam", best, "--test", "2")
    assert result.code == 4 and "is a symbolic link" in result.err_lines[-1]
    assert snapshot(canary) == outside
