"""`nin bench`: how fast the `nin` training step runs, as ratios measured in one process with one model and batch.

Three pipelines train and evaluate the same architecture on synthetic images of the configured shape:
(a) `nin`: the real `train.train_one_epoch` and `evaluate.evaluate`, on device-resident tensors, as `nin train`
runs them; (b) `bare`: a textbook PyTorch loop over pre-loaded, pre-normalised tensors (the reference);
(c) `conventional`: a `DataLoader` over in-memory PIL images with torchvision transforms and an NCHW fp32 model,
what public NIN ports do. FLOPs come from `torch.utils.flop_counter`; the peak is the best of a few square
`torch.mm`s and of a few 3×3 channels_last convs (oneDNN's implicit GEMM), whichever is faster, on the same device.

Measurements are interleaved in rounds (the order rotates each round), so a shared or throttling machine slows
every pipeline alike; throughputs are medians over rounds, ratios medians of per-round ratios, and a pipeline's
share of the peak divides by the peak measured just before and after it. The learning rate
is 0 in every pipeline: the same kernels run, but weights stay at their init, so random data can never drive them
to inf/NaN or denormals mid-measurement.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nin_cli.config import NinConfig
from nin_cli.data import Data, Split, to_input
from nin_cli.errors import ConfigError
from nin_cli.files import one_line
from nin_cli.metrics import evaluate
from nin_cli.model import build_model
from nin_cli.runs import RunPaths
from nin_cli.runtime import autocast, autocast_dtype, compiled, resolve_device, set_tf32, tune_malloc, with_precision
from nin_cli.schedule import build_optimizer
from nin_cli.train import new_loop, train_one_epoch

# Environment variables that change CPU speed; the report records them.
TUNING_ENV = ("OMP_", "GOMP_", "KMP_", "MKL_", "DNNL_", "ONEDNN_", "GLIBC_TUNABLES", "LD_PRELOAD", "TORCHINDUCTOR_")


@dataclass
class BenchOptions:
    steps: int = 5  # timed training steps per measurement
    eval_batches: int = 2  # timed eval batches (of trainer.eval_batch_size) per measurement
    rounds: int = 3
    workers: int = 2  # DataLoader workers of the conventional pipeline (the PyTorch CIFAR tutorial's choice)
    conventional: bool = True
    tune_malloc: bool = True
    peak_size: int = 0  # matmul side for the peak; 0: 2048 on CPU, 8192 on accelerators
    clock: str = "wall"  # or "process": CPU seconds of this process (see `clock_function`)


# ------------------------------------------------------------------------------------------------ the machine


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def bf16_supported(device: torch.device) -> bool:
    """Native bf16 matmuls (AVX512-BF16/AMX on CPU); elsewhere bf16 runs emulated, far below the fp32 peak."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def clock_function(name: str, device: torch.device) -> Callable[[], float]:
    """`wall`: what a user waits. `process`: CPU seconds of this process, for a shared machine: with
    trainer.num_threads=1 it counts only the time the one thread ran, whoever else is busy (with more threads it
    also counts OpenMP's spin-waiting). CPU only; the conventional pipeline then runs without workers."""
    if name not in ("wall", "process"):
        raise ConfigError(f"--clock {name}: must be wall or process")
    if name == "process" and device.type != "cpu":
        raise ConfigError(f"--clock process measures CPU time: not meaningful on {device.type}; use --clock wall")
    return time.perf_counter if name == "wall" else time.process_time


def fastest(fn: Callable[[], object], device: torch.device, repeats: int, clock: Callable[[], float]) -> float:
    """Seconds of the fastest of `repeats` calls, after one warm-up."""
    fn()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        synchronize(device)
        best = min(best, clock() - start)
    return best


