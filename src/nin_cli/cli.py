"""Typer commands only: parse, call one function of the command's module, print its result, map known errors to
exit codes (see README, "Exit codes"). Modules are imported inside each command: `nin --help` and a config error
never import torch (tests/test_config.py)."""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import typer

from nin_cli.errors import ConfigError, NinError, full_disk


def _groups_epilog() -> str:
    """The config groups and their options, for --help (read from conf/, so a new preset shows up by itself)."""
    from nin_cli.config import GROUPS  # lazy: start-up time
    from nin_cli.overrides import group_options  # lazy: start-up time

    return "Config groups (OVERRIDES: group=option, key=value): " + "; ".join(
        f"{group}= {', '.join(group_options(group))}" for group in GROUPS) + "."


class OverridesCommand(typer.core.TyperCommand):
    """A command whose extra arguments are Hydra overrides: the shell completes them too (config groups, their
    options, schema keys), not only the command's options (`nin --install-completion`)."""

    def shell_complete(self, ctx: typer.Context, incomplete: str) -> list:
        from click.shell_completion import CompletionItem

        from nin_cli.overrides import completions  # lazy: start-up time

        items = super().shell_complete(ctx, incomplete)
        if incomplete.startswith("-"):
            return items
        return items + [CompletionItem(c) for c in completions(list(ctx.args), incomplete)]


EPILOG = _groups_epilog()
app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, epilog=EPILOG,
                  help="Train, evaluate, sweep, export and inspect Network In Network classifiers.")
OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}
WEIGHTS_HELP = "auto | ema | raw: the moving average of the weights when the checkpoint has one (trainer.ema_decay)"


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"nin {version('nin-cli')}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print nin's version and exit.")) -> None:
    """Train, evaluate, sweep, export and inspect Network In Network classifiers."""


@app.command(cls=OverridesCommand, context_settings=OVERRIDES, epilog=EPILOG)
def train(ctx: typer.Context,
          as_json: bool = typer.Option(False, "--json", help="Print summary.json's content as one JSON object on "
                                                             "stdout (the log stays on stderr).")) -> None:
    """Train one model: nin train [OVERRIDES...], e.g. dataset=cifar100 model.micro_depth=3."""
    from nin_cli.distributed import train_command  # lazy: start-up time

    summary = train_command(list(ctx.args))
    if summary is None:  # a worker process of trainer.devices=N other than rank 0: rank 0 reports
        return
    if as_json:
        print(json.dumps(summary))
        return
    best = summary["best_val_error"]
    print(f"test error {summary['test_error']:.2f}%"
          + (f", best val error {best:.2f}% (epoch {summary['best_epoch']})" if best is not None else ""))


