"""What a researcher reaches for around a run: stopping on purpose (early stopping, a time budget that survives a
resume), progress lines without a terminal, SLURM's warning signal, metrics that stay valid JSON, run directories
that never collide."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import torch

from conftest import FAST, signal_at_step
from nin_cli.overrides import compose


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_early_stopping_ends_with_a_normal_summary_saying_why(nin, tmp_path):
    run = tmp_path / "run"
    # lr 1e-9: nothing improves after the first epoch, so patience 2 stops after epoch 3 of 10
    result = nin("train", *FAST, "trainer.epochs=10", "optim.lr=1e-9", "trainer.early_stop_patience=2",
                 f"hydra.run.dir={run}")
    assert result.code == 0, result.err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 3 and len(rows(run)) == 3
    assert summary["stopped_because"].startswith("early stopping: no better validation error for 2 epochs")
    assert "stopped: early stopping" in result.err


def test_the_time_limit_counts_the_time_spent_before_a_resume(nin, tmp_path):
    run = tmp_path / "run"
    first = nin("train", *FAST, "trainer.epochs=2", f"hydra.run.dir={run}")
    assert first.code == 0, first.err
    spent = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["state"]["elapsed_s"]
    assert spent > 0
    # extend the run with a budget already used up: it stops at once, with a summary, and says why
    again = nin("train", f"hydra.run.dir={run}", "trainer.epochs=5", f"trainer.max_time={spent / 2}")
    assert again.code == 0, again.err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["stopped_because"].startswith("time limit: trainer.max_time=")


def test_plain_mode_prints_progress_lines_inside_an_epoch(nin, tmp_path):
    result = nin("train", *FAST, "dataset.size=256", "trainer.progress_every_s=0.000001",
                 f"hydra.run.dir={tmp_path / 'run'}")
    assert result.code == 0, result.err
    lines = [line for line in result.err_lines if "step " in line and "epoch ETA" in line]
    assert len(lines) >= 5  # one per step at this interval
    assert re.search(r"^epoch 1/1  step 1/(\d+)  loss \d\.\d{4}  \d+ img/s  epoch ETA \dm\d\ds$", lines[0]), lines[0]
    steps = [int(re.search(r"step (\d+)/", line).group(1)) for line in lines]
    assert steps == sorted(set(steps)) and steps[-1] > steps[0]  # the epoch moves on from line to line


def test_sigusr2_saves_last_pt_and_exits_140(nin, tmp_path, monkeypatch):
    """submitit's SLURM launcher warns a job with SIGUSR2 (`--signal=USR2@90`): a real signal, sent mid-epoch."""
    signal_at_step(monkeypatch, 3, signal.SIGUSR2)
    run = tmp_path / "run"
    result = nin("train", *FAST, "trainer.epochs=2", f"hydra.run.dir={run}")
    assert result.code == 140, result.err
    assert result.err_lines[-1].startswith("nin: error: SIGUSR2: stopped at epoch 1, step 3; saved ")
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["state"]["step"] == 3
    resumed = nin("train", f"hydra.run.dir={run}")
    assert resumed.code == 0, resumed.err


