from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, run_subprocess
from nin_cli.config import block_widths, to_config
from nin_cli.errors import ConfigError
from nin_cli.overrides import compose, group_options, load_config


def test_default_is_the_papers_cifar10_nin():
    cfg = load_config([])
    assert cfg.dataset.name == "cifar10" and cfg.dataset.preprocessing == "gcn_zca"
    assert [b.widths for b in cfg.model.blocks] == [[192, 160, 96], [192, 192, 192], [192, 192, None]]
    assert cfg.head.type == "gap" and cfg.optim.lr == 0.1 and cfg.optim.bias_lr_mult == 2.0
    assert cfg.trainer.batch_size == 128 and cfg.optim.momentum == 0.9


def test_overrides_reach_the_typed_config():
    cfg = load_config(["dataset=cifar100", "model.micro_depth=3", "optim.lr=0.05", "head=fc_dropout"])
    assert (cfg.dataset.num_classes, cfg.model.micro_depth, cfg.optim.lr, cfg.head.type) == (100, 3, 0.05,
                                                                                             "fc_dropout")


@pytest.mark.parametrize("name", group_options("experiment"))
def test_every_experiment_composes(name):
    cfg = load_config([f"experiment={name}"])
    assert cfg.experiment == name.split("/")[-1] or cfg.experiment == name


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.micro_dept=3", "did you mean 'model.micro_depth'"),
        ("trainer.epochs=abc", "trainer.epochs='abc': expected an integer"),
        ("optim.lr=-1", "optim.lr=-1.0: out of range"),
        ("dataset=nope", "dataset=nope: no such option"),
        ("head=gapp", "did you mean 'head=gap'"),
        ("trainer.device=tpu", "must be one of auto, cpu, cuda, mps"),
        ("model.dropout=1.5", "out of range, allowed [0, 1]"),
        ("+model.foo=1", "unknown config key 'model.foo'"),
        ("trainer.batch_size=0", "trainer.batch_size=0: out of range"),
        ("model.blocks.0.pool=sum", "must be one of max, avg, none"),
        ("trainer.channels_last=maybe", "expected true or false"),
        ("optim.lr=0.1,0.2", "nin sweep"),
        ("epochs", "not an override"),
    ],
)
def test_bad_overrides_exit_2_with_one_line(nin, override, needle):
    result = nin("train", override)
    assert result.code == 2, result.err
    assert len(result.err_lines) == 1, result.err
    assert needle in result.err
    assert "Traceback" not in result.err + result.out


def test_config_errors_come_back_before_torch_is_imported(tmp_path):
    code = ("import sys, atexit; atexit.register(lambda: print('torch-imported', 'torch' in sys.modules, "
            "file=sys.stderr)); sys.argv = ['nin', 'train', 'trainer.epochs=abc']; "
            "from nin_cli.cli import main; main()")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "torch-imported False" in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_console_script_module_entry(tmp_path):
    result = run_subprocess("info", "--json", "dataset=mnist", "model=nin_mnist", cwd=tmp_path)
    assert result.code == 0, result.err
    assert result.json()["params"] == 349_674


def test_block_widths_extend_and_truncate_predictably():
    assert block_widths([192, 160, 96], None) == [192, 160, 96]
    assert block_widths([192, 160, 96], 2) == [192, 160, 96]
    assert block_widths([192, 160, 96], 3) == [192, 160, 160, 96]
    assert block_widths([192, 160, 96], 1) == [192, 96]
    assert block_widths([192, 160, 96], 0) == [96]
    assert block_widths([192, None], 3) == [192, 192, 192, None]


def test_to_config_rejects_wrong_nested_types():
    node = compose([])
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(node)
    raw["model"]["blocks"][0]["widths"] = "wide"
    with pytest.raises(ConfigError, match="model.blocks\\[0\\].widths"):
        to_config(raw)


def test_conf_dir_is_the_repo_conf(monkeypatch):
    from nin_cli.overrides import config_dir

    monkeypatch.delenv("NIN_CONFIG_DIR", raising=False)
    assert Path(__file__).resolve().parents[1] == REPO
    assert config_dir().resolve() == (REPO / "conf").resolve()  # the editable install reads the checkout's conf/
    assert (config_dir() / "config.yaml").is_file()
    monkeypatch.setenv("NIN_CONFIG_DIR", "/elsewhere/conf")
    assert config_dir() == Path("/elsewhere/conf")