@torch.no_grad()
def matmul_peaks(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5,
                 clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """GFLOP/s of a size×size `torch.mm` (MKL / cuBLAS: the matmul peak) and of a 3×3 channels_last conv, oneDNN's
    implicit GEMM (faster than MKL's sgemm on AMD CPUs, so the stricter reference)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device, dtype)
    b = torch.randn(size, size, generator=g).to(device, dtype)
    width = 256 if size >= 2048 else 32
    x = torch.randn(32, width, 16, 16, generator=g).to(device, dtype).contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(width, width, 3, padding=1, bias=False).to(device, dtype, memory_format=torch.channels_last)
    return {"mm": 2 * size**3 / fastest(lambda: a @ b, device, repeats, clock) / 1e9,
            "conv": 2 * x.numel() * width * 9 / fastest(lambda: conv(x), device, repeats, clock) / 1e9}


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5,
                clock: Callable[[], float] = time.perf_counter) -> float:
    return matmul_peaks(device, dtype, size, repeats, clock)["mm"]


def device_name(device: torch.device) -> str:
    """The GPU's name; for a CPU its model name, family and model (a cloud "AMD EPYC" may be any generation) and
    the widest vector ISA PyTorch uses on it (AVX2, AVX512, ...), which sets its peak."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    info: dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or platform.machine()
    generation = f"family {info['cpu family']} model {info['model']}, " if "cpu family" in info else ""
    return f"{name} ({generation}{torch.backends.cpu.get_cpu_capability()})"


def flops_per_image(cfg: NinConfig, shape: list[int], classes: int) -> tuple[int, int]:
    """(forward, training step) FLOPs of one image, counted on a CPU copy with a batch of two."""
    from torch.utils.flop_counter import FlopCounterMode


    net = build_model(cfg.model, cfg.head, shape, classes)
    x, y = torch.randn(2, *shape), torch.tensor([0, classes - 1])
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        net.eval()(x)
    with FlopCounterMode(display=False) as step:
        F.cross_entropy(net.train()(x), y).backward()
    return forward.get_total_flops() // 2, step.get_total_flops() // 2


# ------------------------------------------------------------------------------------------------- pipelines


def image_spec(cfg: NinConfig) -> tuple[list[int], int]:
    shape, classes = cfg.dataset.image_shape, cfg.dataset.num_classes
    if shape is None or classes is None:
        raise ConfigError(f"dataset={cfg.dataset.name}: set dataset.image_shape and dataset.num_classes for bench")
    return list(shape), classes


def synthetic_split(shape: list[int], classes: int, n: int, stored_float: bool, g: torch.Generator) -> Split:
    """Random images as `load_data` stores them: uint8, or float16 when preprocessed ahead (GCN+ZCA, LCN)."""
    labels = torch.randint(0, classes, (n,), generator=g)
    if stored_float:
        return Split(torch.randn(n, *shape, generator=g).to(torch.float16), labels)
    return Split(torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8), labels)


def synthetic_data(cfg: NinConfig, device: torch.device, n_train: int, n_eval: int) -> Data:
    shape, classes = image_spec(cfg)
    g = torch.Generator().manual_seed(cfg.trainer.seed)
    stored_float = cfg.dataset.preprocessing.startswith("gcn")
    prep = ({"kind": cfg.dataset.preprocessing} if stored_float
            else {"kind": "mean_std", "mean": [0.5] * shape[0], "std": [0.25] * shape[0]})
    if cfg.dataset.input_scale != 1.0:  # the multiply training does (stored-float data has it applied already)
        prep["input_scale"] = cfg.dataset.input_scale
    train = synthetic_split(shape, classes, n_train, stored_float, g)
    test = synthetic_split(shape, classes, n_eval, stored_float, g)
    empty = Split(train.images[:0], train.labels[:0])
    return Data(train.to(device), empty.to(device), test.to(device), [f"class{i}" for i in range(classes)], prep)


@dataclass
class Trainee:
    """One pipeline's model (and the module its steps call: compiled or not), optimizer and grad scaler."""

    model: nn.Module
    step_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def bench_config(cfg: NinConfig, steps: int) -> NinConfig:
    """`cfg` as the benchmark trains it: `steps` steps per epoch, lr 0 (see the module docstring), no display."""
    return replace(cfg, optim=replace(cfg.optim, lr=0.0), trainer=replace(
        cfg.trainer, max_steps_per_epoch=steps, progress="none", checkpoint_every_steps=None))


def make_trainee(cfg: NinConfig, device: torch.device, channels_last: bool, compile_: bool, bare: bool) -> Trainee:
    """The nin pipeline's optimizer comes from `train.build_optimizer` (per-layer groups); the others' from the
    textbook one-liner."""

    shape, classes = image_spec(cfg)
    model = build_model(cfg.model, cfg.head, shape, classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if not bare:
        optimizer = build_optimizer(model, cfg.optim)
    elif cfg.optim.name == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=cfg.optim.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=cfg.optim.momentum,
                                    weight_decay=cfg.optim.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.trainer.precision == "fp16")
    return Trainee(model, compiled(model, compile_, cfg.trainer.compile_mode), optimizer, scaler)


