"""A full disk outside checkpoint saves (metrics.jsonl during training, a plot's PNG) is one line and exit 3 (the
data error it is), never a bug's traceback; what was on disk stays whole."""

from __future__ import annotations

import errno
import json
import os

import pytest

from conftest import FAST


def no_space(path):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_a_full_disk_while_training_is_one_line_and_exit_3(nin, tmp_path, monkeypatch):
    import nin_cli.train

    monkeypatch.setattr(nin_cli.train, "append_metrics", lambda path, row: no_space(path))
    result = nin("train", *FAST, "trainer.num_threads=1", f"hydra.run.dir={tmp_path / 'run'}")
    errors = [line for line in result.err_lines if line.startswith("nin:")]  # beside the epoch's progress line
    assert result.code == 3 and len(errors) == 1, result.err
    assert "no space left on the device writing" in errors[0] and "metrics.jsonl" in errors[0]
    assert "Traceback" not in (tmp_path / "run" / "train.log").read_text()
    assert json.loads((tmp_path / "run" / "provenance.json").read_text())["command"]  # the run's records whole


def test_a_full_disk_stops_the_table_runner_instead_of_marking_rows_no_data(tmp_path, monkeypatch):
    """`nin table --run` records missing data per row and goes on; a full disk is not missing data: every next row
    would meet it too, so it stops there (exit 3) and no row is marked no_data."""
    from nin_cli import reproduce
    from nin_cli.errors import DiskFullError, full_disk

    monkeypatch.setattr(reproduce, "_train", lambda overrides: (_ for _ in ()).throw(
        full_disk(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "x/summary.json"))))
    plans = reproduce.plan("smoke", ["paper_mnist"], None, tmp_path / "runs")
    with pytest.raises(DiskFullError, match="no space left on the device writing x/summary.json"):
        reproduce.run_one(plans[0])
    assert not (plans[0].run_dir / "outcome.json").exists()


def test_a_full_disk_writing_a_plot_is_one_line_and_exit_3(nin, tiny_run, tmp_path, monkeypatch):
    import nin_cli.plots

    monkeypatch.setattr(nin_cli.plots, "atomic_write", lambda path, content, **_: no_space(path))
    result = nin("plot", tiny_run, "--out", tmp_path / "curves.png")
    assert result.code == 3 and len(result.err_lines) == 1, result.err
    assert "No space left on device" in result.err and "curves.png" in result.err
    assert not (tmp_path / "curves.png").exists()


def test_a_full_disk_stops_a_sweep_at_the_first_job(nin, tmp_path, monkeypatch):
    """A sweep records a failed job and goes on; a full disk would fail every next job the same way, so the sweep
    stops at the first (exit 3, one line) instead of marking every job failed."""
    import nin_cli.train

    calls = []
    monkeypatch.setattr(nin_cli.train, "append_metrics", lambda path, row: calls.append(path) or no_space(path))
    result = nin("sweep", *FAST, "trainer.num_threads=1", "optim.lr=0.1,0.05,0.02", f"hydra.sweep.dir={tmp_path / 's'}")
    errors = [line for line in result.err_lines if line.startswith("nin:")]
    assert result.code == 3 and len(errors) == 1 and "no space left on the device" in errors[0], result.err
    assert len(calls) == 1  # the second and third jobs never started
