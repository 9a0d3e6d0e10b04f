"""Where and how tensors run: the device, autocast precision, the CPU allocator, seeds. Below everything that trains
or loads a model (train, checkpoint, bench), so none of them imports another for these."""

from __future__ import annotations

import ctypes
import platform
import random

import numpy as np
import torch

from nin_cli.errors import ConfigError


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
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


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
    and zeroed by the kernel on each step (the paper NIN's 32×32 activations are 50-100 MB at batch 128):
    ~15 % of a CPU training step (BENCHMARKS.md). Process-wide, like `GLIBC_TUNABLES=glibc.malloc.mmap_max=0`;
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