class PilImages(torch.utils.data.Dataset):
    """In-memory PIL images served through a torchvision transform, as torchvision's CIFAR datasets do."""

    def __init__(self, images: list, labels: list[int], transform: Callable):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), self.labels[i]


def conventional_loaders(cfg: NinConfig, workers: int, n_train: int, n_eval: int, device: torch.device
                         ) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """Per-image PIL → tensor work in DataLoader workers; the same augmentation as the config asks of `nin`."""
    from PIL import Image
    from torchvision import transforms as T

    shape, classes = image_spec(cfg)
    g = torch.Generator().manual_seed(cfg.trainer.seed)
    arrays = torch.randint(0, 256, (n_train + n_eval, shape[1], shape[2], shape[0]), generator=g, dtype=torch.uint8)
    images = [Image.fromarray(a.numpy() if shape[0] == 3 else a[..., 0].numpy()) for a in arrays]
    labels = torch.randint(0, classes, (n_train + n_eval,), generator=g).tolist()
    augment = [T.RandomCrop(shape[1:], padding=cfg.dataset.translate)] if cfg.dataset.translate else []
    augment += [T.RandomHorizontalFlip()] if cfg.dataset.flip else []
    tail = [T.ToTensor(), T.Normalize([0.5] * shape[0], [0.25] * shape[0])]
    # Workers from a fork server, not forked from this process: forked children share its heap copy-on-write, and
    # every later write to those pages by the nin step page-faults (thousands per step, measured).
    common = {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": device.type == "cuda",
              "multiprocessing_context": "forkserver" if workers > 0 else None}
    train = torch.utils.data.DataLoader(PilImages(images[:n_train], labels[:n_train], T.Compose(augment + tail)),
                                        batch_size=cfg.trainer.batch_size, shuffle=True, drop_last=True, **common)
    test = torch.utils.data.DataLoader(PilImages(images[n_train:], labels[n_train:], T.Compose(tail)),
                                       batch_size=cfg.trainer.eval_batch_size, **common)
    return train, test


@dataclass
class Pipelines:
    cfg: NinConfig  # as `bench_config` made it
    device: torch.device
    data: Data
    nin: Trainee
    bare: Trainee
    bare_train: list[tuple[torch.Tensor, torch.Tensor]]  # pre-loaded, normalised, in the model's memory format
    bare_eval: list[tuple[torch.Tensor, torch.Tensor]]
    clock: Callable[[], float] = time.perf_counter
    conventional: Trainee | None = None
    loaders: tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader] | None = None


def preloaded(split: Split, batch: int, preprocessing: dict, channels_last: bool) -> list:

    return [(to_input(split.images[i:i + batch], preprocessing, channels_last), split.labels[i:i + batch])
            for i in range(0, len(split), batch)]


def build_pipelines(cfg: NinConfig, opts: BenchOptions, device: torch.device) -> Pipelines:
    tr = cfg.trainer
    n_train, n_eval = tr.batch_size * opts.steps, tr.eval_batch_size * opts.eval_batches
    data = synthetic_data(cfg, device, n_train, n_eval)
    p = Pipelines(cfg, device, data,
                  make_trainee(cfg, device, tr.channels_last, tr.compile, bare=False),
                  make_trainee(cfg, device, tr.channels_last, tr.compile, bare=True),
                  preloaded(data.train, tr.batch_size, data.preprocessing, tr.channels_last),
                  preloaded(data.test, tr.eval_batch_size, data.preprocessing, tr.channels_last),
                  clock_function(opts.clock, device))
    if opts.conventional and image_spec(cfg)[0][0] in (1, 3):  # channel counts PIL can hold
        p.conventional = make_trainee(cfg, device, False, False, bare=True)
        p.loaders = conventional_loaders(cfg, opts.workers, n_train, n_eval, device)
    for other in (p.bare, p.conventional):  # identical weights: no pipeline gets luckier data-dependent timings
        if other is not None:
            other.model.load_state_dict(p.nin.model.state_dict())
    return p


# ------------------------------------------------------------------------------------------------ the timings


