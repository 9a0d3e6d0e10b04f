"""A recipe given in seconds: `schedule.by_time=true` with `trainer.max_time` anneals cosine / onecycle to their floor
at the deadline (progress = the share of the budget spent, resumes included), ends inside the budget, records the
epochs it got, and continues after a SIGTERM or with a larger budget."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import nin_cli.schedule as schedule
from conftest import signal_at_step
from nin_cli.config import ScheduleConfig
from nin_cli.overrides import load_config
from nin_cli.schedule import lr_multiplier, step_multipliers
from nin_cli.state import TrainState

BUDGET = 8.0  # seconds: the 60-second run, shrunk for the suite
# The offline digits demo (its small batch-norm NIN on 8×8 images): each step is short against the budget, so the
# run stops close to its deadline. trainer.epochs is only a cap under by_time.
RUN = ["experiment=demo_digits", "trainer.num_threads=1", "trainer.epochs=10000", "trainer.progress=plain",
       "schedule.by_time=true"]


def final_mult(run: Path) -> float:
    """The lr factor of the last step taken: the weights' lr over their base lr, as last.pt saved them."""
    groups = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    weights = next(g for g in groups if not g["is_bias"])
    return weights["lr"] / weights["base_lr"]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.mark.parametrize("name", ["cosine", "onecycle"])
def test_the_time_share_replaces_epochs_along_the_curve(name):
    cfg = ScheduleConfig(name=name, by_time=True, pct_start=0.25)
    at = {share: lr_multiplier(cfg, 3.0, 100, time_share=share) for share in (0.0, 0.25, 0.5, 0.999, 1.0, 1.5)}
    assert at[1.0] == pytest.approx(0.0, abs=1e-9) and at[1.5] == pytest.approx(0.0, abs=1e-9)
    assert at[0.999] < 0.01 and at[0.25] > at[0.5] > at[0.999]
    if name == "cosine":
        assert at[0.0] == 1.0 and at[0.5] == pytest.approx(0.5)
    else:
        assert at[0.0] == pytest.approx(1e-3) and at[0.25] == pytest.approx(1.0) and at[0.5] == pytest.approx(2 / 3)
    # epochs no longer matter: the same share gives the same lr at epoch 3 of 100 and at epoch 90 of 100
    assert lr_multiplier(cfg, 90.0, 100, time_share=0.5) == at[0.5]


def test_the_lr_is_a_pure_function_of_the_recorded_elapsed_time(monkeypatch):
    cfg = load_config([*RUN, "trainer.max_time=100", "schedule=cosine"])
    spent = {"s": 25.0}
    monkeypatch.setattr(schedule, "elapsed", lambda loop: spent["s"])
    loop = SimpleNamespace(cfg=cfg, state=TrainState(epoch=7, epoch_step=3))
    fresh = SimpleNamespace(cfg=cfg, state=TrainState())  # a resumed process: another epoch, the same elapsed time
    assert step_multipliers(loop, 10) == step_multipliers(fresh, 10)
    assert step_multipliers(loop, 10)[0] == pytest.approx(lr_multiplier(cfg.schedule, 0, 1, time_share=0.25))
    spent["s"] = 100.0
    assert step_multipliers(loop, 10) == (pytest.approx(0.0, abs=1e-9), pytest.approx(0.0, abs=1e-9))


@pytest.mark.parametrize("extra, words", [
    (["schedule=milestones", "trainer.max_time=10"], "schedule=milestones has no time form"),
    (["schedule=cosine"], "set trainer.max_time=SECONDS"),
    (["schedule=cosine", "trainer.max_time=10", "trainer.devices=2"], "runs in one process"),
])
def test_a_time_schedule_without_a_deadline_is_a_config_error(nin, extra, words):
    result = nin("train", *RUN, *extra, "hydra.run.dir=never")
    assert result.code == 2 and words in result.err and len(result.err_lines) == 1, result.err
    assert not Path("never").exists()


def test_a_budgeted_run_ends_inside_its_budget_with_the_lr_at_its_floor(nin, tmp_path):
    run = tmp_path / "run"
    result = nin("train", *RUN, f"trainer.max_time={BUDGET}", f"hydra.run.dir={run}")
    assert result.code == 0, result.err
    done = summary(run)
    assert done["stopped_because"].startswith(f"time limit: trainer.max_time={BUDGET:g} s reached")
    assert BUDGET <= done["wall_time_s"] < BUDGET + 2.0  # the step that crossed the deadline, then the save
    assert done["epochs"] >= 1 and done["steps"] > 20  # the epochs it got, recorded
    assert final_mult(run) < 0.05  # onecycle annealed to its floor (0) at the deadline
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == done["epochs"]  # one curve point per finished epoch; the cut one is in the checkpoint


def test_a_sigtermed_budgeted_run_continues_and_still_ends_at_the_deadline(nin, tmp_path, monkeypatch):
    import nin_cli.train as train

    real_step = train.train_step
    signal_at_step(monkeypatch, 40, signal.SIGTERM)
    run = tmp_path / "run"
    first = nin("train", *RUN, f"trainer.max_time={BUDGET}", f"hydra.run.dir={run}")
    assert first.code == 143, first.err
    spent = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["state"]["elapsed_s"]
    assert 0 < spent < BUDGET and final_mult(run) > 0.2  # stopped early on the curve
    monkeypatch.setattr(train, "train_step", real_step)
    resumed = nin("train", f"hydra.run.dir={run}")
    assert resumed.code == 0, resumed.err
    done = summary(run)
    assert done["stopped_because"].startswith("time limit") and BUDGET <= done["wall_time_s"] < BUDGET + 2.0
    assert done["steps"] > 40 and final_mult(run) < 0.05
    # a run stopped by its budget continues with a larger one: the lr rises to the new curve, then anneals again
    extended = nin("train", f"hydra.run.dir={run}", f"trainer.max_time={BUDGET + 3}")
    assert extended.code == 0, extended.err
    more = summary(run)
    assert more["steps"] > done["steps"] and BUDGET + 3 <= more["wall_time_s"] < BUDGET + 5.0
    assert final_mult(run) < 0.05
