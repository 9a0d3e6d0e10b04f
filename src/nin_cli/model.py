"""Network In Network: mlpconv blocks, a GAP or fully connected head, the paper's init.

An `MLPConv` block is a k×k conv followed by 1×1 convs (the paper's cccp layers), ReLU after each, then pooling
and dropout. Layers are named as in the authors' configs — conv1, cccp1, cccp2, conv2, ... — so per-layer init
overrides and the "last layer" learning rate address them by those names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nin_cli.config import BlockConfig, HeadConfig, ModelConfig, block_widths
from nin_cli.errors import ConfigError


class LocallyConnected2d(nn.Module):
    """A k×k layer whose weights are not shared: every output position has its own filter bank and bias
    (cuda-convnet's "local" layer, used by the conventional CNN of paper §4.6). Input size is fixed at build time.

    weight: (out_h·out_w, in_channels·k·k, out_channels), bias: (out_channels, out_h, out_w).
    """

    def __init__(self, in_channels: int, out_channels: int, in_size: tuple[int, int], kernel: int, stride: int = 1,
                 padding: int = 0, bias: bool = True):
        super().__init__()
        out_h, out_w = ((s + 2 * padding - kernel) // stride + 1 for s in in_size)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"a locally connected {kernel}×{kernel} layer does not fit {in_size[0]}×{in_size[1]} maps")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.in_size, self.out_size = tuple(in_size), (out_h, out_w)
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.fan_in = in_channels * kernel * kernel
        bound = 1.0 / math.sqrt(self.fan_in)  # nn.Conv2d's default scale
        self.weight = nn.Parameter(torch.empty(out_h * out_w, self.fan_in, out_channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(out_channels, out_h, out_w)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.in_size:
            raise ValueError(f"locally connected layer built for {self.in_size} inputs, got {tuple(x.shape[-2:])}")
        cols = F.unfold(x, self.kernel, padding=self.padding, stride=self.stride)  # (N, in·k·k, positions)
        # one matrix product per position, on contiguous operands (einsum and strided bmm are far slower on a CPU)
        out = torch.bmm(cols.permute(2, 0, 1).contiguous(), self.weight)  # (positions, N, out)
        out = out.permute(1, 2, 0).reshape(len(x), self.out_channels, *self.out_size)
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, in_size={self.in_size}, kernel_size={self.kernel}, "
                f"stride={self.stride}, padding={self.padding}")


class Dropout(nn.Dropout):
    """Dropout in one of two forms with the same test-time function.

    - inverted (PyTorch's): zero with probability p and scale the kept units by 1/(1 − p) while training; identity
      at test time.
    - classic (the authors': cuda-convnet `DropoutNeuron` in `extralayers.cuh`, `Python/plugin.py`): zero with
      probability p and do not rescale while training; multiply by (1 − p) at test time. The layer after it then
      trains as the authors' did (inverted dropout is that layer at 2× the init std, 4× the lr and ¼ the L2).

    On the CPU the mask comes from `torch.rand`: PyTorch's CPU `bernoulli_` takes MKL's vectorised path only on Intel
    CPUs and elsewhere draws a double per element on one thread, 3× slower (3 % of a paper NIN step on this AMD CPU,
    BENCHMARKS.md). Accelerators keep the fused native kernel. Both forms draw the same mask from the same RNG."""

    def __init__(self, p: float, classic: bool = False):
        super().__init__(p)
        self.classic = classic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x * (1 - self.p) if self.classic and self.p > 0 else x
        if not 0 < self.p < 1:
            return super().forward(x)
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True) * (1 - self.p) if self.classic else super().forward(x)
        keep = torch.rand_like(x, dtype=torch.float32).ge_(self.p)
        return x * (keep if self.classic else keep.mul_(1 / (1 - self.p))).to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}, {'classic' if self.classic else 'inverted'}"


class MLPConv(nn.Module):
    """k×k conv (or locally connected layer) → `len(widths) - 1` 1×1 convs, each followed by (batch norm and)
    ReLU → pool → dropout. `in_size` (H, W) is needed only by a locally connected layer."""

    def __init__(self, in_channels: int, widths: list[int], block: BlockConfig, dropout: float,
                 batch_norm: bool, classic_dropout: bool = False, last_relu: bool = True, last_batch_norm: bool = True,
                 in_size: tuple[int, int] | None = None):
        super().__init__()
        self.convs: list[nn.Module] = []
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            use_bn = batch_norm and (last_batch_norm or not last)
            if i == 0 and block.layer == "local":
                conv = LocallyConnected2d(channels, width, in_size, block.kernel, block.stride, block.padding,
                                          bias=not use_bn)
            else:
                conv = (nn.Conv2d(channels, width, block.kernel, block.stride, block.padding, bias=not use_bn)
                        if i == 0 else nn.Conv2d(channels, width, 1, bias=not use_bn))
            self.convs.append(conv)
            layers.append(conv)
            if use_bn:
                layers.append(nn.BatchNorm2d(width))
            if last_relu or not last:
                layers.append(nn.ReLU(inplace=True))
            channels = width
        if block.pool == "max":
            layers.append(nn.MaxPool2d(block.pool_kernel, block.pool_stride, ceil_mode=True))
        elif block.pool == "avg":
            layers.append(nn.AvgPool2d(block.pool_kernel, block.pool_stride, ceil_mode=True))
        if block.dropout and dropout > 0:
            layers.append(Dropout(dropout, classic_dropout))
        self.body = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class NIN(nn.Module):
    """Stacked mlpconv blocks (`features`) and a head that turns the last maps into class logits."""

    def __init__(self, model: ModelConfig, head: HeadConfig, image_shape: list[int] | tuple[int, ...],
                 num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.head_type = head.type
        blocks = []
        channels = image_shape[0]
        size = tuple(image_shape[1:])
        depth = None if model.arch == "cnn" else model.micro_depth  # cnn blocks are their single k×k layer
        classic = model.dropout_style == "classic"
        for i, block in enumerate(model.blocks):
            last_block = i == len(model.blocks) - 1
            widths = block_widths(block.widths, depth)
            widths = [num_classes if w is None else w for w in widths]
            if block.layer == "local":  # unshared weights need the input size: run the blocks so far once
                with torch.no_grad():
                    size = tuple(nn.Sequential(*blocks).eval()(torch.zeros(1, *image_shape)).shape[-2:])
            blocks.append(MLPConv(channels, widths, block, model.dropout, model.batch_norm, classic,
                                  last_relu=model.final_relu or not last_block or head.type != "gap",
                                  last_batch_norm=not (last_block and head.type == "gap"), in_size=size))
            channels = blocks[-1].out_channels
        self.features = nn.Sequential(*blocks)
        if head.type == "gap":
            if channels != num_classes:
                raise ValueError(f"the gap head needs {num_classes} maps from the last block, got {channels}")
            self.classifier = nn.Identity()
        else:
            with torch.no_grad():
                flat = self.features.eval()(torch.zeros(1, *image_shape)).numel()
            layers: list[nn.Module] = [nn.Flatten()]
            for width in head.hidden:
                if head.type == "fc_dropout":
                    layers.append(Dropout(head.dropout, classic))
                layers += [nn.Linear(flat, width), nn.ReLU(inplace=True)]
                flat = width
            if head.type == "fc_dropout":
                layers.append(Dropout(head.dropout, classic))
            layers.append(nn.Linear(flat, num_classes))
            self.classifier = nn.Sequential(*layers)
        self.features.train()

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last mlpconv's output: per-class confidence maps under the gap head."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(x)
        if self.head_type == "gap":
            return maps.mean(dim=(2, 3))
        return self.classifier(maps)

    def named_layers(self) -> list[tuple[str, nn.Module]]:
        """(paper name, layer) for every conv and linear: conv1, cccp1, cccp2, conv2, ..., fc1, ...; a locally
        connected k×k layer is named local<block> (conv1, conv2, conv3, local4 for the §4.6 CNN)."""
        names: list[tuple[str, nn.Module]] = []
        cccp = 0
        for i, block in enumerate(self.features):
            kind = "local" if isinstance(block.convs[0], LocallyConnected2d) else "conv"
            names.append((f"{kind}{i + 1}", block.convs[0]))
            for conv in block.convs[1:]:
                cccp += 1
                names.append((f"cccp{cccp}", conv))
        linears = [m for m in self.classifier.modules() if isinstance(m, nn.Linear)]
        names += [(f"fc{i + 1}", m) for i, m in enumerate(linears)]
        return names

    def last_layer(self) -> nn.Module:
        """The layer that emits the logits or class maps (cccp6 in the paper): it gets its own learning rate."""
        return self.named_layers()[-1][1]


def init_weights(net: NIN, model: ModelConfig) -> None:
    """paper: every weight N(0, std²) (per-layer overrides by name), biases 0. kaiming: He normal, biases 0."""
    known = {name for name, _ in net.named_layers()}
    unknown = set(model.init_std_overrides) - known
    if unknown:

        raise ConfigError(f"model.init_std_overrides: no layer named {', '.join(sorted(unknown))}; "
                          f"layers are {', '.join(name for name, _ in net.named_layers())}")
    for name, layer in net.named_layers():
        if model.init == "paper":
            nn.init.normal_(layer.weight, 0.0, model.init_std_overrides.get(name, model.init_std))
        elif isinstance(layer, LocallyConnected2d):  # torch's fan-in rule misreads the 3-D weight
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / layer.fan_in))
        else:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def build_model(model: ModelConfig, head: HeadConfig, image_shape: list[int] | tuple[int, ...],
                num_classes: int) -> NIN:
    net = NIN(model, head, image_shape, num_classes)
    init_weights(net, model)
    return net


@dataclass
class LayerStats:
    name: str
    params: int
    flops_forward: int
    output_shape: list[int]


def block_stats(net: NIN, image_shape: list[int] | tuple[int, ...]) -> list[LayerStats]:
    """Parameters and forward FLOPs (torch.utils.flop_counter, one image) per mlpconv block and the head."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = net.training
    net.eval()
    stats = []
    x = torch.zeros(1, *image_shape)
    parts = [(f"mlpconv{i + 1}", block) for i, block in enumerate(net.features)]
    parts.append(("head", net.classifier if net.head_type != "gap" else None))
    with torch.no_grad():
        for name, part in parts:
            counter = FlopCounterMode(display=False)
            with counter:
                y = part(x) if part is not None else x.mean(dim=(2, 3))
            params = sum(p.numel() for p in part.parameters()) if part is not None else 0
            stats.append(LayerStats(name, params, int(counter.get_total_flops()), list(y.shape[1:])))
            x = y
    net.train(was_training)
    return stats