def time_nin_train(p: Pipelines) -> float:
    """Seconds for one `train_one_epoch` of `steps` steps: batch order, augmentation, `to_input`, lr, step,
    device-side accumulation and its read-back, exactly as `nin train` runs them."""

    t = p.nin
    loop = new_loop(p.cfg, RunPaths(Path(os.devnull)), p.data, t.model, t.step_model, t.optimizer, t.scaler)
    start = p.clock()  # the run directory is never touched: bench_config turns mid-epoch saves off
    train_one_epoch(loop, lambda *a: None)
    return p.clock() - start  # it ends with .item(): the device is synchronised


def time_nin_eval(p: Pipelines) -> float:

    tr = p.cfg.trainer
    start = p.clock()
    evaluate(p.nin.model, p.data.test, p.data.preprocessing, tr.eval_batch_size, tr.channels_last,
             autocast_dtype(tr.precision))
    return p.clock() - start


def time_bare_train(p: Pipelines) -> float:

    t, amp, kind = p.bare, autocast_dtype(p.cfg.trainer.precision), p.device.type
    t.model.train()
    start = p.clock()
    for x, y in p.bare_train:
        t.optimizer.zero_grad(set_to_none=True)
        with autocast(kind, amp):
            loss = F.cross_entropy(t.step_model(x), y)
        t.scaler.scale(loss).backward()
        t.scaler.step(t.optimizer)
        t.scaler.update()
    synchronize(p.device)
    return p.clock() - start


@torch.no_grad()
def time_bare_eval(p: Pipelines) -> float:

    amp = autocast_dtype(p.cfg.trainer.precision)
    p.bare.model.eval()
    start = p.clock()
    for x, _ in p.bare_eval:
        with autocast(p.device.type, amp):
            p.bare.model(x)
    synchronize(p.device)
    return p.clock() - start


def time_conventional_train(p: Pipelines) -> float:
    t = p.conventional
    t.model.train()
    start = p.clock()
    for x, y in p.loaders[0]:
        x, y = x.to(p.device, non_blocking=True), y.to(p.device, non_blocking=True)
        t.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(t.model(x), y).backward()
        t.optimizer.step()
    synchronize(p.device)
    return p.clock() - start


@torch.no_grad()
def time_conventional_eval(p: Pipelines) -> float:
    p.conventional.model.eval()
    start = p.clock()
    for x, _ in p.loaders[1]:
        p.conventional.model(x.to(p.device, non_blocking=True))
    synchronize(p.device)
    return p.clock() - start


def measures(p: Pipelines) -> dict[str, Callable[[], float]]:
    """name → a function returning images/s of one measurement."""
    n_train, n_eval = len(p.data.train), len(p.data.test)
    timers = {"nin_train": (time_nin_train, n_train), "bare_train": (time_bare_train, n_train),
              "nin_eval": (time_nin_eval, n_eval), "bare_eval": (time_bare_eval, n_eval)}
    if p.conventional is not None:
        timers |= {"conventional_train": (time_conventional_train, n_train),
                   "conventional_eval": (time_conventional_eval, n_eval)}
    return {name: (lambda fn=fn, n=n: n / fn(p)) for name, (fn, n) in timers.items()}


def run_rounds(p: Pipelines, rounds: int, peak_size: int) -> list[dict[str, float]]:
    """One warm-up of everything (compilation, oneDNN primitives, workers), then `rounds` rounds that rotate the
    order of the pipelines. A matmul peak is measured before and after every pipeline, and each pipeline's share of
    the peak uses the better of the two around it: this host's speed drifts by tens of % within minutes."""
    timed = measures(p)
    for fn in timed.values():
        fn()
    rows = []
    for r in range(rounds):
        peaks = [matmul_peaks(p.device, torch.float32, peak_size, clock=p.clock)]
        row: dict[str, float] = {}
        for name in list(timed)[r % len(timed):] + list(timed)[:r % len(timed)]:
            before = os_usage()
            row[name] = timed[name]()
            if name == "nin_train":  # counts, not times: a busy machine does not blur them
                faults, system, user = (b - a for a, b in zip(before, os_usage(), strict=True))
                row["page_faults_per_step"] = faults / p.cfg.trainer.max_steps_per_epoch
                row["system_time_share"] = system / max(system + user, 1e-9)
            peaks.append(matmul_peaks(p.device, torch.float32, peak_size, clock=p.clock))
            row[f"{name}_peak"] = max(peaks[-2]["mm"], peaks[-1]["mm"])
            row[f"{name}_peak_conv"] = max(peaks[-2]["conv"], peaks[-1]["conv"])
        row["peak_fp32_gflops"] = max(q["mm"] for q in peaks)
        row["peak_fp32_conv_gflops"] = max(q["conv"] for q in peaks)
        rows.append(row)
    return rows


