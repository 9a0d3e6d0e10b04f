"""Paper fidelity: the authors' dynamics in every paper preset, a collapse stopped within steps (and restarted with
the next seed on request, never hidden), the authors' MNIST input, and `nin table --check`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import FAST, REPO
from nin_cli import config
from nin_cli.overrides import load_config

PAPER_PRESETS = sorted(p.relative_to(REPO / "conf" / "experiment").with_suffix("").as_posix()
                       for p in (REPO / "conf" / "experiment").rglob("*.yaml")
                       if p.name.startswith("paper_") or p.parent.name in ("gap_vs_fc", "cnn_gap"))
OTHER_PRESETS = ["demo_digits", "fast_cifar10", "imagenet_nin"]  # imagenet_nin: the Caffe zoo's (inverted) dropout


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_every_paper_preset_trains_the_authors_dynamics(preset):
    cfg = load_config([f"experiment={preset}"])
    assert cfg.model.dropout_style == "classic"
    assert cfg.schedule.drop_bias_lr is False


@pytest.mark.parametrize("preset", OTHER_PRESETS)
def test_other_presets_keep_pytorch_s_inverted_dropout(preset):
    assert load_config([f"experiment={preset}"]).model.dropout_style == "inverted"


def test_there_are_thirteen_paper_presets():
    assert len(PAPER_PRESETS) == 13  # 7 paper_* + 3 gap_vs_fc + 3 cnn_gap


# ------------------------------------------------------------------------------------ a collapse, in steps


def kill_class_maps(monkeypatch, seeds: set[int]) -> None:
    """Put the network of the given seeds into the absorbing state the paper trap describes: every class map
    dead behind the final ReLU (the last 1×1 conv's weights 0, its biases −1), so the loss is exactly ln C and no
    gradient reaches any weight."""
    import nin_cli.train as train

    real_setup = train.setup

    def setup(cfg, *args, **kwargs):
        loop = real_setup(cfg, *args, **kwargs)
        if cfg.trainer.seed in seeds and loop.state.step == 0:
            last = loop.model.last_layer()
            with torch.no_grad():
                last.weight.zero_()
                last.bias.fill_(-1.0)
        return loop

    monkeypatch.setattr(train, "setup", setup)


COLLAPSE = [*FAST, "dataset.size=512", "model.final_relu=true", "trainer.collapse_steps=3", "trainer.log_every=1"]


def test_a_collapse_stops_within_collapse_steps_naming_the_step(nin, tmp_path, monkeypatch):
    kill_class_maps(monkeypatch, {0})
    run = tmp_path / "run"
    result = nin("train", *COLLAPSE, f"hydra.run.dir={run}")
    assert result.code == 5, result.err
    assert len(result.err_lines) == 1
    assert "collapsed at step 1:" in result.err and "trainer.collapse_restarts" in result.err
    assert not (run / "metrics.jsonl").exists()  # stopped inside the first epoch (31 steps), not after epochs
    assert not (run / "summary.json").exists()


def test_a_live_network_never_trips_the_detector(nin, tmp_path):
    result = nin("train", *COLLAPSE, "trainer.collapse_steps=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.code == 0, result.err


def test_a_collapsed_seed_restarts_with_the_next_and_is_recorded(nin, tmp_path, monkeypatch):
    kill_class_maps(monkeypatch, {0})
    run = tmp_path / "run"
    result = nin("train", *COLLAPSE, "trainer.collapse_restarts=2", f"hydra.run.dir={run}")
    assert result.code == 0, result.err
    restarts = json.loads((run / "restarts.json").read_text())
    assert [(r["seed"], r["collapsed_at_step"], r["kept_in"]) for r in restarts] == [(0, 1, "attempts/seed0")]
    assert "training collapsed at step 1" in restarts[0]["reason"] and "\n" not in restarts[0]["reason"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["collapse_restarts"] == restarts
    assert json.loads((run / "provenance.json").read_text())["collapse_restarts"] == restarts
    assert "seed: 1000" in (run / "config.yaml").read_text()  # seed + 1000·k: never another slot's seed
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]  # only the restarted attempt's epoch in the run's own file
    kept = run / "attempts" / "seed0"
    assert (kept / "tb").is_dir() and not (kept / "checkpoints").exists()  # the failed attempt's evidence kept
    again = nin("train", *COLLAPSE, "trainer.collapse_restarts=2", f"hydra.run.dir={run}")
    assert again.code == 0, again.err  # resuming the finished run keeps the record
    assert json.loads((run / "restarts.json").read_text()) == restarts


def test_restarts_are_bounded(nin, tmp_path, monkeypatch):
    kill_class_maps(monkeypatch, {0, 1000, 2000, 3000})
    run = tmp_path / "run"
    result = nin("train", *COLLAPSE, "trainer.collapse_restarts=2", f"hydra.run.dir={run}")
    assert result.code == 5, result.err
    assert result.err_lines[-1].startswith("nin: error: training collapsed at step 1")
    assert "seed 2000 was the last attempt; seeds 0, 1000 collapsed before" in result.err_lines[-1]
    restarts = json.loads((run / "restarts.json").read_text())
    assert [r["seed"] for r in restarts] == [0, 1000]  # seed 2000 collapsed too and was the last try


def test_a_stall_is_never_restarted(nin, tmp_path, monkeypatch):
    """The epoch guard (loss at ln C for whole epochs) stops a run that may only be slow: exit 5, no restart."""
    from nin_cli import train

    monkeypatch.setattr(train, "count_chance_epochs", lambda state, cfg, metrics, classes: True)
    run = tmp_path / "run"
    result = nin("train", *COLLAPSE, "trainer.collapse_restarts=2", "trainer.collapse_steps=0", f"hydra.run.dir={run}")
    assert result.code == 5 and "collapsed to chance" in result.err_lines[-1]
    assert not (run / "restarts.json").exists() and not (run / "attempts").exists()


# ------------------------------------------------------------------------- lr drops and the authors' input


def test_weights_only_lr_drops(nin, tmp_path):
    run = tmp_path / "run"
    result = nin("train", *FAST, "trainer.epochs=2", "schedule=milestones", "schedule.milestones=[1]",
                 "schedule.drop_bias_lr=false", f"hydra.run.dir={run}")
    assert result.code == 0, result.err
    groups = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    for group in groups:
        ratio = group["lr"] / group["base_lr"]
        assert math.isclose(ratio, 1.0 if group["is_bias"] else 0.1), group


def test_mean_image_is_the_authors_provider():
    from nin_cli.data import Split, fit_preprocessing, prepare_split, to_input

    images = torch.randint(0, 256, (50, 1, 6, 6), dtype=torch.uint8)
    split = Split(images, torch.zeros(50, dtype=torch.long))
    cfg = load_config(["dataset=mnist", "dataset.preprocessing=mean_image"]).dataset
    constants = fit_preprocessing(split, cfg, torch.device("cpu"))
    torch.testing.assert_close(constants["mean_image"], images.double().mean(0).float())
    assert prepare_split(split, constants, torch.device("cpu")).images.dtype == torch.uint8  # kept as uint8
    x = to_input(images[:4], constants)
    torch.testing.assert_close(x, images[:4].float() - constants["mean_image"])  # raw pixels − mean, unscaled


def test_unit_mean_image_is_pylearn2_s_unit_scale_minus_the_mean_image():
    from nin_cli.data import Split, fit_preprocessing, prepare_split, to_input

    images = torch.randint(0, 256, (50, 1, 6, 6), dtype=torch.uint8)
    split = Split(images, torch.zeros(50, dtype=torch.long))
    cfg = load_config(["dataset=mnist", "dataset.preprocessing=unit_mean_image"]).dataset
    constants = fit_preprocessing(split, cfg, torch.device("cpu"))
    assert constants["kind"] == "unit_mean_image"
    torch.testing.assert_close(constants["mean_image"], (images.double().mean(0) / 255).float())  # stored ÷255
    assert prepare_split(split, constants, torch.device("cpu")).images.dtype == torch.uint8
    x = to_input(images[:4], constants)
    torch.testing.assert_close(x, images[:4].float() / 255 - constants["mean_image"])  # [0, 1] − mean
    assert x.abs().max() <= 1.0 and x.mean().abs() < 0.1


def test_the_paper_mnist_preset_uses_the_authors_input_and_no_warm_up():
    cfg = load_config(["experiment=paper_mnist"])
    assert cfg.dataset.preprocessing == "unit_mean_image"  # [0, 1] − the mean image, as pylearn2 fed the authors
    assert cfg.schedule.warmup_epochs == 0  # the authors' recipe from the first step
    assert config.TrainerConfig().collapse_steps > 0  # the absorbing-state guard is on by default


# ----------------------------------------------------------------------------------- the table runner


def test_the_cpu_budget_plans_two_seeds_of_mnist_with_restarts(tmp_path):
    from nin_cli.reproduce import plan

    runs = plan("cpu", ["paper_mnist"], None, tmp_path)
    assert [r.seed for r in runs] == [0, 1] and [r.run_dir.name for r in runs] == ["seed0", "seed1"]
    for run in runs:
        assert "trainer.epochs=28" in run.overrides and f"trainer.seed={run.seed}" in run.overrides
        assert "schedule.milestones=[22,25]" in run.overrides and "trainer.collapse_restarts=2" in run.overrides
        assert run.meta["comparable"] and run.meta["data_tag"] == "official"  # MNIST at cpu: the documented one
        load_config([o for o in run.overrides if not o.startswith("hydra.")])  # a valid config
    (one,) = plan("cpu", ["paper_mnist"], None, tmp_path, seeds=[1])  # `nin table --run --seeds 1`
    assert one.seed == 1 and one.run_dir == runs[1].run_dir


def planned_and_run(tmp_path: Path, monkeypatch, budget: str, row: str, error: float,
                    jpeg: Path | None = None) -> Path:
    """One run of the real planner, written by the real `run_one` (reproduce.json), with training replaced by a
    summary.json holding `error`: the run directory exactly as `nin table --run` leaves it."""
    from nin_cli import reproduce
    from nin_cli.runs import write_json

    run = reproduce.plan(budget, [row], jpeg, tmp_path / "runs")[0]

    def train(overrides):
        summary = {"experiment": row, "test_error": error, "epochs": 12, "wall_time_s": 60.0, "device": "cpu",
                   "seed": run.seed}
        write_json(run.run_dir / "summary.json", summary)
        return summary

    monkeypatch.setattr(reproduce, "_train", train)
    assert reproduce.run_one(run)[0] == "done"
    return run.run_dir


def test_table_check_ignores_a_12_epoch_jpeg_cifar10_run_at_the_cpu_budget(nin, tmp_path, monkeypatch):
    """The planner's own record of a lossy, shortened run: labelled not comparable, so a bad error fails nothing."""
    run = planned_and_run(tmp_path, monkeypatch, "cpu", "paper_cifar10", 60.0, jpeg=tmp_path / "jpeg")
    meta = json.loads((run / "reproduce.json").read_text())
    assert "trainer.epochs=12" in meta["overrides"] and meta["data_tag"] == "cifar10-jpeg"
    assert meta["comparable"] is False and "lossy" in meta["why_not"] and "cpu budget" in meta["why_not"]
    result = nin("table", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--check")
    assert result.code == 0, result.err
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| 60.00 | +49.59 | 1 | 12 |" in table and "not comparable (the lossy CIFAR-10 JPEG copy" in table


def test_table_check_fails_a_comparable_mnist_row_on_the_official_files(nin, tmp_path, monkeypatch):
    planned_and_run(tmp_path, monkeypatch, "cpu", "paper_mnist", 0.95)
    result = nin("table", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--check")
    assert result.code == 6, result.err
    assert len(result.err_lines) == 1 and "paper_mnist (cpu, MNIST (official files))" in result.err
    assert "not reproduced: worse by 0.48" in result.err
    assert (tmp_path / "out" / "table.md").exists()  # the table is still written


@pytest.mark.parametrize("budget", ["short", "smoke"])
def test_table_check_ignores_mnist_at_budgets_whose_schedule_is_not_documented(nin, tmp_path, monkeypatch, budget):
    planned_and_run(tmp_path, monkeypatch, budget, "paper_mnist", 0.95)
    result = nin("table", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--check")
    assert result.code == 0, result.err
