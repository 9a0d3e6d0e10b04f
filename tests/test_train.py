from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import FAST
from nin_cli.config import ScheduleConfig
from nin_cli.overrides import load_config
from nin_cli.schedule import build_optimizer, lr_multiplier, update_plateau
from nin_cli.state import TrainState
from test_resume import restore_torch_threads  # noqa: F401  (autouse: in-process runs set torch's threads)

ONE_THREAD = "trainer.num_threads=1"  # on a shared 2-core machine, OpenMP threads spinning cost far more than they give


def test_train_writes_the_whole_run_directory(nin, tmp_path):
    run = tmp_path / "run"
    result = nin("train", "dataset=synthetic", "trainer.epochs=1", "trainer.progress=plain", ONE_THREAD,
                 "trainer.max_steps_per_epoch=2", f"hydra.run.dir={run}")
    assert result.code == 0, result.err
    for name in (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "config.yaml",
                 "provenance.json", "train.log", "metrics.jsonl", "summary.json", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    assert "epoch 1/1" in (run / "train.log").read_text()
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["versions"]["torch"] and provenance["device"] == "cpu" and "start_time" in provenance
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["epoch"] == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["params"] == 966_986 and 0 <= summary["test_error"] <= 100

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("epoch/train_loss", "epoch/val_error", "epoch/lr", "epoch/images_per_s", "step/loss"):
        assert tag in tags, tags
    assert events.Scalars("epoch/train_loss")[0].value == pytest.approx(rows[0]["train_loss"], rel=1e-5)


def test_training_learns_and_resumes_into_the_same_directory(nin, tmp_path):
    run = tmp_path / "run"
    first = nin("train", *FAST, ONE_THREAD, "trainer.epochs=2", f"hydra.run.dir={run}")
    assert first.code == 0, first.err
    second = nin("train", "trainer.epochs=4", f"hydra.run.dir={run}")  # the run's own overrides are replayed
    assert second.code == 0, second.err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert len(json.loads((run / "provenance.json").read_text())["resumes"]) == 1


def test_param_groups_follow_the_paper():
    from nin_cli.model import build_model

    cfg = load_config([])
    net = build_model(cfg.model, cfg.head, [3, 32, 32], 10)
    optimizer = build_optimizer(net, cfg.optim)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    layers = dict(net.named_layers())
    assert lr_of[id(layers["conv1"].weight)] == (0.1, 1e-4)
    assert lr_of[id(layers["conv1"].bias)] == (0.2, 0.0)
    assert lr_of[id(layers["cccp6"].weight)] == pytest.approx((0.01, 1e-4))
    assert lr_of[id(layers["cccp6"].bias)] == pytest.approx((0.02, 0.0))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(net.parameters()))


def test_schedules():
    milestones = ScheduleConfig(name="milestones", milestones=[200, 230], gamma=0.1)
    assert [lr_multiplier(milestones, e, 260) for e in (0, 199.9, 200, 229, 230, 259)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    cosine = ScheduleConfig(name="cosine")
    assert lr_multiplier(cosine, 0, 10) == 1 and lr_multiplier(cosine, 5, 10) == pytest.approx(0.5)
    assert lr_multiplier(cosine, 10, 10) == pytest.approx(0)
    onecycle = ScheduleConfig(name="onecycle", pct_start=0.25)
    assert lr_multiplier(onecycle, 1.25, 10) == pytest.approx(0.5)
    assert lr_multiplier(onecycle, 2.5, 10) == pytest.approx(1)
    assert lr_multiplier(onecycle, 10, 10) == pytest.approx(0)
    warm = ScheduleConfig(name="constant", warmup_epochs=2)
    assert lr_multiplier(warm, 1, 10) == pytest.approx(0.5) and lr_multiplier(warm, 3, 10) == 1


def test_paper_plateau_rule_on_a_scripted_accuracy_curve():
    cfg = ScheduleConfig(name="paper_plateau", patience=2, max_drops=2, gamma=0.1)
    state = TrainState()
    curve = [0.1, 0.2, 0.3, 0.3, 0.3, 0.4, 0.5, 0.5, 0.5, 0.6, 0.6, 0.6]
    scales, stops = [], []
    for accuracy in curve:
        stops.append(update_plateau(state, cfg, accuracy))
        scales.append(state.lr_scale)
    assert scales == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.01])
    assert stops == [False] * 11 + [True]


def test_non_finite_loss_exits_5(nin, tmp_path):
    run = tmp_path / "run"
    result = nin("train", *FAST, ONE_THREAD, "optim=sgd", "optim.lr=1e30", f"hydra.run.dir={run}")
    assert result.code == 5, result.err
    assert "diverged" in result.err and len(result.err_lines) == 1
    assert not (run / "checkpoints" / "last.pt").exists()


def test_make_demo_recipe_reaches_90_percent_on_digits(nin, tmp_path):
    run = tmp_path / "demo"
    result = nin("train", "experiment=demo_digits", "trainer.progress=plain", ONE_THREAD, f"hydra.run.dir={run}")
    assert result.code == 0, result.err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_error"] <= 10.0, summary
    assert summary["dataset"] == "digits" and math.isfinite(summary["best_val_error"])
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["data"]["classes"][3] == "3"