def os_usage() -> tuple[float, float, float]:
    """(minor page faults, system seconds, user seconds) of this process so far; zeros where unknown."""
    try:
        import resource
    except ImportError:  # not on Windows
        return 0.0, 0.0, 0.0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return float(usage.ru_minflt), usage.ru_stime, usage.ru_utime


# --------------------------------------------------------------------------------------------------- results


def _median(rows: list[dict], key: str) -> float | None:
    return statistics.median(r[key] for r in rows) if key in rows[0] else None


def _ratio(rows: list[dict], a: str, b: str) -> float | None:
    return statistics.median(r[a] / r[b] for r in rows) if a in rows[0] and b in rows[0] else None


def summarize(rows: list[dict], flops: tuple[int, int], peak_bf16: float | None, cfg: NinConfig) -> dict:
    forward, step = flops
    low = cfg.trainer.precision != "fp32" and peak_bf16 is not None  # fp16 and bf16 peaks match on tensor cores
    out = {name: _median(rows, key) for name, key in (
        ("train_images_per_s", "nin_train"), ("eval_images_per_s", "nin_eval"),
        ("bare_train_images_per_s", "bare_train"), ("bare_eval_images_per_s", "bare_eval"),
        ("conventional_train_images_per_s", "conventional_train"),
        ("conventional_eval_images_per_s", "conventional_eval"))}
    gflops = {f"{name.removesuffix('_images_per_s')}_gflops": None if v is None else
              v * (step if "train" in name else forward) / 1e9 for name, v in out.items()}

    def share(key: str, strict: bool = False) -> float | None:
        """Median over rounds of the pipeline's GFLOP/s over the peak measured around it (`strict`: the faster of
        the matmul and the 3×3 conv)."""
        if key not in rows[0]:
            return None
        work = step if "train" in key else forward
        peaks = [peak_bf16 if low else max(r[f"{key}_peak"], r[f"{key}_peak_conv"] if strict else 0.0) for r in rows]
        return statistics.median(r[key] * work / 1e9 / peak for r, peak in zip(rows, peaks, strict=True))

    return out | gflops | {
        "bare_loop_ratio": _ratio(rows, "nin_train", "bare_train"),
        "bare_loop_eval_ratio": _ratio(rows, "nin_eval", "bare_eval"),
        "conventional_ratio": _ratio(rows, "nin_train", "conventional_train"),
        "conventional_eval_ratio": _ratio(rows, "nin_eval", "conventional_eval"),
        "peak_share": share("nin_train"), "eval_peak_share": share("nin_eval"),
        "bare_peak_share": share("bare_train"), "conventional_peak_share": share("conventional_train"),
        "peak_share_strict": share("nin_train", strict=True),
        "peak_fp32_gflops": max(r["peak_fp32_gflops"] for r in rows), "peak_bf16_gflops": peak_bf16,
        "peak_dtype": "bf16" if low else "fp32",
        "peak_fp32_conv_gflops": max(r["peak_fp32_conv_gflops"] for r in rows),
        "flops_forward_per_image": forward, "flops_train_per_image": step, "rounds": rows,
        "page_faults_per_step": _median(rows, "page_faults_per_step"),
        "system_time_share": _median(rows, "system_time_share"),
    }


