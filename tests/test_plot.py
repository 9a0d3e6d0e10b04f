"""`plot_runs` on fabricated run and sweep directories: seed bands (numbers), minutes, the PNG, bad input."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from nin_cli.errors import ConfigError, DataError
from nin_cli.plots import band, default_plot_path, expand_runs, group_curves, plot_runs, read_curve


def fake_run(run: Path, *, dropout: float = 0.5, seed: int = 0, losses: list[float] = (2.0, 1.5, 1.0),
             val_errors: list[float | None] | None = None, lrs: list[float] | None = None,
             epoch_time_s: float = 60.0, job: bool = False, resume: str | None = None, epochs: int = 3) -> Path:
    """A run directory with config.yaml and metrics.jsonl (one line per epoch); `job`: as a sweep job (.hydra/)."""
    run.mkdir(parents=True)
    if job:
        (run / ".hydra").mkdir()
        (run / ".hydra" / "overrides.yaml").write_text(f"- model.dropout={dropout}\n- trainer.seed={seed}\n")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"dropout": dropout, "name": "nin_small"},
                                                     "trainer": {"seed": seed, "epochs": epochs},
                                                     "resume": resume}))
    val_errors = val_errors or [50.0 - 10 * i for i in range(len(losses))]
    lrs = lrs or [0.1] * len(losses)
    with open(run / "metrics.jsonl", "w") as f:
        for i, (loss, val, lr) in enumerate(zip(losses, val_errors, lrs, strict=True)):
            f.write(json.dumps({"epoch": i + 1, "step": 10 * (i + 1), "lr": lr, "train_loss": loss,
                                "train_accuracy": 0.5, "val_loss": 1.0, "val_error": val, "images_per_s": 900.0,
                                "epoch_time_s": epoch_time_s * (i + 1)}) + "\n")
    return run


@pytest.fixture
def sweep(tmp_path) -> Path:
    """Two dropouts × three seeds; the 0.5 group's seed 2 stopped after two epochs; job 6 never finished an epoch."""
    root = tmp_path / "sweep"
    for seed, losses in enumerate(([2.0, 1.0, 0.5], [2.2, 1.2, 0.7], [2.4, 1.4, 0.9])):
        fake_run(root / str(seed), dropout=0.0, seed=seed, losses=losses, epoch_time_s=60.0 * (seed + 1), job=True)
    for seed, losses in enumerate(([2.0, 1.6, 1.2], [2.0, 1.8, 1.4], [2.0, 2.0])):
        fake_run(root / str(3 + seed), dropout=0.5, seed=seed, losses=losses, job=True)
    (root / "6" / ".hydra").mkdir(parents=True)
    (root / "6" / ".hydra" / "overrides.yaml").write_text("- model.dropout=0.9\n- trainer.seed=0\n")
    return root


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_seed_groups_and_their_band_numbers(sweep):
    curves = [read_curve(run) for run in expand_runs([sweep])]
    assert [c.path.name for c in curves] == ["0", "1", "2", "3", "4", "5"]  # job 6 has no epoch yet
    groups = group_curves(curves)
    assert [[c.path.name for c in g.curves] for g in groups] == [["0", "1", "2"], ["3", "4", "5"]]
    assert [g.label for g in groups] == ["model.dropout=0.0", "model.dropout=0.5"]
    assert [g.seeds for g in groups] == ["3 seeds (0, 1, 2)"] * 2

    xs, means, stds = band(groups[0], "train_loss", "epoch")
    assert xs == [1.0, 2.0, 3.0]
    assert means == pytest.approx([2.2, 1.2, 0.7])
    assert stds == pytest.approx([0.2, 0.2, 0.2])  # sample std over seeds, as the paper table's
    xs, means, stds = band(groups[1], "train_loss", "epoch")
    assert means == pytest.approx([2.0, 1.8, 1.3])  # epoch 3: the two seeds that reached it
    assert stds[:2] == pytest.approx([0.0, statistics.stdev([1.6, 1.8, 2.0])])
    assert stds[2] == pytest.approx(statistics.stdev([1.2, 1.4]))
    _, val_means, _ = band(groups[0], "val_error", "epoch")
    assert val_means == pytest.approx([50.0, 40.0, 30.0])


def test_minutes_accumulate_epoch_times(sweep):
    curve = read_curve(sweep / "1")  # epoch_time_s 120, 240, 360
    assert curve.minutes == pytest.approx([2.0, 6.0, 12.0])
    group = group_curves([read_curve(sweep / str(i)) for i in range(3)])[0]
    xs, means, _ = band(group, "train_loss", "minutes")
    assert xs == pytest.approx([2.0, 6.0, 12.0])  # seeds at 1, 2 and 3 min per step: their mean time per epoch
    assert means == pytest.approx([2.2, 1.2, 0.7])


