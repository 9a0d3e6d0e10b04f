"""The typed config: one dataclass per Hydra group, composed from `conf/` and validated once.

`compose(overrides)` runs Hydra's composition, then `to_config` checks every key, type, range and choice
against the dataclasses below and returns a `NinConfig`. Nothing here imports torch, so a bad command line is
answered before the heavy imports.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from nin_cli.errors import ConfigError, DataError, UnknownKeyError, UnsafeFileError
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
    zca_bias: float = _range(0.1, lo=0, lo_open=True)  # > 0: GCN leaves the covariance singular
    translate: int = _range(0, lo=0, hi=16)  # pad-and-crop augmentation, pixels
    flip: bool = False
    labels: str = _choice("fine", "fine", "coarse")  # CIFAR-100 label set
    size: int = _range(512, lo=4)  # synthetic: number of images in all
    cache_dir: str = "~/.cache/nin/cache"  # decoded image folders, fitted ZCA
    svhn_extra: bool = True  # SVHN: train on train + extra (the paper) or train alone
    svhn_val_per_class: int = _range(400, lo=0)  # SVHN validation images per class taken from train
    svhn_extra_val_per_class: int = _range(200, lo=0)  # ... and from extra


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


def config_dir() -> Path:
    """$NIN_CONFIG_DIR when set (it replaces all of conf/); else the package's own nin_cli/conf (a wheel ships
    conf/ there); else conf/ at the top of the checkout (an editable install runs from src/nin_cli/)."""
    env = os.environ.get("NIN_CONFIG_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return packaged if packaged.is_dir() else here.parents[1] / "conf"


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


def _unknown_key(path: str, key: str, known: list[str]) -> UnknownKeyError:
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
            raise _unknown_key(path, str(key), known)
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
    if cfg.trainer.seed + 1000 * cfg.trainer.collapse_restarts > SEED_MAX:  # train.restart_seed's stride
        raise ConfigError(f"trainer.seed={cfg.trainer.seed}: with trainer.collapse_restarts="
                          f"{cfg.trainer.collapse_restarts} the seeds run past {SEED_MAX} (NumPy's limit)")
    if cfg.schedule.by_time and cfg.trainer.max_time is None:
        raise ConfigError("schedule.by_time=true anneals to the deadline: set trainer.max_time=SECONDS")
    if cfg.schedule.by_time and cfg.trainer.devices > 1:  # each process's clock would give its own lr
        raise ConfigError(f"schedule.by_time=true runs in one process: trainer.devices={cfg.trainer.devices}")
    devices = cfg.trainer.devices
    if devices > 1 and cfg.trainer.batch_size % devices:
        raise ConfigError(f"trainer.batch_size={cfg.trainer.batch_size} is the global batch: it must divide evenly "
                          f"over trainer.devices={devices}")
    if devices > 1 and cfg.trainer.device == "mps":
        raise ConfigError("trainer.devices > 1 needs CUDA (NCCL) or the CPU (gloo); MPS has no distributed backend")


def _check_fits(model: ModelConfig, shape: list[int]) -> None:
    """Each block's k×k layer and pooling leave at least one pixel: the sizes torch computes (conv: floor, pooling:
    ceil mode), so a model that does not fit the images is a config error, not a crash once training starts."""
    size = list(shape[1:])
    for i, block in enumerate(model.blocks):
        if any(s + 2 * block.padding < block.kernel for s in size):
            raise ConfigError(f"model does not fit dataset.image_shape={shape}: model.blocks[{i}] gets "
                              f"{size[0]}×{size[1]} maps, smaller than its {block.kernel}×{block.kernel} kernel "
                              f"(padding {block.padding}); use larger images or fewer blocks")
        size = [(s + 2 * block.padding - block.kernel) // block.stride + 1 for s in size]
        if block.pool != "none":
            k, st = block.pool_kernel, block.pool_stride
            pooled = [(s - k + st - 1) // st + 1 for s in size]
            pooled = [p - 1 if (p - 1) * st >= s else p for p, s in zip(pooled, size, strict=True)]
            if min(pooled) < 1:
                raise ConfigError(f"model does not fit dataset.image_shape={shape}: model.blocks[{i}]'s "
                                  f"{k}×{k} pooling gets {size[0]}×{size[1]} maps and leaves nothing; use larger "
                                  "images or fewer blocks")
            size = pooled


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


# ---------------------------------------------------------------------------------------------- composition


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml")) + sorted(
        f"{d.name}/{p.stem}" for d in (config_dir() / group).glob("*/") for p in d.glob("*.yaml")
    )


def schema_keys(cls: type = NinConfig, prefix: str = "") -> list[str]:
    """Every settable dotted key of the schema (lists of blocks are set whole: model.blocks)."""
    keys = []
    for f in fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        keys += schema_keys(tp, f"{prefix}{f.name}.") if is_dataclass(tp) else [prefix + f.name]
    return keys


def completions(args: list[str], incomplete: str) -> list[str]:
    """Shell completion of an override: config groups and schema keys (`dataset=`, `trainer.epochs=`), then a
    group's options. bash splits words at '=' (the word before the one being completed is then "="); zsh and fish
    keep `dataset=ci` whole."""
    if len(args) >= 2 and args[-1] == "=" and args[-2] in GROUPS:
        return [o for o in group_options(args[-2]) if o.startswith(incomplete)]
    key, eq, partial = incomplete.partition("=")
    if eq:
        return [f"{key}={o}" for o in group_options(key) if o.startswith(partial)] if key in GROUPS else []
    keys = dict.fromkeys([f"{g}=" for g in GROUPS] + [f"{k}=" for k in schema_keys()])
    return [k for k in keys if k.startswith(incomplete)]


def hydra_error(err: Exception) -> ConfigError:
    """Turn Hydra's multi-line composition errors into one line naming the key, value and what is allowed."""
    import yaml

    if isinstance(err, yaml.YAMLError | UnicodeDecodeError):
        return _broken_config_file(err)
    if isinstance(err, RecursionError):
        return ConfigError("bad override or config: nested too deeply to read")
    from hydra.errors import HydraException, MissingConfigException

    if isinstance(err, OSError) and not isinstance(err, HydraException):  # Hydra looked up a name no file can have
        return ConfigError(f"bad override or config: Hydra could not look it up as a config file "
                           f"({err.strerror or type(err).__name__})")
    if isinstance(err, MissingConfigException) and "/" in (err.missing_cfg_file or ""):
        return _no_such_option(*err.missing_cfg_file.rsplit("/", 1))
    # The rest arrive as a bare ConfigCompositionException (hydra-core 1.3.8): no attribute holds the override's
    # key or what went wrong, so its message is the only source. tests/test_hostile_input.py pins each case.
    text = str(err)
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)  # a group option inside a defaults list
    if missing:
        return _no_such_option(*missing.groups())
    override = re.search(r"Could not override '([^']+)'", text) or re.search(
        r"Key '([^']+)' is not in struct", text)
    if override:
        key = override.group(1)
        parent, _, leaf = key.rpartition(".")
        known = _known_keys(parent)
        if known is not None:
            return _unknown_key(parent, leaf, known)
        return _unknown_path(key)
    added = re.search(r"Multiple values for (\S+)\. To override a value use 'override \S+: (\S+)'", text)
    if added:
        group, option = added.groups()
        return ConfigError(f"'+{group}={option}': {group} is already in the defaults list; write {group}={option} "
                           "(no '+')")
    if "Ambiguous value" in text or "add --multirun" in text:
        return ConfigError("a comma-separated value asks for several runs: use `nin sweep` for that")
    cause = err.__cause__ or err.__context__
    detail = one_line(str(cause)) if cause is not None and str(cause) else one_line(text)
    return ConfigError(f"bad override or config: {detail.split(' Config search path:')[0][:300]}")


