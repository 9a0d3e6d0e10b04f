"""Network In Network: mlpconv blocks, a GAP or fully connected head, the paper's init.

An `MLPConv` block is a k×k conv followed by 1×1 convs (the paper's cccp layers), ReLU after each, then pooling
and dropout. Layers are named as in the authors' configs — conv1, cccp1, cccp2, conv2, ... — so per-layer init
overrides and the "last layer" learning rate address them by those names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nin_cli.config import BlockConfig, HeadConfig, ModelConfig


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


class MLPConv(nn.Module):
    """k×k conv → `len(widths) - 1` 1×1 convs, each followed by (batch norm and) ReLU → pool → dropout."""

    def __init__(self, in_channels: int, widths: list[int], block: BlockConfig, dropout: float,
                 batch_norm: bool, last_relu: bool = True, last_batch_norm: bool = True):
        super().__init__()
        self.convs: list[nn.Conv2d] = []
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            use_bn = batch_norm and (last_batch_norm or not last)
            conv = (nn.Conv2d(channels, width, block.kernel, block.stride, block.padding, bias=not use_bn) if i == 0
                    else nn.Conv2d(channels, width, 1, bias=not use_bn))
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
            layers.append(nn.Dropout(dropout))
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
        for i, block in enumerate(model.blocks):
            last_block = i == len(model.blocks) - 1
            widths = block_widths(block.widths, model.micro_depth)
            widths = [num_classes if w is None else w for w in widths]
            blocks.append(MLPConv(channels, widths, block, model.dropout, model.batch_norm,
                                  last_relu=model.final_relu or not last_block or head.type != "gap",
                                  last_batch_norm=not (last_block and head.type == "gap")))
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
                    layers.append(nn.Dropout(head.dropout))
                layers += [nn.Linear(flat, width), nn.ReLU(inplace=True)]
                flat = width
            if head.type == "fc_dropout":
                layers.append(nn.Dropout(head.dropout))
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
        """(paper name, layer) for every conv and linear: conv1, cccp1, cccp2, conv2, ..., fc1, ..."""
        names: list[tuple[str, nn.Module]] = []
        cccp = 0
        for i, block in enumerate(self.features):
            names.append((f"conv{i + 1}", block.convs[0]))
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
        from nin_cli.errors import ConfigError

        raise ConfigError(f"model.init_std_overrides: no layer named {', '.join(sorted(unknown))}; "
                          f"layers are {', '.join(name for name, _ in net.named_layers())}")
    for name, layer in net.named_layers():
        if model.init == "paper":
            nn.init.normal_(layer.weight, 0.0, model.init_std_overrides.get(name, model.init_std))
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