def test_plot_writes_a_png_of_runs_and_sweeps(sweep, tmp_path):
    single = fake_run(tmp_path / "single", dropout=0.25, losses=[1.9, 1.1], lrs=[0.1, 0.01])
    out = plot_runs([sweep, single], tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png" and out.is_file()
    width, height = png_size(out)
    assert width == 1500 and 400 <= height <= 700
    with Image.open(out) as image:
        assert len(image.convert("RGB").getcolors(1_000_000)) > 100  # curves, bands, text: not a blank canvas
    assert sorted(p.name for p in out.parent.iterdir()) == ["curves.png"]  # no temp file left

    first = out.read_bytes()
    again = plot_runs([sweep], out, x="minutes")  # replaced whole
    assert again == out and out.read_bytes() != first and png_size(out)[0] == 1500


def test_one_run_of_one_epoch_without_validation(tmp_path):
    run = fake_run(tmp_path / "run", losses=[2.3], val_errors=[None])
    out = plot_runs([run], default_plot_path([run]))
    assert out == run / "curves.png" and png_size(out)[0] == 1500
    curve = read_curve(run)
    assert curve.epochs == [1] and math.isnan(curve.values["val_error"][0])
    assert default_plot_path([run, run]) == Path("curves.png")


def test_resume_and_seed_do_not_split_a_group(tmp_path):
    a = fake_run(tmp_path / "a", seed=0)
    b = fake_run(tmp_path / "b", seed=1, resume=str(tmp_path / "b" / "checkpoints" / "last.pt"))
    c = fake_run(tmp_path / "c", seed=0, dropout=0.1)
    groups = group_curves([read_curve(p) for p in (a, b, c)])
    assert [[cv.path.name for cv in g.curves] for g in groups] == [["a", "b"], ["c"]]
    assert [g.label for g in groups] == ["model.dropout=0.5 — mean ± std of 2 seeds (0, 1)", "model.dropout=0.1"]


def test_bad_input_exits_with_one_line(tmp_path):
    run = fake_run(tmp_path / "run")
    with pytest.raises(ConfigError) as err:
        plot_runs([run], tmp_path / "x.png", x="steps")
    assert err.value.exit_code == 2 and "--x steps: must be one of epoch, minutes" in str(err.value)

    cases = []
    missing = tmp_path / "empty"
    missing.mkdir()
    cases.append(([missing], f"{missing}: no metrics.jsonl there"))
    cases.append(([tmp_path / "nope"], f"{tmp_path / 'nope'}: no such run or sweep directory"))
    broken = fake_run(tmp_path / "broken")
    with open(broken / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "train_loss"\n')
    cases.append(([broken], f"{broken / 'metrics.jsonl'}: line 4 is not JSON"))
    listy = fake_run(tmp_path / "listy")
    (listy / "metrics.jsonl").write_text("[1, 2]\n")
    cases.append(([listy], f"{listy / 'metrics.jsonl'}: line 1 is not an epoch's row"))
    empty = fake_run(tmp_path / "emptymetrics")
    (empty / "metrics.jsonl").write_text("\n")
    cases.append(([empty], "metrics.jsonl: missing or empty (no epoch finished"))
    for paths, needle in cases:
        with pytest.raises(DataError) as err:
            plot_runs(paths, tmp_path / "x.png")
        assert err.value.exit_code == 3 and needle in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert not (tmp_path / "x.png").exists()

    blocker = tmp_path / "afile"
    blocker.write_text("")
    with pytest.raises(DataError) as err:
        plot_runs([run], blocker / "curves.png")
    assert err.value.exit_code == 3 and "cannot write the plot" in str(err.value)


def test_a_hostile_config_is_data_never_code(tmp_path):
    run = fake_run(tmp_path / "run")
    canary = tmp_path / "canary"
    (run / "config.yaml").write_text(f"trainer: !!python/object/apply:os.system ['touch {canary}']\n")
    with pytest.raises(DataError) as err:
        plot_runs([run], tmp_path / "x.png")
    assert err.value.exit_code == 3 and "config.yaml: not valid YAML" in str(err.value)
    assert not canary.exists()


def test_matplotlib_is_imported_only_to_draw():
    code = "import sys, nin_cli.plots, nin_cli.compare; print('matplotlib' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