@app.command(cls=OverridesCommand, context_settings=OVERRIDES, epilog=EPILOG)
def sweep(ctx: typer.Context,
          summary: Path | None = typer.Option(None, "--summary", metavar="DIR",
                                              help="Only (re)write and print the summary of the sweep in DIR."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Validate and list the jobs; launch nothing."),
          as_json: bool = typer.Option(False, "--json", help="With --summary: one JSON object on stdout (jobs and "
                                                             "seed groups)."),
          trials: int | None = typer.Option(None, "--trials", min=1, metavar="N",
                                            help="Search with Optuna (TPE) until the study has N finished trials; "
                                                 "swept keys take interval(), choice() or range()."),
          pruner: str = typer.Option("median", "--pruner", metavar="median|none",
                                     help="With --trials: stop a trial whose validation error is behind the median "
                                          "of the earlier trials' at the same epoch."),
          seed: int = typer.Option(0, "--seed", help="With --trials: the sampler's seed.")) -> None:
    """Many runs through Hydra's sweeper and launcher: nin sweep model.dropout=0,0.5 head=gap,fc | +sweep=dropout
    | hydra/launcher=joblib|submitit_local|submitit_slurm; a search: nin sweep --trials 20
    'optim.lr=tag(log,interval(0.01,0.5))' (see README, "Sweeps")."""
    from nin_cli.sweep import run_sweep, show_summary  # lazy: start-up time

    if summary is not None:
        if ctx.args:
            raise ConfigError(f"--summary DIR takes no overrides (got {' '.join(ctx.args)})")
        show_summary(summary, as_json)
    elif trials is None:
        run_sweep(list(ctx.args), dry_run=dry_run)
    else:
        from nin_cli.search import run_search  # lazy: start-up time

        run_search(list(ctx.args), trials, seed, pruner, dry_run=dry_run)


@app.command(cls=OverridesCommand, context_settings=OVERRIDES, epilog=EPILOG)
def info(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Resolved config, parameters and FLOPs per mlpconv block, and the precision training would use."""
    from nin_cli.info import info_command  # lazy: start-up time

    info_command(list(ctx.args), as_json)


@app.command(cls=OverridesCommand, context_settings=OVERRIDES, epilog=EPILOG)
def data(ctx: typer.Context,
         download: bool = typer.Option(False, "--download", help="Fetch missing files (where a network exists)."),
         as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Fetch and verify a dataset's files, build its caches (decoded image folder, fitted ZCA) and report what
    training will see: nin data dataset=svhn [--download] [--json]."""
    import dataclasses

    from nin_cli.overrides import load_config  # lazy: start-up time

    cfg = load_config(ctx.args)
    from nin_cli.data import describe_data, format_report, progress_to_stderr  # lazy: start-up time

    with progress_to_stderr():  # "decoding 60,000 images ..." while a first run builds the caches
        report, classes = describe_data(dataclasses.replace(cfg.dataset, download=cfg.dataset.download or download))
    print(json.dumps(report) if as_json else format_report(report, classes))


@app.command("eval", cls=OverridesCommand, context_settings=OVERRIDES, epilog=EPILOG)
def eval_(ctx: typer.Context,
          checkpoint: Path = typer.Argument(..., metavar="CKPT", readable=False,
                                            help="A nin checkpoint (RUN/checkpoints/best.pt), or a run "
                                                 "directory: every checkpoint it kept, in one table."),
          split: str = typer.Option("test", "--split", help="test | val | train"),
          as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
          tta: bool = typer.Option(False, "--tta", help="Average the softmax over each image and its mirror."),
          out: Path | None = typer.Option(None, "--out", metavar="DIR",
                                          help="Where metrics.json, confusion.png, tb/ go (default RUN/eval/...)."),
          weights: str = typer.Option("auto", "--weights", help=WEIGHTS_HELP)) -> None:
    """Metrics of a checkpoint: top-1/top-5 error, NLL, ECE, per-class accuracy, confusion matrix.
    Dataset and preprocessing are the checkpoint's; OVERRIDES (dataset.root=..., trainer.device=cpu) change them."""
    from nin_cli.evaluate import eval_command, eval_run_command  # lazy: start-up time

    try:
        is_run_dir = checkpoint.is_dir()
    except OSError:  # unreachable: the checkpoint loader names it (exit 3)
        is_run_dir = False
    if is_run_dir:  # a run directory: every checkpoint it kept, in one table
        eval_run_command(checkpoint, list(ctx.args), split, tta, as_json, weights)
        return
    eval_command(checkpoint, list(ctx.args), split, tta, as_json, out, weights)


@app.command()
def export(checkpoint: Path = typer.Argument(..., metavar="CKPT", readable=False, help="A nin checkpoint."),
           fmt: str = typer.Option(..., "--format", help="onnx | torchscript | exported-program | safetensors"),
           out: Path | None = typer.Option(None, "--out", metavar="PATH",
                                           help="Output file (default: next to CKPT); the sidecar is PATH.json."),
           weights: str = typer.Option("auto", "--weights", help=WEIGHTS_HELP),
           as_json: bool = typer.Option(False, "--json", help="Print the sidecar as one JSON object on stdout.")
           ) -> None:
    """Export with a dynamic batch size; reloaded by its runtime and checked against the eager model (≤ 1e-4)."""
    from nin_cli.export import export_command  # lazy: start-up time

    meta = export_command(checkpoint, fmt, out, weights, as_json)
    if as_json:
        print(json.dumps(meta))


@app.command()
def cam(checkpoint: Path = typer.Argument(..., metavar="CKPT", readable=False,
                                         help="A nin checkpoint with the gap head."),
        images: list[Path] | None = typer.Argument(None, metavar="IMAGE...",
                                                   help="Image files (resized to the model's)."),
        top: int = typer.Option(3, "--top", min=1, help="Maps of the K most probable classes per image."),
        out: Path | None = typer.Option(None, "--out", metavar="DIR", help="Where cam.png and cam.json go."),
        test: int = typer.Option(0, "--test", min=0, metavar="N",
                                 help="Also show the first N test images of the checkpoint's dataset.")) -> None:
    """The last mlpconv's per-class confidence maps (before global averaging), overlaid on each image, as PNG."""
    from nin_cli.cam import cam_command  # lazy: start-up time

    if out is not None:
        check_out(out)

    cam_command(checkpoint, images or [], top, out, test)


@app.command()
def predict(checkpoint: Path = typer.Argument(..., metavar="CKPT", readable=False, help="A nin checkpoint."),
            paths: list[Path] = typer.Argument(..., metavar="PATH",
                                               help="Image files, and folders searched recursively for images."),
            top: int = typer.Option(5, "--top", min=1, metavar="K", help="The K most probable classes per image."),
            tta: bool = typer.Option(False, "--tta", help="Average the softmax over each image and its mirror."),
            batch_size: int | None = typer.Option(None, "--batch-size", min=1, metavar="N",
                                                  help="Images per forward pass (default trainer.eval_batch_size)."),
            out: Path | None = typer.Option(None, "--out", metavar="FILE",
                                            help="Also write the rows to FILE: CSV, or JSON for a .json name."),
            as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
            device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | mps (default: the "
                                                                     "checkpoint's trainer.device)."),
            weights: str = typer.Option("auto", "--weights", help=WEIGHTS_HELP)) -> None:
    """Top-K classes of new images, decoded and preprocessed as the checkpoint's training saw them; unreadable
    files are listed and skipped."""
    from nin_cli.predict import predict_command  # lazy: start-up time

    predict_command(checkpoint, paths, top, tta, batch_size, out, as_json, device, weights)


@app.command()
def table(run_dirs: list[Path] | None = typer.Argument(None, metavar="RUN_DIRS",
                                                      help="Run directories or folders holding them (OUT/runs)."),
          run: bool = typer.Option(False, "--run", help="First train the missing runs (make reproduce-table); "
                                                        "finished runs are kept."),
          budget: str | None = typer.Option(None, "--budget", help="full | short | cpu | smoke: what --run trains "
                                                                   "(default smoke); without --run, show only that "
                                                                   "budget."),
          rows: str | None = typer.Option(None, "--rows", metavar="KEY,...",
                                          help="With --run: only these presets, e.g. paper_cifar10,cnn_gap/gap."),
          seeds: str | None = typer.Option(None, "--seeds", metavar="K,...",
                                           help="With --run: only these seed slots (0, 1, ...), e.g. one process "
                                                "per slot side by side."),
          cifar10_jpeg: Path | None = typer.Option(None, "--cifar10-jpeg", metavar="DIR",
                                                   help="With --run: CIFAR-10 rows train on this JPEG copy "
                                                        "(train/<class>/, test/<class>/), labelled as such."),
          out: Path = typer.Option(Path("results"), "--out", metavar="DIR",
                                   help="Where table.md and table.csv go (and runs/ with --run)."),
          check: bool = typer.Option(False, "--check", help="Exit 6 when a comparable row that was run is not "
                                                            "reproduced (a gate for CI on a GPU box)."),
          as_json: bool = typer.Option(False, "--json", help="Print the table's rows as one JSON object on stdout "
                                                             "(the rendered table goes to stderr).")) -> None:
    """The paper's tables with our test errors beside them: the terminal, OUT/table.md and OUT/table.csv."""
    from nin_cli.reproduce import table_command  # lazy: start-up time

    check_out(out)  # before --run trains anything
    table_command(run_dirs, run, budget, rows, seed_slots(seeds), cifar10_jpeg, out, check, as_json)


def check_out(out: Path) -> None:
    """An --out folder that cannot be made or written is a command-line error (exit 2), found before any work."""
    from nin_cli.runs import output_dir_problem  # lazy: start-up time

    problem = output_dir_problem(out)
    if problem:
        raise ConfigError(f"--out {out}: {problem}; give a writable folder")


def seed_slots(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: give seed slots as K,... (e.g. 0,1)") from None


@app.command()
def compare(run_dirs: list[Path] = typer.Argument(..., metavar="RUN",
                                                  help="Two or more run directories; deltas are from the first."),
            as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """What differs between runs: config keys, summary.json metrics with deltas from the first run, provenance
    (git commit and dirty flag, package versions, Python, device)."""
    from nin_cli.compare import compare_runs, render_compare  # lazy: start-up time

    result = compare_runs(run_dirs)
    if as_json:
        print(json.dumps(result))
        return
    from rich.console import Console

    render_compare(result, Console(width=None if sys.stdout.isatty() else 150))  # piped: don't fold at 80


@app.command()
def plot(paths: list[Path] = typer.Argument(..., metavar="RUN_OR_SWEEP",
                                            help="Run directories, or sweep directories (all their jobs)."),
         out: Path | None = typer.Option(None, "--out", metavar="PNG",
                                         help="The PNG to write (default: curves.png in the one directory given, "
                                              "else in the current one)."),
         x: str = typer.Option("epoch", "--x", metavar="epoch|minutes",
                               help="The x axis: epochs, or minutes of training (summed epoch_time_s).")) -> None:
    """Learning curves (training loss, validation error, lr) from metrics.jsonl; runs that differ only in
    trainer.seed are one line, the mean, with mean ± std shaded."""
    from nin_cli.plots import default_plot_path, plot_runs  # lazy: start-up time

    written = plot_runs(paths, out or default_plot_path(paths), x)
    print(f"wrote {written}")


@app.command(cls=OverridesCommand, context_settings=OVERRIDES, epilog=EPILOG)
def bench(ctx: typer.Context,
          as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
          steps: int = typer.Option(5, "--steps", min=1, help="Timed training steps per measurement."),
          rounds: int = typer.Option(3, "--rounds", min=1, help="Interleaved rounds; figures are their medians."),
          workers: int = typer.Option(2, "--workers", min=0, help="DataLoader workers of the conventional pipeline."),
          conventional: bool = typer.Option(True, "--conventional/--no-conventional",
                                            help="Also time the DataLoader + PIL transforms pipeline."),
          malloc: bool = typer.Option(True, "--tune-malloc/--no-tune-malloc",
                                      help="Keep freed memory in glibc's heap (CPU; see BENCHMARKS.md)."),
          profile: bool = typer.Option(False, "--profile", help="Print the top ops of the nin training step (to "
                                                                "stderr with --json)."),
          clock: str = typer.Option("wall", "--clock", help="wall | process: CPU seconds of this process, for a "
                                                             "shared machine with trainer.num_threads=1."),
          peak_size: int = typer.Option(0, "--peak-size", min=0, hidden=True)) -> None:
    """Train/eval images/s of the nin step against a bare PyTorch loop, a DataLoader + PIL pipeline and the
    device's matmul peak, on synthetic images of the configured shape: nin bench [OVERRIDES...] [--json]."""
    from nin_cli.overrides import load_config  # lazy: start-up time

    cfg = load_config(ctx.args)
    from nin_cli.bench import BenchOptions, print_report, profile_nin_step, run_bench  # lazy: start-up time

    opts = BenchOptions(steps=steps, rounds=rounds, workers=workers, conventional=conventional, tune_malloc=malloc,
                        peak_size=peak_size, clock=clock)
    result = run_bench(cfg, opts)
    if as_json:
        print(json.dumps(result))
    else:
        print_report(result)
    if profile:
        print(profile_nin_step(cfg, opts), file=sys.stderr if as_json else sys.stdout)


def _crash_log() -> str:
    """Save the traceback of the bug being handled: outputs/crash-*.log, else the temp directory; the words for
    the one line on screen (never a second traceback when neither can be written)."""
    from nin_cli.errors import save_traceback  # lazy: start-up time

    return save_traceback(Path("outputs") / f"crash-{time.strftime('%Y%m%d-%H%M%S')}.log", traceback.format_exc())


def main() -> None:
    from typer.exceptions import Abort, TyperException

    from nin_cli.distributed import report_failure, shown_here  # lazy: start-up time

    try:
        code = app(args=sys.argv[1:] or ["--help"], prog_name="nin", standalone_mode=False)
    except NinError as err:
        if shown_here(err):  # one line per run, not one per process of trainer.devices=N
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
        if (disk := full_disk(err)) is not None:  # not a bug: the disk is full
            report_failure(str(disk), disk.exit_code)
            print(f"nin: error: {disk}", file=sys.stderr)
            sys.exit(disk.exit_code)
        line = f"internal error ({type(err).__name__}); {_crash_log()}"
        report_failure(line, 1)
        print(f"nin: {line}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
