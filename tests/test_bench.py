"""`nin bench` and the performance paths: the JSON report, device-resident sums against per-step values, no host
synchronisation per step on the accelerator branch (run on the CPU), AMP + memory formats, the fast preset."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from nin_cli.bench import BenchOptions, bench_config, build_pipelines, time_nin_train
from nin_cli.overrides import load_config
from nin_cli.runs import RunPaths
from nin_cli.runtime import tune_malloc
from nin_cli.state import Loop, NullWriter
from nin_cli.train import new_loop, train_one_epoch

TINY = ["dataset=synthetic", "model=nin_small", "dataset.image_shape=[3,8,8]", "trainer.batch_size=8",
        "trainer.eval_batch_size=16", "trainer.num_threads=1"]
RATES = ("train_images_per_s", "eval_images_per_s", "bare_train_images_per_s", "bare_eval_images_per_s",
         "conventional_train_images_per_s", "conventional_eval_images_per_s", "train_gflops", "eval_gflops",
         "peak_fp32_gflops", "bare_loop_ratio", "bare_loop_eval_ratio", "conventional_ratio",
         "conventional_eval_ratio", "peak_share", "eval_peak_share", "peak_fp32_conv_gflops", "peak_share_strict",
         "bare_peak_share", "conventional_peak_share")


def test_bench_json_reports_every_field(nin):
    result = nin("bench", *TINY, "--steps", "2", "--rounds", "1", "--workers", "0", "--peak-size", "256", "--json")
    assert result.code == 0, result.err
    r = result.json()
    for key in RATES:
        assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (key, r[key])
    assert 0 < r["peak_share_strict"] <= r["peak_share"] < 1 and 0 < r["eval_peak_share"] < 1
    assert r["train_gflops"] == pytest.approx(r["train_images_per_s"] * r["flops_train_per_image"] / 1e9)
    (row,) = r["rounds"]  # each share divides by the better peak measured just before or after its pipeline
    assert r["peak_share"] == pytest.approx(r["train_gflops"] / row["nin_train_peak"])
    assert row["nin_train_peak"] <= r["peak_fp32_gflops"] and row["bare_train_peak"] <= r["peak_fp32_gflops"]
    assert 2 * r["flops_forward_per_image"] < r["flops_train_per_image"] <= 3 * r["flops_forward_per_image"]
    assert r["peak_bf16_gflops"] is None or r["peak_bf16_gflops"] > 0
    assert (r["batch_size"], r["image_shape"], r["threads"], r["device"]) == (8, [3, 8, 8], 1, "cpu")
    assert r["malloc_tuned"] is True and len(r["rounds"]) == 1 and r["params"] > 0
    assert r["device_name"].endswith(f"{torch.backends.cpu.get_cpu_capability()})")  # the ISA that sets the peak


def test_bench_text_report_and_bad_override(nin):
    result = nin("bench", *TINY, "--steps", "1", "--rounds", "1", "--no-conventional", "--peak-size", "128")
    assert result.code == 0, result.err
    assert "bare PyTorch loop" in result.out and "nin / bare" in result.out
    bad = nin("bench", "trainer.batch_sise=8")
    assert bad.code == 2 and "batch_size" in bad.err


def loop_for(overrides: list[str], steps: int) -> Loop:
    """The Loop `nin bench` times: the real model, optimizer and data path on synthetic device tensors."""
    cfg = bench_config(load_config([*TINY, *overrides]), steps)
    p = build_pipelines(cfg, BenchOptions(steps=steps, conventional=False), torch.device("cpu"))
    return new_loop(p.cfg, RunPaths(Path("unused")), p.data, p.nin.model, p.nin.step_model, p.nin.optimizer,
                    p.nin.scaler)


class Recorder(NullWriter):
    def __init__(self):
        self.losses: list[float] = []

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if tag == "step/loss":
            self.losses.append(value)


def test_device_resident_sums_equal_the_per_step_values():
    loop = loop_for(["trainer.log_every=1"], steps=5)
    loop = dataclasses.replace(loop, writer=Recorder())
    train = train_one_epoch(loop, lambda *a: None)
    assert len(loop.writer.losses) == 5 and loop.sums.seen == 40
    assert train["loss"] == pytest.approx(sum(loop.writer.losses) / 5, rel=1e-6)
    assert train["accuracy"] == loop.sums.correct.item() / 40


def test_the_loop_is_frozen_and_changes_only_in_place():
    """What a run carries is never reassigned: an epoch advances the same TrainState, EpochSums and counters."""
    loop = loop_for([], steps=3)
    state, sums, dead = loop.state, loop.sums, loop.dead_steps
    with pytest.raises(dataclasses.FrozenInstanceError):
        loop.state = state  # type: ignore[misc]
    train_one_epoch(loop, lambda *a: None)
    assert loop.state is state and loop.sums is sums and loop.dead_steps is dead
    assert state.step == 3 and sums.seen == 24
    sums.set(1.5, 7, 9)  # a mid-epoch resume's sums, in place
    assert (sums.loss.item(), sums.correct.item(), sums.seen) == (1.5, 7, 9) and loop.sums is sums
    sums.set()  # an epoch's end
    assert (sums.loss.item(), sums.correct.item(), sums.seen) == (0.0, 0, 0)


def test_no_host_sync_per_step_on_the_accelerator_branch(monkeypatch):
    """The GPU path (`check_every_step` False) reads the device once per log interval, whatever the step count."""
    monkeypatch.setattr(Loop, "check_every_step", property(lambda self: False))
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "cpu"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _f=original, _n=name, **k: (reads.append(_n),
                                                                                            _f(self, *a, **k))[1])
    counts = []
    for steps in (2, 6):
        loop = loop_for(["trainer.log_every=1000"], steps)
        reads.clear()
        train_one_epoch(loop, lambda *a: None)
        counts.append(len(reads))
    assert counts[0] == counts[1] <= 4, counts


@pytest.mark.parametrize("precision,channels_last", [("bf16", True), ("fp16", True), ("fp32", False)])
def test_amp_and_memory_formats_train(precision, channels_last):
    loop = loop_for([f"trainer.precision={precision}", f"trainer.channels_last={str(channels_last).lower()}"], 2)
    assert loop.scaler.is_enabled() == (precision == "fp16")
    assert loop.model.features[0].convs[0].weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    train = train_one_epoch(loop, lambda *a: None)
    assert math.isfinite(train["loss"]) and loop.state.step == 2


def test_time_nin_train_runs_the_real_step():
    cfg = bench_config(load_config(TINY), 3)
    p = build_pipelines(cfg, BenchOptions(steps=3, conventional=False), torch.device("cpu"))
    assert p.cfg.optim.lr == 0 and time_nin_train(p) > 0
    assert len(p.bare_train) == 3 and p.bare_train[0][0].is_contiguous(memory_format=torch.channels_last)


def test_tune_malloc_on_glibc():
    import platform

    assert tune_malloc() == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_fast_cifar10_composes_and_trains_two_steps(nin, tmp_path):
    cfg = load_config(["experiment=fast_cifar10"])
    assert (cfg.experiment, cfg.head.type, cfg.model.batch_norm, cfg.dataset.name) == (
        "fast_cifar10", "gap", True, "imagefolder")
    assert cfg.dataset.val_size > 0 and cfg.dataset.train_on == "train"  # model choice on val, never on test
    assert all(b.kernel > 1 and len(b.widths) >= 2 for b in cfg.model.blocks)  # mlpconv: k×k then 1×1 convs
    run = tmp_path / "run"
    result = nin("train", "experiment=fast_cifar10", "dataset=synthetic", "dataset.size=96", "dataset.val_size=16",
                 "trainer.batch_size=16", "trainer.epochs=1", "trainer.max_steps_per_epoch=2",
                 "trainer.progress=plain", f"hydra.run.dir={run}")
    assert result.code == 0, result.err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and math.isfinite(rows[-1]["train_loss"])
    assert json.loads((run / "summary.json").read_text())["experiment"] == "fast_cifar10"