def _no_such_option(group: str, option: str) -> ConfigError:
    options = group_options(group)
    near = difflib.get_close_matches(option, options, n=1)
    hint = f" (did you mean '{group}={near[0]}'?)" if near else ""
    return ConfigError(f"{group}={option}: no such option{hint}; choose one of: {', '.join(options)}")


def _unknown_path(key: str) -> UnknownKeyError:
    """An unknown dotted key whose first wrong part is not the last ('trainr.epochs'): correct that part."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        known = _known_keys(".".join(parts[:i]))
        if known is None:
            break
        if part not in known:
            near = difflib.get_close_matches(part, known, n=1, cutoff=0.6)
            if near:
                fixed = ".".join([*parts[:i], near[0], *parts[i + 1:]])
                return UnknownKeyError(f"unknown config key '{key}' (did you mean '{fixed}'?)")
            break
    return UnknownKeyError(f"unknown config key '{key}'")


def _broken_config_file(err: Exception) -> ConfigError:
    """A YAML or encoding error while composing: Hydra does not say in which file, so find it and say where."""
    import yaml
    from omegaconf import OmegaConf

    def signature(e: Exception) -> tuple:
        mark = getattr(e, "problem_mark", None)
        return (type(e), getattr(e, "problem", str(e)), mark and (mark.line, mark.column))

    found: list[ConfigError] = []
    for path in sorted(config_dir().rglob("*.yaml")):  # the file that fails the same way, else the first broken
        try:
            OmegaConf.load(path)
        except (yaml.YAMLError, UnicodeDecodeError, ValueError) as bad:
            mark = getattr(bad, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = one_line(getattr(bad, "problem", None) or str(bad))[:160]
            found.insert(0 if signature(bad) == signature(err) else len(found),
                         ConfigError(f"{path}: invalid YAML: {problem}{where}"))
    return found[0] if found else ConfigError(f"invalid YAML in an override: {one_line(str(err))[:200]}")


def _field_type(dotted: str) -> Any:
    """The schema's type at a dotted path (None when the path is not in the schema)."""
    tp: Any = NinConfig
    for part in dotted.split("."):
        if typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
        if not is_dataclass(tp) or part not in typing.get_type_hints(tp):
            return None
        tp = typing.get_type_hints(tp)[part]
    return tp


