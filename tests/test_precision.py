"""`trainer.precision=auto`: bf16 autocast where bf16 is native (CUDA GPUs, CPUs with AVX512-BF16 or AMX), fp32
elsewhere and for the paper presets; `nin bench` says what it chose and why, and a training records its choice."""

from __future__ import annotations

import json

import pytest
import torch

import nin_cli.runtime as runtime
from conftest import FAST
from nin_cli.overrides import load_config
from nin_cli.runtime import autocast_dtype, cpu_flags, describe_precision, resolve_precision, with_precision

CPU = torch.device("cpu")
TINY = ["dataset=synthetic", "model=nin_small", "dataset.image_shape=[3,8,8]", "trainer.batch_size=8",
        "trainer.eval_batch_size=16", "trainer.num_threads=1"]


def flags(monkeypatch, *names: str) -> None:
    monkeypatch.setattr(runtime, "cpu_flags", lambda path="/proc/cpuinfo": set(names))


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(info)) == {"fpu", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}  # the first CPU's
    assert cpu_flags(str(tmp_path / "none")) == set()


@pytest.mark.parametrize("names, want", [(("avx512_bf16",), "bf16"), (("amx_bf16", "amx_tile"), "bf16"),
                                         (("avx512f", "avx512bw", "avx2"), "fp32"), ((), "fp32")])
def test_auto_on_the_cpu_follows_the_native_bf16_flags(monkeypatch, names, want):
    flags(monkeypatch, *names)
    precision, why = resolve_precision("auto", CPU, "demo_digits")
    assert precision == want and why.startswith("auto: ")
    assert ("the CPU has native bf16 (" in why) == (want == "bf16") and "\n" not in why


def test_the_paper_presets_stay_fp32_unless_asked(monkeypatch):
    flags(monkeypatch, "avx512_bf16", "amx_bf16")
    assert resolve_precision("auto", CPU, "paper_cifar10")[0] == "fp32"
    assert resolve_precision("auto", CPU, "paper_mnist")[0] == "fp32"
    assert resolve_precision("bf16", CPU, "paper_cifar10") == ("bf16", "trainer.precision=bf16 as set")
    assert resolve_precision("fp32", CPU, "demo_digits")[0] == "fp32"  # an explicit choice is never changed


def test_auto_on_gpus_and_elsewhere(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", torch.device("cuda"), "fast_cifar10")[0] == "bf16"
    assert resolve_precision("auto", torch.device("cuda"), "paper_cifar10_aug")[0] == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", torch.device("cuda"), "fast_cifar10")[0] == "fp32"  # pre-Ampere: emulated
    assert resolve_precision("auto", torch.device("mps"), "fast_cifar10")[0] == "fp32"
    assert autocast_dtype("auto") is None  # an unresolved auto never lowers precision silently


def test_with_precision_rewrites_only_auto(monkeypatch):
    flags(monkeypatch, "amx_bf16")
    cfg = load_config([*TINY, "trainer.precision=auto", "experiment=demo_digits"])
    resolved, why = with_precision(cfg, CPU)
    assert (cfg.trainer.precision, resolved.trainer.precision) == ("auto", "bf16") and "amx_bf16" in why
    same, _ = with_precision(load_config([*TINY, "trainer.precision=fp32"]), CPU)
    assert same.trainer.precision == "fp32"
    assert describe_precision(cfg) == {"precision": "bf16", "precision_why": why}


@pytest.mark.parametrize("names, want", [(("avx512_bf16",), "bf16"), ((), "fp32")])
def test_bench_says_what_auto_chose_and_why(nin, monkeypatch, names, want):
    flags(monkeypatch, *names)
    result = nin("bench", *TINY, "trainer.precision=auto", "--steps", "1", "--rounds", "1", "--no-conventional",
                 "--peak-size", "128", "--json")
    assert result.code == 0, result.err
    r = result.json()
    assert r["precision"] == want and r["precision_why"].startswith(f"auto: {want}")
    text = nin("bench", *TINY, "trainer.precision=auto", "--steps", "1", "--rounds", "1", "--no-conventional",
               "--peak-size", "128")
    assert text.code == 0 and f"precision {want}: auto: {want}" in text.out


def test_a_training_records_the_precision_auto_chose(nin, tmp_path, monkeypatch):
    flags(monkeypatch)  # no native bf16: auto trains in fp32 and says so
    run = tmp_path / "run"
    result = nin("train", *FAST, "trainer.precision=auto", f"hydra.run.dir={run}")
    assert result.code == 0, result.err
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["config"]["trainer"]["precision"]
    assert saved == "fp32" and "precision fp32 (auto: fp32, the CPU has no native bf16" in result.err
    assert json.loads((run / "summary.json").read_text())["epochs"] == 1


def test_nin_info_says_which_precision_and_why(nin, monkeypatch):
    flags(monkeypatch, "amx_bf16")
    result = nin("info", "experiment=demo_digits", "trainer.precision=auto", "--json")
    assert result.code == 0, result.err
    info = result.json()
    assert info["precision"] == "bf16" and "amx_bf16" in info["precision_why"]
    paper = nin("info", "experiment=paper_mnist", "trainer.precision=auto", "--json").json()
    assert paper["precision"] == "fp32"  # the paper presets stay fp32 unless asked


def test_compile_mode_reaches_torch_compile(nin, tmp_path, monkeypatch):
    """trainer.compile_mode=reduce-overhead (CUDA graphs of the step on a GPU) is what torch.compile is given; the
    compiled step is the one that trains (a stand-in compile here: inductor's CPU build is minutes on 2 cores)."""
    seen: list = []

    def fake_compile(module, mode=None):
        seen.append(mode)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    result = nin("train", *FAST, "trainer.max_steps_per_epoch=2", "trainer.compile=true",
                 "trainer.compile_mode=reduce-overhead", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.code == 0, result.err
    assert seen == ["reduce-overhead"]
    bad = nin("info", "trainer.compile_mode=fast")
    assert bad.code == 2 and "trainer.compile_mode" in bad.err_lines[-1]
