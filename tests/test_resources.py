"""Resources are checked before anything is allocated or written: an absurd dataset size, image shape, width, class
count or sweep grid is exit 2 with one line and no run directory; an unusable output location is exit 2 for every
command that writes one."""

from __future__ import annotations

import time

import pytest

from conftest import FAST

ABSURD = {
    "dataset.size": ["dataset=synthetic", "dataset.size=1e9"],
    "widths": [*FAST, "model.blocks.0.widths=[100000000,16,16]"],
    "image_shape": [*FAST, "dataset.image_shape=[3,1000000,1000000]"],
    "num_classes": [*FAST, "dataset.num_classes=1000000000"],
    "batch_size": ["dataset=imagefolder", "dataset.root=.", "trainer.batch_size=1000000000"],
}


@pytest.mark.parametrize("case", list(ABSURD))
def test_an_absurd_config_is_refused_before_anything_is_built(nin, tmp_path, case):
    start = time.perf_counter()
    result = nin("train", *ABSURD[case])
    assert result.code == 2, result.err
    assert len(result.err_lines) == 1 and "memory" in result.err and "more than 1.0 TiB" in result.err
    assert case.split(".")[-1] in result.err  # names what to change
    assert time.perf_counter() - start < 30  # nothing was built (1e9 labels alone took minutes)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("preset", ["paper_cifar10", "paper_mnist", "paper_svhn", "fast_cifar10_92", "gap_vs_fc/fc"])
def test_the_estimate_counts_the_model_s_own_weights(preset):
    from nin_cli.config import _model_size
    from nin_cli.model import build_model
    from nin_cli.overrides import load_config

    cfg = load_config([f"experiment={preset}"])
    shape, classes = cfg.dataset.image_shape, cfg.dataset.num_classes
    weights = sum(p.numel() for p in build_model(cfg.model, cfg.head, shape, classes).parameters() if p.dim() > 1)
    assert _model_size(cfg.model, cfg.head, shape, classes)[0] == weights


@pytest.mark.parametrize("search", [False, True])
def test_a_sweep_of_more_than_ten_thousand_jobs_is_refused(nin, tmp_path, search):
    from nin_cli.sweep import MAX_JOBS

    trials = ["--trials", "2"] if search else []
    start = time.perf_counter()
    result = nin("sweep", *trials, "--dry-run", *FAST, "trainer.seed=range(0,1000000000)")
    assert result.code == 2, result.err
    assert result.err_lines == [f"nin: error: 'trainer.seed=range(0,1000000000)': the sweep would have more than "
                                f"{MAX_JOBS:,} {'candidate values' if search else 'jobs'}; sweep fewer values"]
    assert time.perf_counter() - start < 30
    grid = nin("sweep", "--dry-run", *FAST, "model.dropout=0,0.5", "trainer.seed=range(0,5001)")  # 2 × 5,001 jobs
    assert grid.code == 2 and "more than 10,000 jobs" in grid.err, grid.err
    assert not (tmp_path / "outputs").exists()


UNUSABLE = {
    "table": lambda bad: ["table", "--out", bad],
    "cam": lambda bad: ["cam", "missing.pt", "--out", bad],
    "sweep": lambda bad: ["sweep", *FAST, "model.dropout=0,0.5", f"hydra.sweep.dir={bad}"],
    "search": lambda bad: ["sweep", "--trials", "2", *FAST, "model.dropout=interval(0,0.5)",
                           f"hydra.sweep.dir={bad}"],
    "train": lambda bad: ["train", *FAST, f"hydra.run.dir={bad}"],
}


@pytest.mark.parametrize("command", list(UNUSABLE))
def test_an_unusable_output_location_is_exit_2_before_any_work(nin, tmp_path, command):
    blocker = tmp_path / "a_file"
    blocker.write_text("canary")
    result = nin(*UNUSABLE[command](str(blocker / "out")))
    assert result.code == 2, result.err
    assert len(result.err_lines) == 1 and f"{blocker} is a file, not a directory" in result.err, result.err
    assert blocker.read_text() == "canary"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # no outputs/, nothing trained