def _known_keys(dotted: str) -> list[str] | None:
    cls: Any = NinConfig
    for part in filter(None, dotted.split(".")):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        tp = hints[part]
        if typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
        cls = tp
    return [f.name for f in fields(cls)] if is_dataclass(cls) else None


_SWEEP_VALUE = re.compile(r"^[^=]+=(?:[^\[\]{}()'\"]*,|.*\b(range|choice|interval|glob)\()")


MAX_KEY_CHARS = 200  # a dotted key; longer ones are no key of nin's (and Hydra would look for them as files)
MAX_NESTING = 32  # brackets and braces inside one override value (the deepest config, model.blocks, needs 3)


def _nesting(value: str) -> int:
    depth = deepest = 0
    for char in value:
        if char in "[{(":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]})":
            depth -= 1
    return deepest


def check_overrides(overrides: list[str], allow_sweep: bool = False) -> None:
    for item in overrides:
        key = item.split("=", 1)[0]
        if len(key) > MAX_KEY_CHARS:
            raise ConfigError(f"bad override: a key of {len(key):,} characters ('{key[:40]}...'); keys are dotted "
                              "names such as trainer.epochs")
        if _nesting(item) > MAX_NESTING:
            raise ConfigError(f"bad override '{item[:40]}...': nested {_nesting(item):,} levels deep (at most "
                              f"{MAX_NESTING})")
        if item in ("-m", "--multirun"):
            raise ConfigError(f"'{item}' is Hydra's multirun: use `nin sweep OVERRIDES...` for several runs")
        if item in ("--cfg", "-c", "--info", "-i") or item.startswith(("--cfg=", "--info=")):
            raise ConfigError(f"'{item}' is Hydra's config printer: use `nin info OVERRIDES...` (`--json` for a "
                              "machine-readable resolved config)")
        if item.startswith("-"):
            raise ConfigError(f"unknown option '{item}'; overrides look like key=value (see `nin --help`)")
        if "=" not in item:
            raise ConfigError(f"'{item}' is not an override: expected key=value, e.g. trainer.epochs=10")
        if not allow_sweep and _SWEEP_VALUE.match(item):
            raise ConfigError(f"'{item}' asks for several runs: use `nin sweep {item}` for that")