def test_metrics_jsonl_writes_null_never_nan(nin, tmp_path):
    run = tmp_path / "run"
    result = nin("train", *FAST, "dataset.val_size=0", f"hydra.run.dir={run}")  # no validation split: NaN metrics
    assert result.code == 0, result.err
    text = (run / "metrics.jsonl").read_text()
    assert "NaN" not in text
    row = json.loads(text.splitlines()[0], parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert row["val_error"] is None and row["val_loss"] is None


def test_two_runs_composed_in_the_same_second_get_different_directories():
    first = compose([], with_hydra=True).hydra.run.dir
    second = compose([], with_hydra=True).hydra.run.dir
    assert first != second and first[:len("outputs/train/2026")] == second[:len("outputs/train/2026")]


def test_version_and_hydra_habits_get_one_line_pointers(nin):
    from importlib.metadata import version

    result = nin("--version")
    assert result.code == 0 and result.out.strip() == f"nin {version('nin-cli')}"
    for habit, pointer in (("-m", "use `nin sweep"), ("--multirun", "use `nin sweep"), ("--cfg", "use `nin info"),
                           ("--info", "use `nin info")):
        result = nin("train", habit, "trainer.epochs=1")
        assert result.code == 2 and len(result.err_lines) == 1 and pointer in result.err, (habit, result.err)


def test_help_lists_every_config_group_and_its_options(nin):
    from nin_cli.config import GROUPS
    from nin_cli.overrides import group_options

    for args in (["--help"], ["train", "--help"], ["sweep", "--help"]):
        text = " ".join(nin(*args).out.split())
        for group in GROUPS:
            assert f"{group}= " in text, (args, group)
        assert "paper_mnist" in text and "nin_imagenet" in text and len(group_options("experiment")) > 10


def _nin_output(args: list[str], env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", "from nin_cli.cli import main; main()", *args],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_shell_completion_of_commands_groups_options_and_keys():
    """The protocol the installed completion scripts speak: the line goes in through the environment."""
    from nin_cli.overrides import group_options

    def bash(line: str) -> list[str]:  # bash hands over the words split at spaces and at '='
        cword = len(line.split()) - (0 if line.endswith(" ") else 1)
        return _nin_output([], {"_NIN_COMPLETE": "complete_bash", "COMP_WORDS": line,
                                "COMP_CWORD": str(cword)}).split()

    assert bash("nin sw") == ["sweep"] and bash("nin ex") == ["export"]
    assert bash("nin train dataset = ci") == ["cifar10", "cifar100"]
    assert bash("nin sweep experiment = ") == group_options("experiment")
    assert bash("nin train trainer.ema") == ["trainer.ema_decay=", "trainer.ema_start_step="]
    assert "--json" in bash("nin train --j") and "--trials" in bash("nin sweep --tr")
    assert {"dataset=", "model=", "experiment=", "optim.lr=", "resume="} <= set(bash("nin train "))
    zsh = _nin_output([], {"_NIN_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "nin info head=f"})
    assert " ".join(zsh.split()) == """_arguments '*: :(("head=fc" "head=fc_dropout"))'"""
    assert "_NIN_COMPLETE=complete_bash" in _nin_output(["--show-completion", "bash"], {})


def test_ema_is_evaluated_each_epoch_resumed_bit_exactly_and_used_by_eval_and_export(nin, tmp_path):
    run, ref = tmp_path / "run", tmp_path / "ref"
    ema = ["trainer.ema_decay=0.9", "trainer.ema_start_step=2"]
    assert nin("train", *FAST, *ema, "trainer.epochs=2", f"hydra.run.dir={ref}").code == 0
    # the same run cut after epoch 1 and resumed: the moving average continues exactly
    assert nin("train", *FAST, *ema, "trainer.epochs=1", f"hydra.run.dir={run}").code == 0
    assert nin("train", f"hydra.run.dir={run}", "trainer.epochs=2").code == 0
    want, got = (torch.load(r / "checkpoints" / "last.pt", weights_only=True)["ema"] for r in (ref, run))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    steps = torch.load(ref / "checkpoints" / "last.pt", weights_only=True)["state"]["step"]
    assert int(want["n_averaged"]) == steps - 2  # updated after every step once 2 steps were taken
    row = rows(ref)[-1]
    assert 0 <= row["val_error_ema"] <= 100 and row["val_loss_ema"] > 0
    summary = json.loads((ref / "summary.json").read_text())
    assert 0 <= summary["test_error_ema"] <= 100
    ckpt = ref / "checkpoints" / "last.pt"
    scores = {w: nin("eval", str(ckpt), "--weights", w, "--json", "--out", str(tmp_path / w)).json()
              for w in ("auto", "ema", "raw")}
    assert scores["auto"]["weights"] == "ema" and scores["raw"]["weights"] == "raw"
    assert scores["auto"]["top1_error"] == scores["ema"]["top1_error"]
    assert math.isclose(scores["ema"]["top1_error"], summary["test_error_ema"], abs_tol=1e-6)
    export = nin("export", str(ckpt), "--format", "onnx", "--weights", "raw")
    assert export.code == 0, export.err
    assert json.loads(ckpt.with_suffix(".onnx.json").read_text())["weights"] == "raw"


def test_weights_ema_on_a_checkpoint_without_one_is_a_config_error(nin, tiny_run):
    result = nin("eval", str(tiny_run / "checkpoints" / "last.pt"), "--weights", "ema")
    assert result.code == 2 and len(result.err_lines) == 1 and "holds no moving average" in result.err


def test_epoch_checkpoints_are_kept_by_rule_and_nin_eval_scores_them_all(nin, tmp_path):
    run = tmp_path / "run"
    result = nin("train", *FAST, "trainer.epochs=5", "trainer.keep_last=2", "trainer.keep_every=2",
                 f"hydra.run.dir={run}")
    assert result.code == 0, result.err
    kept = sorted(p.name for p in (run / "checkpoints").glob("epoch_*.pt"))
    assert kept == ["epoch_0002.pt", "epoch_0004.pt", "epoch_0005.pt"]  # every 2nd, and the last 2 (4, 5)
    assert os.path.samefile(run / "checkpoints" / "epoch_0005.pt", run / "checkpoints" / "last.pt")
    table = nin("eval", str(run), "--json")
    assert table.code == 0, table.err
    scored = table.json()["checkpoints"]
    assert [r["checkpoint"] for r in scored] == [*kept, "best.pt", "last.pt"]
    assert [r["epoch"] for r in scored[:3]] == [2, 4, 5] and all(0 <= r["top1_error"] <= 100 for r in scored)
    assert scored[2]["top1_error"] == scored[-1]["top1_error"]  # epoch 5 is last.pt


def test_json_flags_print_one_object_on_stdout(nin, tmp_path):
    run = tmp_path / "run"
    trained = nin("train", *FAST, "--json", f"hydra.run.dir={run}")
    assert trained.code == 0, trained.err
    assert trained.json() == json.loads((run / "summary.json").read_text())  # stdout is that object alone
    exported = nin("export", str(run / "checkpoints" / "last.pt"), "--format", "onnx", "--json")
    assert exported.code == 0, exported.err
    assert exported.json()["parity"]["max_abs_diff"] <= 1e-4 and "wrote" in exported.err
    table = nin("table", str(tmp_path), "--out", str(tmp_path / "table"), "--json")
    assert table.code == 0, table.err
    rows = table.json()["rows"]
    assert {r["row"] for r in rows} >= {"paper_cifar10", "paper_mnist"} and all("verdict" in r for r in rows)
