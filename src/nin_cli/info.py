"""`nin info OVERRIDES`: the resolved config, parameters and forward FLOPs per mlpconv block, and the precision a
training would use on this machine (`trainer.precision=auto` resolved, with the reason). Nothing is trained."""

from __future__ import annotations

import json

from nin_cli.config import to_config, to_dict
from nin_cli.errors import ConfigError
from nin_cli.files import one_line
from nin_cli.model import block_stats, build_model
from nin_cli.overrides import compose
from nin_cli.runtime import describe_precision


def info_command(overrides: list[str], as_json: bool) -> None:
    from omegaconf import OmegaConf

    cfg = to_config(compose(overrides))
    shape, classes = cfg.dataset.image_shape, cfg.dataset.num_classes
    if shape is None or classes is None:
        raise ConfigError(f"dataset={cfg.dataset.name}: set dataset.image_shape and dataset.num_classes for info")
    try:
        net = build_model(cfg.model, cfg.head, shape, classes)
        stats = block_stats(net, shape)
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"model does not fit image_shape={shape}: {one_line(err)}") from None
    params = sum(p.numel() for p in net.parameters())
    flops = sum(s.flops_forward for s in stats)
    chosen = describe_precision(cfg)  # trainer.precision=auto resolved on this machine, with the reason
    if as_json:
        print(json.dumps({"params": params, "flops_forward": flops, "blocks": [vars(s) for s in stats], **chosen}))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))), markup=False, highlight=False)
    table = Table(title=f"{cfg.model.name} on {cfg.dataset.name} {shape}, {classes} classes")
    for column in ("block", "output", "parameters", "forward MFLOP/image"):
        table.add_column(column, justify="left" if column in ("block", "output") else "right")
    for s in stats:
        table.add_row(s.name, "×".join(map(str, s.output_shape)), f"{s.params:,}", f"{s.flops_forward / 1e6:,.1f}")
    table.add_row("total", "", f"{params:,}", f"{flops / 1e6:,.1f}", style="bold")
    console.print(table)
    console.print(f"precision {chosen['precision']}: {chosen['precision_why']}", highlight=False, markup=False)