def _mentions_target(value: Any) -> bool:
    """Whether a parsed override value carries Hydra's `_target_` anywhere (a key or text of a nested value)."""
    if isinstance(value, dict):
        return any("_target_" in str(k) or _mentions_target(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_mentions_target(v) for v in value)
    return "_target_" in str(value)


def check_replayed_overrides(items: list[Any], source: Path) -> list[str]:
    """The overrides a run directory asks to replay (its `.hydra/overrides.yaml`), checked as untrusted input.

    Hydra instantiates `hydra.callbacks.*._target_` and any `_target_` it is handed, so a shared run directory
    could run code through them. A replayed override may set only nin's own schema keys and pick a group option
    that exists in `conf/`; anything under `hydra`, any `_target_`, or any unknown key is refused (exit 4) before
    anything is composed, instantiated or created. A file that is not a list of overrides is damage (exit 3)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise DataError(f"{source}: not a list of overrides; repair or remove it to resume this run")
    try:
        parsed = OverridesParser.create().parse_overrides(items)
    except (HydraException, RecursionError) as err:
        raise DataError(f"{source}: unreadable override ({one_line(str(err))[:160]}); repair or remove it") from None
    for o in parsed:
        key = o.key_or_group
        value = o.value() if not o.is_delete() else None
        parent = key.rpartition(".")[0]
        if key in GROUPS:
            allowed = o.package is None and isinstance(value, str) and value in group_options(key)
        else:
            mapping = bool(parent) and typing.get_origin(_field_type(parent)) is dict  # init_std_overrides.conv1
            allowed = _field_type(key) is not None or mapping
        if key.split(".")[0].split("/")[0] == "hydra" or "_target_" in key or _mentions_target(value) or not allowed:
            raise UnsafeFileError(f"{source}: refused override '{one_line(o.input_line)[:120]}': a run directory may "
                                  "only set nin's own config keys (nothing under hydra, no _target_); nothing was run")
    return list(items)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _grammar(value: Any, source: Path) -> str:
    """A validated config value in Hydra's override grammar (strings quoted, so nothing in them is syntax)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)  # Hydra: only \ before a quote
        return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped) + "'"
    if isinstance(value, list):
        return "[" + ",".join(_grammar(v, source) for v in value) + "]"
    if isinstance(value, dict):
        bad = [k for k in value if not _NAME.fullmatch(str(k))]
        if bad:
            raise DataError(f"{source}: its stored config has the key {str(bad[0])[:40]!r}, not a name")
        return "{" + ",".join(f"{k}:{_grammar(v, source)}" for k, v in value.items()) + "}"
    raise DataError(f"{source}: its stored config holds a {type(value).__name__}")


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (str(k), *_strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def stored_config_overrides(stored: Any, source: Path) -> list[str]:
    """The config a checkpoint stores, as overrides that compose it again: `resume=CKPT` of a checkpoint outside a
    run directory continues with the config it was trained with. The stored config is untrusted input: anything
    for Hydra (a `hydra` key, `_target_`, an interpolation) is refused (exit 4), anything the schema refuses is a
    checkpoint that is not what it claims (exit 3); only validated values are written back, quoted."""
    if not isinstance(stored, dict):
        raise DataError(f"{source}: a nin checkpoint without its config")
    if "hydra" in stored or any("_target_" in s or "${" in s for s in _strings(stored)):
        raise UnsafeFileError(f"{source}: refused, its stored config sets Hydra keys, _target_ or an interpolation "
                              "(only nin's own config values may be stored); nothing was run")
    try:
        cfg = to_config({k: v for k, v in stored.items() if k != "resume"})
    except ConfigError as err:
        raise DataError(f"{source}: its stored config is not valid for this nin ({err})") from None
    items = [f"experiment={cfg.experiment}"] if cfg.experiment in group_options("experiment") else []
    values = to_dict(cfg)
    for group in ("dataset", "model", "head", "optim", "schedule", "trainer"):
        for key, value in values[group].items():
            if isinstance(value, dict):  # a mapping given as an override is merged into the group's: clear it first
                items.append(f"{group}.{key}=null")
            items.append(f"{group}.{key}={_grammar(value, source)}")
    return items


def _quote_home(item: str) -> str:
    """Hydra's grammar has no '~': quote a home path (dataset.root=~/data, which the shell leaves as is)."""
    key, sep, value = item.partition("=")
    return f"{key}='{value}'" if sep and value.startswith("~") and not set("'\"\\") & set(value) else item


def schema_overrides(overrides: list[str]) -> list[str]:
    """`group.key=value` for a key the schema knows but the group's YAML may leave out (trainer.num_threads) becomes
    Hydra's add-or-override `++group.key=value`, so every documented key is settable without a '+'."""
    out = []
    for item in map(_quote_home, overrides):
        key = item.split("=", 1)[0]
        parent, _, leaf = key.rpartition(".")
        known = _known_keys(parent) if parent and not key.startswith(("+", "~", "hydra.")) else None
        mapping = known is None and parent and typing.get_origin(_field_type(parent)) is dict  # init_std_overrides.x
        out.append(f"++{item}" if (known is not None and leaf in known) or mapping else item)
    return out


def compose(overrides: list[str], run_mode: str = "run", with_hydra: bool = False) -> Any:
    """Compose `conf/config.yaml` with the overrides through Hydra; return the DictConfig (with `hydra`)."""
    import yaml
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    check_overrides(overrides, allow_sweep=run_mode == "multirun")
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="train"):
            return hydra_compose(config_name="config", overrides=schema_overrides(overrides),
                                 return_hydra_config=with_hydra)
    except (HydraException, OmegaConfBaseException, ValueError, yaml.YAMLError, OSError, RecursionError) as err:
        raise hydra_error(err) from None


def load_config(overrides: list[str]) -> NinConfig:
    return to_config(compose(overrides))
