"""Where and how tensors run: the device, autocast precision, the CPU allocator, seeds. Below everything that trains
or loads a model (train, checkpoint, bench), so none of them imports another for these."""

from __future__ import annotations

import ctypes
import logging
import platform
import random
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
import torch

from nin_cli.errors import ConfigError

C = TypeVar("C", bound=Any)  # a NinConfig: runtime does not import config (same layer)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda: no CUDA device is visible; use trainer.device=auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("trainer.device=mps: MPS is not available here; use trainer.device=auto or cpu")
    return torch.device(name)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision. An unresolved `auto` (a config that never went through
    `resolve_precision`, e.g. `nin eval ... trainer.precision=auto`) runs fp32: never a silent lower precision."""
    return {"fp32": None, "auto": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs whose bf16 matmuls are native


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo, Linux x86); empty where there is no such file."""
    try:
        with open(path) as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def resolve_precision(precision: str, device: torch.device, experiment: str = "") -> tuple[str, str]:
    """(the precision a run uses, why: one line). `auto` takes bf16 autocast where it is native and fast — CUDA
    GPUs, CPUs with AVX512-BF16 or AMX — and fp32 elsewhere (emulated bf16 runs far below the fp32 peak); the
    paper presets (experiment=paper_*) stay fp32, the authors' arithmetic, unless trainer.precision names bf16."""
    if precision != "auto":
        return precision, f"trainer.precision={precision} as set"
    if experiment.startswith("paper_"):
        return "fp32", f"auto: fp32 for experiment={experiment} (paper presets keep the authors' fp32)"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", "auto: bf16 autocast on a CUDA GPU with native bf16"
        return "fp32", "auto: fp32, this GPU has no native bf16 (older than Ampere)"
    if device.type != "cpu":
        return "fp32", f"auto: fp32 on {device.type}"
    native = sorted(set(NATIVE_BF16_FLAGS) & cpu_flags())
    if native:
        return "bf16", f"auto: bf16 autocast, the CPU has native bf16 ({', '.join(native)})"
    return "fp32", "auto: fp32, the CPU has no native bf16 (no avx512_bf16 / amx_bf16 flag: bf16 would be emulated)"


def describe_precision(cfg: Any) -> dict[str, str]:
    """{"precision", "precision_why"}: what a training of `cfg` would use on this machine (`nin info`)."""
    try:
        device = resolve_device(cfg.trainer.device)
    except ConfigError as err:  # e.g. trainer.device=cuda on a machine without one: training would stop there
        return {"precision": cfg.trainer.precision, "precision_why": str(err)}
    precision, why = resolve_precision(cfg.trainer.precision, device, cfg.experiment)
    return {"precision": precision, "precision_why": why}


def with_precision(cfg: C, device: torch.device) -> tuple[C, str]:
    """`cfg` (a NinConfig) with trainer.precision resolved for `device` (logged when it was auto), and the one-line
    reason. Typed loosely: runtime sits beside config in the layers and does not import it."""
    precision, why = resolve_precision(cfg.trainer.precision, device, cfg.experiment)
    if precision == cfg.trainer.precision:
        return cfg, why
    logging.getLogger("nin").info("precision %s (%s)", precision, why)
    return replace(cfg, trainer=replace(cfg.trainer, precision=precision)), why


def set_tf32(enabled: bool) -> None:
    """trainer.tf32: let CUDA run fp32 matmuls and convolutions on TF32 tensor cores (no effect elsewhere)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def autocast(device_type: str, dtype: torch.dtype | None) -> torch.autocast:
    """Mixed precision when the config asks for it (`dtype` from `autocast_dtype`), a disabled context otherwise:
    the one spelling every forward pass (training, evaluation, bench) uses."""
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


def tune_malloc() -> bool:
    """Make glibc keep freed memory in its heap. By default every tensor over 32 MB is a fresh mmap, page-faulted
    and zeroed by the kernel on each step (the paper NIN's 32×32 activations are 50-100 MB at batch 128): 17.6 %
    of the step's CPU time on the Zen 3 host (one thread), 1.33× the step's speed on the Zen 4 (two threads;
    BENCHMARKS.md); other hosts differ. Process-wide, like `GLIBC_TUNABLES=glibc.malloc.mmap_max=0`;
    `nin train` and `nin bench` do it on the CPU. False off glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def compiled(module: Any, enabled: bool, mode: str) -> Any:
    """`module` through torch.compile (`trainer.compile`) in `trainer.compile_mode`: "reduce-overhead" captures CUDA
    graphs of the step on a GPU, where a 32×32 NIN at batch 128 spends most of its time launching kernels."""
    if not enabled:
        return module
    return torch.compile(module, mode=None if mode == "default" else mode)