def run_bench(cfg: NinConfig, opts: BenchOptions) -> dict:
    """Everything `nin bench --json` prints."""

    device = resolve_device(cfg.trainer.device)
    cfg, precision_why = with_precision(cfg, device)  # trainer.precision=auto: what a training here would use
    tr = cfg.trainer
    set_tf32(tr.tf32)
    if tr.num_threads:
        torch.set_num_threads(tr.num_threads)
    clock = clock_function(opts.clock, device)
    if opts.clock == "process":
        opts = replace(opts, workers=0)  # workers' CPU seconds would escape the process clock
    malloc_tuned = device.type == "cpu" and opts.tune_malloc and tune_malloc()
    torch.manual_seed(tr.seed)
    shape, classes = image_spec(cfg)
    try:
        flops = flops_per_image(cfg, shape, classes)
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"model does not fit image_shape={shape}: {one_line(err)}") from None
    p = build_pipelines(bench_config(cfg, opts.steps), opts, device)
    peak_size = opts.peak_size or (2048 if device.type == "cpu" else 8192)
    rows = run_rounds(p, opts.rounds, peak_size)
    peak_bf16 = matmul_peak(device, torch.bfloat16, peak_size, clock=clock) if bf16_supported(device) else None
    return summarize(rows, flops, peak_bf16, cfg) | {
        "model": cfg.model.name, "experiment": cfg.experiment, "image_shape": shape, "num_classes": classes,
        "params": sum(q.numel() for q in p.nin.model.parameters()), "batch_size": tr.batch_size,
        "eval_batch_size": tr.eval_batch_size, "precision": tr.precision, "precision_why": precision_why,
        "channels_last": tr.channels_last,
        "compile": tr.compile, "device": str(device), "device_name": device_name(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "malloc_tuned": malloc_tuned,
        "workers": opts.workers, "steps": opts.steps, "eval_batches": opts.eval_batches, "clock": opts.clock,
        "env": {k: v for k, v in os.environ.items() if k.startswith(TUNING_ENV)},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def profile_nin_step(cfg: NinConfig, opts: BenchOptions, rows: int = 20) -> str:
    """torch.profiler's table of the ops of one `train_one_epoch` (after a warm-up one), by self time."""
    from torch.profiler import ProfilerActivity, profile


    device = resolve_device(cfg.trainer.device)
    cfg, _ = with_precision(cfg, device)
    if opts.tune_malloc and device.type == "cpu":
        tune_malloc()
    p = build_pipelines(bench_config(cfg, opts.steps), replace(opts, conventional=False), device)
    time_nin_train(p)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        time_nin_train(p)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=rows, max_name_column_width=36,
                                                              max_shapes_column_width=48)


def print_report(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def num(value: float | None, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    r = result
    title = (f"{r['model']} {'×'.join(map(str, r['image_shape']))}, batch {r['batch_size']}, {r['precision']}, "
             f"{'channels_last' if r['channels_last'] else 'NCHW'}{', compiled' if r['compile'] else ''} on "
             f"{r['device_name']} ({r['device']}, {r['threads']} threads), torch {r['torch']}")
    table = Table(title=title)
    for column in ("pipeline", "train img/s", "eval img/s", "train GFLOP/s", "share of peak"):
        table.add_column(column, justify="left" if column == "pipeline" else "right")
    for label, key in (("nin (train_one_epoch, evaluate)", ""), ("bare PyTorch loop", "bare_"),
                       ("DataLoader + PIL transforms, NCHW", "conventional_")):
        table.add_row(label, num(r[f"{key}train_images_per_s"], ",.0f"), num(r[f"{key}eval_images_per_s"], ",.0f"),
                      num(r[f"{key}train_gflops"], ",.1f"), num(r[f"{key}peak_share"], ".1%"))
    console = Console()
    console.print(table)
    console.print(f"precision {r['precision']}: {r['precision_why']}", highlight=False, markup=False)
    console.print(f"matmul peak: fp32 {r['peak_fp32_gflops']:,.1f} GFLOP/s (oneDNN 3×3 conv: "
                  f"{r['peak_fp32_conv_gflops']:,.1f}; share of the faster: {r['peak_share_strict']:.1%}), bf16 "
                  f"{num(r['peak_bf16_gflops'], ',.1f')}{'' if r['peak_bf16_gflops'] else ' (no native bf16)'}; "
                  f"{r['flops_train_per_image'] / 1e9:.3f} GFLOP per training image, "
                  f"{r['flops_forward_per_image'] / 1e9:.3f} per eval image", highlight=False)
    console.print(f"nin / bare: train {num(r['bare_loop_ratio'], '.3f')}, eval {num(r['bare_loop_eval_ratio'], '.3f')}"
                  f"   nin / conventional: train {num(r['conventional_ratio'], '.2f')}, eval "
                  f"{num(r['conventional_eval_ratio'], '.2f')}   nin train / peak: {r['peak_share']:.1%}"
                  f"   (medians of {len(r['rounds'])} rounds)", highlight=False)
    console.print(f"nin step: {num(r['page_faults_per_step'], ',.0f')} page faults, "
                  f"{num(r['system_time_share'], '.1%')} of its CPU time in the kernel (malloc tuned: "
                  f"{r['malloc_tuned']}); clock: {r['clock']}", highlight=False)
