"""What only a GPU can show: the CUDA paths of training, precision, memory format, compile, exact resume, the
lazily read non-finite flag, and CUDA-trained checkpoints used on the CPU. Marked `cuda`; skipped where no CUDA
device is visible (`scripts/device_check.py` runs them on a lent GPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import FAST
from test_resume import assert_same

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = [*FAST, "trainer.device=cuda"]


def train(nin, run: Path, *extra: str):
    result = nin("train", *CUDA, *extra, f"hydra.run.dir={run}")
    assert result.code == 0, result.err
    return json.loads((run / "summary.json").read_text())


@pytest.mark.parametrize("extra", [[], ["trainer.precision=bf16"], ["trainer.precision=fp16"],
                                   ["trainer.channels_last=false"], ["trainer.tf32=true"],
                                   ["trainer.compile=true"]], ids=["fp32", "bf16", "fp16", "nchw", "tf32", "compile"])
def test_a_cuda_training_runs_and_learns_something(nin, tmp_path, extra):
    summary = train(nin, tmp_path / "run", "trainer.epochs=4", *extra)
    assert summary["device"].startswith("cuda") and 0 <= summary["test_error"] <= 100
    loss = summary["final_train_loss"]  # a NaN is stored as null: check the type, not loss == loss
    assert isinstance(loss, float) and math.isfinite(loss), loss
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    # learnt: the training loss fell well below its first epoch's and below chance's ln 10, and the training
    # accuracy is at least twice chance's 10 % (on the CPU these runs reach ~0.6 × the loss and > 50 %)
    assert rows[-1]["train_loss"] < 0.9 * rows[0]["train_loss"] and rows[-1]["train_loss"] < math.log(10) - 0.2
    assert rows[-1]["train_accuracy"] >= 0.2, rows


def test_a_resumed_cuda_run_is_bit_exact_in_deterministic_mode(nin, tmp_path, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
    ref, run = tmp_path / "ref", tmp_path / "run"
    train(nin, ref, "trainer.epochs=2", "trainer.deterministic=true")
    train(nin, run, "trainer.epochs=1", "trainer.deterministic=true")
    assert nin("train", f"hydra.run.dir={run}", "trainer.epochs=2").code == 0
    want, got = (torch.load(r / "checkpoints" / "last.pt", weights_only=True) for r in (ref, run))
    for key in ("model", "optimizer", "state"):
        assert_same(want[key], got[key], key)


def test_the_non_finite_flag_is_read_at_the_log_interval_and_nothing_bad_is_saved(nin, tmp_path, monkeypatch):
    monkeypatch.setenv("NIN_FAULT_INJECT", "loss@3=nan")
    run = tmp_path / "run"
    result = nin("train", *CUDA, "trainer.log_every=2", f"hydra.run.dir={run}")
    assert result.code == 5 and "non-finite loss by step 4" in result.err, result.err
    assert not (run / "checkpoints" / "last.pt").exists()  # the spoilt weights were never saved


def test_a_cuda_checkpoint_is_evaluated_exported_and_mapped_on_the_cpu(nin, tmp_path):
    run = tmp_path / "run"
    train(nin, run)
    ckpt = run / "checkpoints" / "last.pt"
    scored = nin("eval", str(ckpt), "trainer.device=cpu", "--json", "--out", str(tmp_path / "eval"))
    assert scored.code == 0 and 0 <= scored.json()["top1_error"] <= 100, scored.err
    assert nin("export", str(ckpt), "--format", "onnx").code == 0
    assert nin("cam", str(ckpt), "--test", "2", "--out", str(tmp_path / "cam")).code == 0
    assert (tmp_path / "cam" / "cam.png").stat().st_size > 0
