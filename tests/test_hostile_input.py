"""Every anticipated mistake on the command line or in a config file: exit 2, at most 3 lines, no traceback.

The cases are generated from the config schema (a near-miss of every key, a wrong type, an out-of-range value and
a wrong choice per group, ...) plus broken YAML files, and run through the real CLI in-process. Bugs are the other
side: exit 1 and one line naming the file that holds the traceback.
"""

from __future__ import annotations

import shutil
import typing
from dataclasses import fields

import pytest

from conftest import REPO
from nin_cli import config

GROUPS = {"dataset": config.DatasetConfig, "model": config.ModelConfig, "head": config.HeadConfig,
          "optim": config.OptimConfig, "schedule": config.ScheduleConfig, "trainer": config.TrainerConfig}
WRONG = {int: "lots", float: "fast", bool: "maybe"}


def base_type(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 and typing.get_origin(tp) is not list else tp


def near_miss_cases() -> list[tuple[list[str], str]]:
    """Every key of ten letters or more, and each group's longest, with one letter dropped: answered with the key
    it was meant to be."""
    cases = []
    for group, cls in GROUPS.items():
        longest = max((f.name for f in fields(cls)), key=len)
        for name in [f.name for f in fields(cls) if len(f.name) >= 10 or f.name == longest]:
            typo = name[:len(name) // 2] + name[len(name) // 2 + 1:]
            cases.append(([f"{group}.{typo}=1"], f"did you mean '{group}.{name}'?"))
    return cases


def value_cases() -> list[tuple[list[str], str]]:
    """Per group, the first field of each sort: a wrong type, a value below and above the range, a near miss of
    a choice."""
    cases = []
    for group, cls in GROUPS.items():
        hints, done = typing.get_type_hints(cls), set()
        for f in fields(cls):
            tp, key, meta = base_type(hints[f.name]), f"{group}.{f.name}", f.metadata
            if tp in WRONG and "type" not in done and "choices" not in meta:
                cases.append(([f"{key}={WRONG[tp]}"], f"{key}='{WRONG[tp]}': expected"))
            if meta.get("lo") is not None and "lo" not in done:
                cases.append(([f"{key}={meta['lo'] - 1}"], "out of range"))
            if meta.get("hi") is not None and "hi" not in done:
                cases.append(([f"{key}={meta['hi'] + 1}"], "out of range"))
            if "choices" in meta and "choices" not in done:
                cases.append(([f"{key}={meta['choices'][0]}x"], f"did you mean '{meta['choices'][0]}'?"))
            done |= {"type"} if tp in WRONG and "choices" not in meta else set()
            done |= {k for k in ("lo", "hi", "choices") if meta.get(k) is not None}
    return cases


GROUP_OPTIONS = [([f"{group}={option[:-1]}"], f"did you mean '{group}={option}'?") for group, option in
                 [("dataset", "cifar10"), ("model", "nin_small"), ("head", "fc_dropout"), ("optim", "adamw"),
                  ("schedule", "cosine"), ("trainer", "default"), ("experiment", "demo_digits")]]
OTHER_CASES = [
    (["trainer.epochs=???"], "trainer.epochs is missing (???)"),
    (["optim.lr=???"], "optim.lr is missing (???)"),
    (["resume=???"], "resume is missing (???)"),
    (["trainer.epochs=null"], "trainer.epochs is missing"),
    (["+trainer.foo=1"], "unknown config key 'trainer.foo'"),
    (["+foo=1"], "unknown config key 'foo'"),
    (["++optim.nope=1"], "unknown config key 'optim.nope'"),
    (["+model.blocks.0.poool=max"], "did you mean 'model.blocks[0].pool'?"),
    (["+experiment=demo_digits"], "write experiment=demo_digits (no '+')"),
    (["trainr.epochs=1"], "did you mean 'trainer.epochs'?"),
    (["modle.dropout=0.1"], "did you mean 'model.dropout'?"),
    (["trainer.epochs=[1,2"], "bad override"),
    (["trainer..epochs=1"], "bad override"),
    (["trainer.epochs=1)"], "bad override"),
    (["trainer.epochs='abc"], "bad override"),
    (["trainer.epochs=1=2"], "bad override"),
    (["=5"], "bad override"),
    (["dataset="], "dataset"),
    (["trainer.epochs"], "not an override"),
    (["~trainer.epochs"], "not an override"),
    (["--epochs=3"], "unknown option '--epochs=3'"),
    (["-x"], "unknown option '-x'"),
    (["optim.lr=0.1,0.2"], "nin sweep"),
    (["trainer.epochs=range(1,3)"], "nin sweep"),
    (["hydra.run.dir="], "hydra.run.dir is empty"),
    (["hydra.job.chdir=maybe"], "not a valid bool"),
    (["hydra.foo=1"], "unknown config key 'hydra.foo'"),
    (["trainer.epochs=${oops}"], "could not be resolved"),
    (["trainer.epochs=${trainer.epochs}"], "could not be resolved"),
    (["model.dropout=nan"], "expected a finite number"),
    (["optim.lr=inf"], "expected a finite number"),
    (["model.blocks.9.pool=max"], "bad override"),
    (["model.blocks.0=5"], "expected a mapping"),
    (["model.blocks=[]"], "model.blocks is empty"),
    (["model.blocks.0.widths=[0]"], "widths must be >= 1"),
    (["model.init_std_overrides.conv1=abc"], "model.init_std_overrides.conv1='abc': expected a number"),
    (["dataset.image_shape=[3,8]"], "expected [channels, height, width]"),
    (["optim.betas=[0.9]"], "expected two numbers"),
    (["schedule.milestones=[a]"], "schedule.milestones[0]='a': expected an integer"),
    (["dataset.train_on=train+val", "dataset.val_size=0"], "needs dataset.val_size > 0"),
    (["trainer.epochs=10", "trainer.epochs=abc"], "trainer.epochs='abc'"),
]
# name → (YAML text of conf/<name>.yaml, selecting override, expected fragment)
BROKEN_FILES = {
    "experiment/x_unclosed": ("# @package _global_\ntrainer:\n  epochs: [1, 2\n", "invalid YAML"),
    "experiment/x_tab": ("# @package _global_\ntrainer:\n\tepochs: 3\n", "invalid YAML"),
    "experiment/x_indent": ("# @package _global_\ntrainer:\n  epochs: 3\n   seed: 4\n", "invalid YAML"),
    "experiment/x_duplicate": ("# @package _global_\ntrainer:\n  epochs: 3\n  epochs: 4\n", "duplicate key"),
    "experiment/x_quote": ("# @package _global_\nexperiment: 'abc\n", "invalid YAML"),
    "experiment/x_binary": (b"\xff\xfe\x00\x81", "invalid YAML"),
    "experiment/x_unknown": ("# @package _global_\ntrainer:\n  epochz: 3\n", "did you mean 'trainer.epochs'?"),
    "experiment/x_type": ("# @package _global_\ntrainer:\n  epochs: many\n", "trainer.epochs='many': expected"),
    "experiment/x_range": ("# @package _global_\noptim:\n  lr: -1\n", "optim.lr=-1.0: out of range"),
    "experiment/x_nested": ("# @package _global_\nmodel:\n  blocks:\n    - {widths: [8, null], poool: max}\n",
                            "did you mean 'model.blocks[0].pool'?"),
    "experiment/x_option": ("# @package _global_\ndefaults:\n  - override /dataset: nope\n", "dataset=nope"),
    "experiment/x_interpolation": ("# @package _global_\ntrainer:\n  epochs: ${nope.x}\n", "could not be resolved"),
    "experiment/x_no_package": ("trainer:\n  epochs: 3\n", "experiment="),
    "trainer/x_missing": ("epochs: ???\n", "trainer.epochs is missing (???)"),
    "trainer/x_list": ("- 1\n- 2\n", "trainer=[1, 2]: expected a mapping"),
    "dataset/x_unknown": ("name: synthetic\nflipp: true\n", "did you mean 'dataset.flip'?"),
}
BROKEN_ROOT = "defaults:\n  - _self_\n  - dataset: cifar10\nfoo: [\n"

CLI_CASES = near_miss_cases() + value_cases() + GROUP_OPTIONS + OTHER_CASES


def assert_one_clean_line(result, needle: str) -> None:
    text = result.out + result.err
    assert result.code == 2, text
    assert len(text.strip().splitlines()) <= 3 and len(result.err_lines) == 1, text
    assert "Traceback" not in text and result.err_lines[0].startswith("nin: error: "), text
    assert needle in text, text


def test_there_are_at_least_100_cases():
    assert len(CLI_CASES) + len(BROKEN_FILES) + 1 >= 100


@pytest.mark.parametrize("args, needle", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_a_bad_command_line_exits_2_with_one_line(nin, args, needle):
    assert_one_clean_line(nin("train", *args), needle)


@pytest.fixture(scope="module")
def broken_conf(tmp_path_factory):
    conf = tmp_path_factory.mktemp("conf") / "conf"
    shutil.copytree(REPO / "conf", conf)
    for name, (text, _) in BROKEN_FILES.items():
        (conf / f"{name}.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
    return conf


@pytest.mark.parametrize("name", BROKEN_FILES)
def test_a_bad_config_file_exits_2_with_one_line_naming_it(nin, broken_conf, monkeypatch, name):
    monkeypatch.setenv("NIN_CONFIG_DIR", str(broken_conf))
    group, option = name.split("/")
    result = nin("train", f"{group}={option}")
    needle = BROKEN_FILES[name][1]
    assert_one_clean_line(result, needle)
    if "invalid YAML" in needle or "duplicate" in needle:
        assert f"{name}.yaml" in result.err  # the file that is broken, among several broken ones


def test_a_broken_root_config_exits_2(nin, tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    (conf / "config.yaml").write_text(BROKEN_ROOT)
    monkeypatch.setenv("NIN_CONFIG_DIR", str(conf))
    result = nin("train")
    assert_one_clean_line(result, "config.yaml: invalid YAML")
    assert_one_clean_line(nin("info"), "config.yaml: invalid YAML")


def test_a_bug_inside_training_is_one_line_naming_the_log_with_the_traceback(nin, tmp_path, monkeypatch):
    def broken(cfg, run_dir):
        raise RuntimeError("something\nunexpected")

    monkeypatch.setattr("nin_cli.train.fit", broken)
    run = tmp_path / "run"
    result = nin("train", "dataset=synthetic", f"hydra.run.dir={run}")
    assert result.code == 1 and len(result.err_lines) == 1, result.err
    assert result.err_lines[0] == ("nin: error: internal error (RuntimeError: something unexpected); traceback "
                                   f"in {run / 'train.log'}")
    log = (run / "train.log").read_text()
    assert "Traceback" in log and "RuntimeError: something" in log


def test_a_bug_before_training_is_one_line_naming_the_crash_log(nin, tmp_path, monkeypatch):
    def broken(overrides):
        raise KeyError("oops")

    monkeypatch.setattr("nin_cli.overrides.load_config", broken)
    result = nin("train")
    assert result.code == 1 and len(result.err_lines) == 1, result.err
    assert result.err_lines[0].startswith("nin: internal error (KeyError); traceback in ")
    crash = tmp_path / result.err_lines[0].rsplit(" ", 1)[1]
    assert "Traceback" in crash.read_text() and "KeyError" in crash.read_text()
