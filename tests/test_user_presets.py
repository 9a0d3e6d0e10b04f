"""User presets: NIN_CONFIG_PATH adds folders laid out like conf/ (README, "Your own presets"). Every command that
composes accepts their options; provenance.json says where each came from; a run directory never adds a folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO

MINE = """# @package _global_
defaults:
  - override /dataset: synthetic
  - override /model: tiny_mine
experiment: mine
dataset: {image_shape: [3, 8, 8], size: 64, val_size: 16}
trainer: {batch_size: 16, epochs: 1, max_steps_per_epoch: 2, num_threads: 1, progress: none, device: cpu}
"""


@pytest.fixture
def presets(tmp_path, monkeypatch) -> Path:
    """experiment/mine.yaml and model/tiny_mine.yaml (a copy of nin_small) in a folder on NIN_CONFIG_PATH."""
    folder = tmp_path / "presets"
    (folder / "experiment").mkdir(parents=True)
    (folder / "model").mkdir()
    (folder / "experiment" / "mine.yaml").write_text(MINE)
    model = yaml.safe_load((REPO / "conf" / "model" / "nin_small.yaml").read_text())
    (folder / "model" / "tiny_mine.yaml").write_text(yaml.safe_dump({**model, "name": "tiny_mine"}))
    monkeypatch.setenv("NIN_CONFIG_PATH", str(folder))
    return folder


def sources(run: Path) -> dict:
    return json.loads((run / "provenance.json").read_text())["config_sources"]


def test_info_lists_and_composes_user_options(nin, presets):
    result = nin("info", "experiment=mine", "--json")
    assert result.code == 0, result.err
    assert result.json()["params"] == nin("info", "model=nin_small", "dataset=synthetic",
                                          "dataset.image_shape=[3,8,8]", "--json").json()["params"]
    bad = nin("info", "experiment=mien")
    assert bad.code == 2 and "did you mean 'experiment=mine'" in bad.err_lines[-1]


def test_train_records_where_each_option_came_from_and_a_resume_needs_the_folder_again(nin, presets, tmp_path,
                                                                                     monkeypatch):
    run = tmp_path / "run"
    assert nin("train", "experiment=mine", f"hydra.run.dir={run}").code == 0
    recorded = sources(run)
    assert recorded["config_path"] == [str(presets)]
    mine = presets / "experiment" / "mine.yaml"
    assert recorded["options"]["experiment"] == {"option": "mine", "file": str(mine),
                                                 "sha256": hashlib.sha256(mine.read_bytes()).hexdigest()}
    assert recorded["options"]["model"]["option"] == "tiny_mine" and "dataset" not in recorded["options"]
    assert "searchpath" not in (run / ".hydra" / "overrides.yaml").read_text()

    monkeypatch.delenv("NIN_CONFIG_PATH")  # a shared run directory cannot bring its folder along
    refused = nin("train", f"hydra.run.dir={run}", "trainer.epochs=2")
    assert refused.code == 4 and "no such experiment option in conf/ or $NIN_CONFIG_PATH" in refused.err_lines[-1]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # nothing ran
    monkeypatch.setenv("NIN_CONFIG_PATH", str(presets))
    resumed = nin("train", f"resume={run}", "trainer.epochs=2")
    assert resumed.code == 0, resumed.err
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_run_directory_cannot_add_a_search_path(nin, presets, tmp_path):
    run = tmp_path / "run"
    assert nin("train", "experiment=mine", f"hydra.run.dir={run}").code == 0
    overrides = run / ".hydra" / "overrides.yaml"
    overrides.write_text(yaml.safe_dump([f"hydra.searchpath=[file://{tmp_path / 'evil'}]", "experiment=mine"]))
    result = nin("train", f"hydra.run.dir={run}", "trainer.epochs=2")
    assert result.code == 4 and "refused override 'hydra.searchpath" in result.err_lines[-1]


def test_sweep_grid_and_search_and_table_accept_user_options(nin, presets, tmp_path):
    sweep = tmp_path / "sweep"
    result = nin("sweep", "experiment=mine", "head=gap,fc", f"hydra.sweep.dir={sweep}")
    assert result.code == 0, result.err
    for job in ("0", "1"):
        assert sources(sweep / job)["options"]["experiment"]["option"] == "mine"
    planned = nin("sweep", "--trials", "2", "experiment=mine", "optim.lr=interval(0.01,0.1)", "--dry-run")
    assert planned.code == 0 and "2 configs checked" in planned.out, planned.err
    table = nin("table", str(sweep), "--out", str(tmp_path / "table"))
    assert table.code == 0, table.err


def test_a_search_trial_finds_the_folder_too(nin, presets, tmp_path):
    search = tmp_path / "search"
    result = nin("sweep", "--trials", "1", "experiment=mine", "optim.lr=interval(0.01,0.1)",
                 f"hydra.sweep.dir={search}")
    assert result.code == 0, result.err
    assert sources(search / "0")["options"]["model"]["option"] == "tiny_mine"


def test_a_folder_that_is_not_there_is_exit_2(nin, tmp_path, monkeypatch):
    monkeypatch.setenv("NIN_CONFIG_PATH", str(tmp_path / "nowhere"))
    result = nin("info", "experiment=demo_digits")
    assert result.code == 2 and result.err_lines[-1] == (f"nin: error: NIN_CONFIG_PATH: {tmp_path / 'nowhere'} is "
                                                         "not a directory; give folders laid out like conf/ "
                                                         "(experiment/NAME.yaml, model/NAME.yaml, ...)")
