"""Typer commands only: parse, call one function, map known errors to exit codes (see README)."""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import typer

from nin_cli.errors import ConfigError, NinError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Train, evaluate, sweep, export and inspect Network In Network classifiers.")
OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command(context_settings=OVERRIDES)
def train(ctx: typer.Context) -> None:
    """Train one model: nin train [OVERRIDES...], e.g. dataset=cifar100 model.micro_depth=3."""
    from nin_cli.config import load_config

    load_config(ctx.args)  # validate before torch is imported or a run directory exists

    from nin_cli.hydra_app import hydra_run, write_run_files
    from nin_cli.train import fit, resolve_device

    def task(cfg, run_dir: Path) -> dict:
        write_run_files(cfg, run_dir, str(resolve_device(cfg.trainer.device)))
        return fit(cfg, run_dir)

    summary = hydra_run(list(ctx.args), task)
    best = summary["best_val_error"]
    print(f"test error {summary['test_error']:.2f}%"
          + (f", best val error {best:.2f}% (epoch {summary['best_epoch']})" if best is not None else ""))


@app.command(context_settings=OVERRIDES)
def info(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Resolved config, parameters and FLOPs per mlpconv block."""
    from omegaconf import OmegaConf

    from nin_cli.config import compose, to_config, to_dict

    cfg = to_config(compose(ctx.args))
    shape, classes = cfg.dataset.image_shape, cfg.dataset.num_classes
    if shape is None or classes is None:
        raise ConfigError(f"dataset={cfg.dataset.name}: set dataset.image_shape and dataset.num_classes for info")

    from nin_cli.model import block_stats, build_model

    try:
        net = build_model(cfg.model, cfg.head, shape, classes)
        stats = block_stats(net, shape)
    except (ValueError, RuntimeError) as err:
        raise ConfigError(f"model does not fit image_shape={shape}: {' '.join(str(err).split())}") from None
    params = sum(p.numel() for p in net.parameters())
    flops = sum(s.flops_forward for s in stats)
    if as_json:
        print(json.dumps({"params": params, "flops_forward": flops,
                          "blocks": [vars(s) for s in stats]}))
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


def _crash_log() -> Path:
    path = Path("outputs") / f"crash-{time.strftime('%Y%m%d-%H%M%S')}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(traceback.format_exc())
    return path


def main() -> None:
    from typer.exceptions import Abort, TyperException

    try:
        code = app(args=sys.argv[1:] or ["--help"], prog_name="nin", standalone_mode=False)
    except NinError as err:
        print(f"nin: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except Abort:
        print("nin: interrupted", file=sys.stderr)
        sys.exit(130)
    except TyperException as err:
        print(f"nin: error: {err.format_message()} (see `nin --help`)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("nin: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # a bug: the traceback goes to a file, one line on screen
        print(f"nin: internal error ({type(err).__name__}); traceback in {_crash_log()}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
