"""The typed config: one dataclass per Hydra group, composed from `conf/` and validated once.

`compose(overrides)` runs Hydra's composition, then `to_config` checks every key, type, range and choice
against the dataclasses below and returns a `NinConfig`. Nothing here imports torch, so a bad command line is
answered before the heavy imports.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any

from nin_cli.errors import ConfigError, UnknownKeyError
from nin_cli.files import one_line


def _choice(default: Any, *choices: Any) -> Any:
    return field(default=default, metadata={"choices": choices})


def _range(default: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Any:
    return field(default=default, metadata={"lo": lo, "hi": hi, "lo_open": lo_open})


def _list(*items: Any) -> Any:
    return field(default_factory=lambda: list(items))


SEED_MAX = 2**32 - 1
INT_MAX = 2**63 - 1  # what torch and NumPy take as an integer
DATASETS = ("cifar10", "cifar100", "svhn", "mnist", "imagefolder", "digits", "synthetic")


@dataclass
class DatasetConfig:
    name: str = _choice("cifar10", *DATASETS)
    root: str = "~/.cache/nin/data"
    download: bool = False
    # Shape and class count as the model sees them; null means "as the dataset's files say".
    image_shape: list[int] | None = None
    num_classes: int | None = _range(None, lo=1)
    val_size: int = _range(10000, lo=0)  # images taken from the END of train as validation (paper §4.1)
    train_on: str = _choice("train", "train", "train+val")
    preprocessing: str = _choice("mean_std", "none", "mean_std", "mean_image", "unit_mean_image", "gcn_zca",
                                           "gcn_lcn")
    gcn_scale: float = _range(55.0, lo=0, lo_open=True)
    # The preprocessed input times this factor (1: as the preprocessing defines it). The network is positively
    # homogeneous at a zero-bias init, so this scales its first logits and relative weight steps alike
    # (BENCHMARKS.md, "The MNIST plateau, measured").
    input_scale: float = _range(1.0, lo=0, lo_open=True, hi=1000.0)
    zca_bias: float = _range(0.1, lo=0, lo_open=True)  # > 0: GCN leaves the covariance singular
    translate: int = _range(0, lo=0, hi=16)  # pad-and-crop augmentation, pixels
    flip: bool = False
    labels: str = _choice("fine", "fine", "coarse")  # CIFAR-100 label set
    size: int = _range(512, lo=4)  # synthetic: number of images in all
    cache_dir: str = "~/.cache/nin/cache"  # decoded image folders, fitted ZCA
    svhn_extra: bool = True  # SVHN: train on train + extra (the paper) or train alone
    svhn_val_per_class: int = _range(400, lo=0)  # SVHN validation images per class taken from train
    svhn_extra_val_per_class: int = _range(200, lo=0)  # ... and from extra
    # Image folders: stored at resize × resize (the Caffe zoo's 256), the model sees image_shape crops of them
    # (training: random-resized crop, evaluation: the centre crop); null: stored at image_shape, used whole.
    resize: int | None = _range(None, lo=1)
    # Image folders: decoded once, then read from a uint8 file on disk batch by batch (nin_cli/stream.py) instead
    # of held whole in memory. auto: when the decoded images exceed stream_above_gb (words, not true/false: Hydra
    # would read those as booleans).
    stream: str = _choice("auto", "auto", "always", "never")
    stream_above_gb: float = _range(8.0, lo=0)
    workers: int = _range(2, lo=0, hi=64)  # streaming: reader (and one-time decoder) processes


@dataclass
class BlockConfig:
    kernel: int = _range(3, lo=1)
    stride: int = _range(1, lo=1)
    padding: int = _range(1, lo=0)
    # Output channels of the k×k conv, then of each 1×1 conv. A null last width means "one map per class".
    widths: list[int | None] = _list(192, 192, None)
    pool: str = _choice("max", "max", "avg", "none")
    pool_kernel: int = _range(3, lo=1)
    pool_stride: int = _range(2, lo=1)
    dropout: bool = True  # dropout after this block (the paper: every mlpconv but the last)
    layer: str = _choice("conv", "conv", "local")  # the k×k layer: shared weights, or locally connected (unshared)


@dataclass
class ModelConfig:
    name: str = "nin"
    arch: str = _choice("nin", "nin", "cnn")  # cnn: a conventional CNN, one k×k layer per block (paper §4.6)
    blocks: list[BlockConfig] = field(default_factory=lambda: [BlockConfig()])
    micro_depth: int | None = _range(None, lo=0, hi=16)  # 1×1 layers per block; null: as the widths list
    dropout: float = _range(0.5, lo=0, hi=1)
    # classic: the authors' (no rescaling while training, × (1 − p) at test); inverted: PyTorch's (÷ (1 − p) while
    # training). Same test-time function, different training dynamics (README, "Reproduction").
    dropout_style: str = _choice("inverted", "inverted", "classic")
    batch_norm: bool = False
    final_relu: bool = True  # the paper keeps the ReLU on the class maps before global pooling
    init: str = _choice("paper", "paper", "kaiming")
    init_std: float = _range(0.05, lo=0, lo_open=True)
    init_std_overrides: dict[str, float] = field(default_factory=dict)  # per layer: conv1, cccp1, ...


@dataclass
class HeadConfig:
    type: str = _choice("gap", "gap", "fc", "fc_dropout")
    hidden: list[int] = field(default_factory=list)  # fc heads: hidden linear widths before the classifier
    dropout: float = _range(0.5, lo=0, hi=1)


@dataclass
class OptimConfig:
    name: str = _choice("sgd", "sgd", "adamw")
    lr: float = _range(0.1, lo=0, lo_open=True)
    momentum: float = _range(0.9, lo=0, hi=1)
    nesterov: bool = False
    weight_decay: float = _range(1e-4, lo=0)  # weights only; biases and batch-norm parameters get none
    bias_lr_mult: float = _range(2.0, lo=0)
    last_layer_lr_mult: float = _range(0.1, lo=0)
    betas: list[float] = _list(0.9, 0.999)


@dataclass
class ScheduleConfig:
    name: str = _choice("paper_plateau", "constant", "milestones", "paper_plateau", "cosine", "onecycle")
    milestones: list[int] = _list(200, 230)  # epochs at which lr is multiplied by gamma
    gamma: float = _range(0.1, lo=0, lo_open=True)
    patience: int = _range(5, lo=1)  # paper_plateau: epochs without a better training accuracy
    min_delta: float = _range(0.0, lo=0)
    max_drops: int = _range(2, lo=0)  # paper_plateau: drops before the next plateau ends training
    warmup_epochs: float = _range(0.0, lo=0)
    final_lr_mult: float = _range(0.0, lo=0, hi=1)  # cosine / onecycle floor
    pct_start: float = _range(0.25, lo=0, hi=1)  # onecycle: share of training spent rising
    # milestones / paper_plateau: whether a drop also divides the biases' lr. The authors lower only epsW (README
    # of mavenlin/cuda-convnet, NIN/: "changing all the epsW to one tenth"), so the paper presets set false.
    drop_bias_lr: bool = True
    # cosine / onecycle: progress is the share of trainer.max_time spent (the checkpoint's elapsed time), not of
    # trainer.epochs, so the lr reaches its floor at the deadline on any host; trainer.epochs stays a cap
    by_time: bool = False

    def __post_init__(self) -> None:
        if self.by_time and self.name not in ("cosine", "onecycle"):
            raise ConfigError(f"schedule.by_time=true: schedule={self.name} has no time form; use schedule=cosine "
                              "or schedule=onecycle")


@dataclass
class TrainerConfig:
    epochs: int = _range(260, lo=1)
    batch_size: int = _range(128, lo=1)
    eval_batch_size: int = _range(500, lo=1)
    max_steps_per_epoch: int | None = _range(None, lo=1)  # cap for smoke runs
    device: str = _choice("auto", "auto", "cpu", "cuda", "mps")
    # auto: bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16 / AMX), fp32 elsewhere and for the paper
    # presets (runtime.resolve_precision; nin bench / nin info say what it chose and why)
    precision: str = _choice("fp32", "fp32", "bf16", "fp16", "auto")
    channels_last: bool = True
    tf32: bool = False  # CUDA: TF32 tensor cores for fp32 matmuls and convolutions (10-bit mantissa products)
    compile: bool = False
    # reduce-overhead: torch.compile with CUDA graphs on a GPU (launch overhead dominates NIN's small 32×32 convs at
    # batch 128; runtime.compiled); on the CPU it compiles as default does
    compile_mode: str = _choice("default", "default", "reduce-overhead", "max-autotune")
    num_threads: int | None = _range(None, lo=1)
    seed: int = _range(0, lo=0, hi=SEED_MAX)  # NumPy's seeds are 32-bit
    deterministic: bool = False
    label_smoothing: float = _range(0.0, lo=0, hi=1)
    log_every: int = _range(50, lo=1)  # steps between TensorBoard step scalars (and host syncs)
    collapse_epochs: int = _range(5, lo=0)  # stop (exit 5) after this many epochs at chance; 0 disables
    # stop (exit 5) once every image has got the same output for this many steps in a row (a collapse); 0 disables
    collapse_steps: int = _range(30, lo=0)
    # after a collapse, start the run again with the next trainer.seed, at most this many times (0: stop, exit 5)
    collapse_restarts: int = _range(0, lo=0, hi=100)
    progress: str = _choice("auto", "auto", "rich", "plain", "none")
    checkpoint_every_steps: int | None = _range(None, lo=1)  # also save last.pt mid-epoch; null: at epoch ends
    devices: int = _range(1, lo=1)  # processes (one per GPU): DDP through torch.distributed.run (README, "Scaling out")
    # Both end with a normal summary (exit 0) that says why (summary.json `stopped_because`):
    max_time: float | None = _range(None, lo=0, lo_open=True)  # seconds of training, resumes included; null: none
    early_stop_patience: int = _range(0, lo=0)  # stop after this many epochs without a better val error; 0: never
    progress_every_s: float = _range(30.0, lo=0, lo_open=True)  # trainer.progress=plain: a line this often
    # An exponential moving average of the weights (torch.optim.swa_utils.AveragedModel), updated after every step
    # from ema_start_step on, evaluated beside the raw weights each epoch; null: off
    ema_decay: float | None = _range(None, lo=0, hi=1, lo_open=True)
    ema_start_step: int = _range(0, lo=0)
    # Also keep epoch checkpoints (checkpoints/epoch_NNNN.pt, hard links to that epoch's last.pt): the last k, and
    # every N-th; 0: none
    keep_last: int = _range(0, lo=0)
    keep_every: int = _range(0, lo=0)
    # Fine-tuning (finetune.py; README "Your own data"): start from another checkpoint's weights, loaded safely,
    # weights only (this run's config is the command line's); layers whose shape differs (the class maps, for
    # another class count) and those in init_reset keep this run's init. A resume never re-applies it.
    init_from: str | None = None
    init_reset: list[str] = field(default_factory=list)  # blocks (block3) or layers (conv1, cccp4, fc1)
    freeze: list[str] = field(default_factory=list)  # blocks or layers left as loaded: never updated


@dataclass
class NinConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    experiment: str = ""  # name of the preset this run came from, for tables and summaries
    resume: str | None = None  # a run directory or checkpoint file to continue (see README, "Reliability")


GROUPS = ("dataset", "model", "head", "optim", "schedule", "trainer", "experiment")


# ----------------------------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping to {_type_name(typing.get_args(tp)[1])}"
    if is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def unknown_key(path: str, key: str, known: list[str]) -> UnknownKeyError:
    full = f"{path}.{key}" if path else key
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean '{full.rsplit('.', 1)[0] + '.' if path else ''}{near[0]}'?)" if near else ""
    return UnknownKeyError(f"unknown config key '{full}'{hint}; valid keys here: {', '.join(known)}")


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if value == "???":  # OmegaConf's mandatory-value marker, left unset in a config file or on the command line
        raise ConfigError(f"{path} is missing (???): set it, e.g. {path}=VALUE, expected {_type_name(tp)}")
    bad = ConfigError(f"{path}={value!r}: expected {_type_name(tp)}")
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(inner, value, path)
    if value is None:
        raise ConfigError(f"{path} is missing: expected {_type_name(tp)}")
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, path)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise bad
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {str(k): _coerce(typing.get_args(tp)[1], v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > INT_MAX:
                raise ConfigError(f"{path}={value}: out of range, an integer must fit in 64 bits")
            return value
        raise bad
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if value != value or value in (float("inf"), float("-inf")):
                raise ConfigError(f"{path}={value!r}: expected a finite number")
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise bad


def _check_metadata(f: Any, value: Any, path: str) -> None:
    meta = f.metadata
    if "choices" in meta and value not in meta["choices"]:
        near = difflib.get_close_matches(str(value), [str(c) for c in meta["choices"]], n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"{path}={value!r}: must be one of {', '.join(map(str, meta['choices']))}{hint}")
    if value is None or not isinstance(value, int | float):
        return
    lo, hi, lo_open = meta.get("lo"), meta.get("hi"), meta.get("lo_open")
    if (lo is not None and (value < lo or (lo_open and value == lo))) or (hi is not None and value > hi):
        lo_s = "-inf" if lo is None else lo
        hi_s = "inf" if hi is None else hi
        raise ConfigError(f"{path}={value!r}: out of range, allowed {'(' if lo_open else '['}{lo_s}, {hi_s}]")


def _build(cls: type, node: dict, path: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    for key in node:
        if key not in known:
            raise unknown_key(path, str(key), known)
    kwargs = {}
    for f in fields(cls):
        sub = f"{path}.{f.name}" if path else f.name
        if f.name not in node:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{sub} is missing: expected {_type_name(hints[f.name])}")
            continue
        if type(node[f.name]) is int and int in (hints[f.name], *typing.get_args(hints[f.name])):
            _check_metadata(f, node[f.name], sub)  # an integer field's own range before the 64-bit limit
        value = _coerce(hints[f.name], node[f.name], sub)
        _check_metadata(f, value, sub)
        kwargs[f.name] = value
    return cls(**kwargs)


def _check_consistency(cfg: NinConfig) -> None:
    blocks = cfg.model.blocks
    if not blocks:
        raise ConfigError("model.blocks is empty: a NIN needs at least one mlpconv block")
    for i, block in enumerate(blocks):
        if not block.widths:
            raise ConfigError(f"model.blocks[{i}].widths is empty: give the k×k conv's width at least")
        if any(w is None for w in block.widths[:-1]) or (block.widths[-1] is None and i != len(blocks) - 1):
            raise ConfigError(f"model.blocks[{i}].widths={block.widths}: only the last block's last width "
                              "may be null (one map per class)")
        if any(w is not None and w < 1 for w in block.widths):
            raise ConfigError(f"model.blocks[{i}].widths={block.widths}: widths must be >= 1")
        if cfg.model.arch == "cnn" and len(block.widths) != 1:
            raise ConfigError(f"model.blocks[{i}].widths={block.widths}: model.arch=cnn blocks are one k×k layer, "
                              "give one width")
    if cfg.model.arch == "cnn" and cfg.model.micro_depth:
        raise ConfigError(f"model.micro_depth={cfg.model.micro_depth}: model.arch=cnn has no 1×1 layers; leave it null")
    if cfg.dataset.train_on == "train+val" and cfg.dataset.val_size == 0:
        raise ConfigError("dataset.train_on=train+val needs dataset.val_size > 0 (there is no val split to add)")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas={cfg.optim.betas}: expected two numbers")
    shape = cfg.dataset.image_shape
    if shape is not None and len(shape) != 3:
        raise ConfigError(f"dataset.image_shape={shape}: expected [channels, height, width]")
    if shape is not None and min(shape) < 1:
        raise ConfigError(f"dataset.image_shape={shape}: channels, height and width must each be >= 1")
    if shape is not None:
        _check_fits(cfg.model, shape)
    _check_resources(cfg)
    if cfg.trainer.seed + 1000 * cfg.trainer.collapse_restarts > SEED_MAX:  # train.restart_seed's stride
        raise ConfigError(f"trainer.seed={cfg.trainer.seed}: with trainer.collapse_restarts="
                          f"{cfg.trainer.collapse_restarts} the seeds run past {SEED_MAX} (NumPy's limit)")
    if cfg.schedule.by_time and cfg.trainer.max_time is None:
        raise ConfigError("schedule.by_time=true anneals to the deadline: set trainer.max_time=SECONDS")
    if cfg.schedule.by_time and cfg.trainer.devices > 1:  # each process's clock would give its own lr
        raise ConfigError(f"schedule.by_time=true runs in one process: trainer.devices={cfg.trainer.devices}")
    devices = cfg.trainer.devices
    if devices > 1 and cfg.trainer.collapse_restarts:  # each rank's fit would need to restart in step: not built
        raise ConfigError(f"trainer.collapse_restarts={cfg.trainer.collapse_restarts} runs in one process; with "
                          f"trainer.devices={devices} set trainer.collapse_restarts=0 (the step guard still stops "
                          "a collapse with exit 5)")
    if devices > 1 and cfg.trainer.batch_size % devices:
        raise ConfigError(f"trainer.batch_size={cfg.trainer.batch_size} is the global batch: it must divide evenly "
                          f"over trainer.devices={devices}")
    if devices > 1 and cfg.trainer.device == "mps":
        raise ConfigError("trainer.devices > 1 needs CUDA (NCCL) or the CPU (gloo); MPS has no distributed backend")


def _check_fits(model: ModelConfig, shape: list[int]) -> list[tuple[list[int], list[int]]]:
    """Each block's k×k layer and pooling leave at least one pixel: the sizes torch computes (conv: floor, pooling:
    ceil mode), so a model that does not fit the images is a config error, not a crash once training starts.
    Returns each block's map size after its k×k layer and after its pooling."""
    size, sizes = list(shape[1:]), []
    for i, block in enumerate(model.blocks):
        if any(s + 2 * block.padding < block.kernel for s in size):
            raise ConfigError(f"model does not fit dataset.image_shape={shape}: model.blocks[{i}] gets "
                              f"{size[0]}×{size[1]} maps, smaller than its {block.kernel}×{block.kernel} kernel "
                              f"(padding {block.padding}); use larger images or fewer blocks")
        size = [(s + 2 * block.padding - block.kernel) // block.stride + 1 for s in size]
        conv = size
        if block.pool != "none":
            k, st = block.pool_kernel, block.pool_stride
            pooled = [(s - k + st - 1) // st + 1 for s in size]
            pooled = [p - 1 if (p - 1) * st >= s else p for p, s in zip(pooled, size, strict=True)]
            if min(pooled) < 1:
                raise ConfigError(f"model does not fit dataset.image_shape={shape}: model.blocks[{i}]'s "
                                  f"{k}×{k} pooling gets {size[0]}×{size[1]} maps and leaves nothing; use larger "
                                  "images or fewer blocks")
            size = pooled
        sizes.append((conv, size))
    return sizes


# ------------------------------------------------------------------------------------------------ resources

# More memory than any machine nin targets has: a config asking for it is a typo (dataset.size=1e9, a width of
# 1e7), refused before anything is allocated or written rather than found by the allocator after a run directory
# exists. Estimates are rough (within a few times); only the clearly absurd is refused.
MEMORY_LIMIT = 2**40  # bytes (1 TiB)
TRAIN_SIZES = {"cifar10": 50000, "cifar100": 50000, "mnist": 60000, "svhn": 604388, "digits": 1797}


def _gib(n: float) -> str:
    return f"{n / 2**40:.1f} TiB" if n >= 2**40 else f"{n / 2**30:.1f} GiB"


def _check_resources(cfg: NinConfig) -> None:
    """Refuse (exit 2) what could not fit in MEMORY_LIMIT: the synthetic images as they are built, or the model's
    weights, gradients and optimizer state with one batch's activations."""
    data, classes = cfg.dataset, cfg.dataset.num_classes or 10  # datasets.py's defaults for synthetic images
    if data.name == "synthetic":  # float32 noise and prototypes, uint8 images, int64 labels and permutation
        shape = data.image_shape or [3, 32, 32]
        need = (data.size + classes) * shape[0] * shape[1] * shape[2] * 9 + data.size * 16
        if need > MEMORY_LIMIT:
            raise ConfigError(f"dataset.size={data.size}, dataset.num_classes={classes}: synthetic images of "
                              f"{'×'.join(map(str, shape))} and their class prototypes need about {_gib(need)} of "
                              f"memory to build, more than {_gib(MEMORY_LIMIT)}; use a smaller dataset.size, "
                              "dataset.num_classes or dataset.image_shape")
    shape = data.image_shape
    if shape is None:  # as the dataset's files say: known once they are read
        return
    params, activations = _model_size(cfg.model, cfg.head, shape, classes)
    size = data.size if data.name == "synthetic" else TRAIN_SIZES.get(data.name)
    batch = min(cfg.trainer.batch_size, size) if size else cfg.trainer.batch_size
    # weights, gradients and two optimizer moments (4 × 4 bytes); activations kept for the backward pass (× 2)
    need = 16 * params + 4 * activations * max(2 * batch, cfg.trainer.eval_batch_size)
    if need > MEMORY_LIMIT:
        raise ConfigError(f"the model needs about {_gib(need)} of memory to train ({params:,} parameters, "
                          f"{activations:,} activations per image, trainer.batch_size={cfg.trainer.batch_size}), "
                          f"more than {_gib(MEMORY_LIMIT)}; check model.blocks widths, dataset.image_shape="
                          f"{shape} and dataset.num_classes={classes}")


def _model_size(model: ModelConfig, head: HeadConfig, shape: list[int], classes: int) -> tuple[int, int]:
    """Parameters (weights; biases are too few to matter) and activations per image, layer by layer."""
    params, activations, channels = 0, 0, shape[0]
    depth = None if model.arch == "cnn" else model.micro_depth
    for block, (conv, pooled) in zip(model.blocks, _check_fits(model, shape), strict=True):
        widths = [classes if w is None else w for w in block_widths(block.widths, depth)]
        positions = conv[0] * conv[1]
        local = positions if block.layer == "local" else 1
        for i, width in enumerate(widths):
            params += channels * width * (block.kernel**2 * local if i == 0 else 1)
            activations += 2 * width * positions  # the layer's output and its ReLU's or batch norm's
            channels = width
        activations += 2 * channels * pooled[0] * pooled[1]  # pooling's output and dropout's mask
    flat = channels * pooled[0] * pooled[1]
    for width in ([] if head.type == "gap" else [*head.hidden, classes]):
        params, flat = params + flat * width, width
    return params, activations


def block_widths(widths: list[int | None], micro_depth: int | None) -> list[int | None]:
    """The widths a block uses when `micro_depth` asks for a given number of 1×1 layers.

    The block's output width (the last entry) is kept so neighbouring blocks still fit. Intermediate 1×1 widths
    are truncated from the end, or extended by repeating the last intermediate width (the k×k conv's width when
    there is none). micro_depth=0 leaves the k×k conv alone, emitting the block's output width.
    """
    if micro_depth is None or micro_depth == len(widths) - 1:
        return list(widths)
    if micro_depth == 0:
        return [widths[-1]]
    hidden = list(widths[1:-1])
    filler = hidden[-1] if hidden else widths[0]
    hidden = (hidden + [filler] * micro_depth)[: micro_depth - 1]
    return [widths[0], *hidden, widths[-1]]


def to_config(node: Any) -> NinConfig:
    """Validate a composed config (DictConfig or plain dict; a `hydra` key is ignored) into a NinConfig."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(node, DictConfig):
        try:
            node = OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as err:
            raise ConfigError(f"config could not be resolved: {one_line(str(err))}") from None
    node = {k: v for k, v in dict(node).items() if k != "hydra"}
    cfg = _build(NinConfig, node, "")
    _check_consistency(cfg)
    return cfg


def to_dict(cfg: NinConfig) -> dict:
    from dataclasses import asdict

    return asdict(cfg)
