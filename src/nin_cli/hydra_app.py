"""Hydra's own run machinery under Typer: what `@hydra.main` does inside, with the task's return value kept.

Hydra's private pieces are imported in one place, `hydra_private` (pinned: hydra-core>=1.3,<1.4); tests run a real
run and a real sweep, so a change shows up.

`hydra_run(overrides, task)` composes `conf/` in RUN mode, makes the run directory (`hydra.run.dir`), writes
`.hydra/`, configures job logging (train.log) and calls `task(cfg, run_dir)`. `hydra_multirun(overrides,
task_function)` is the same for `nin sweep`: Hydra's sweeper and launcher plugins run the jobs (see sweep.py).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from nin_cli.config import NinConfig, to_config
from nin_cli.errors import ConfigError, DataError, Interrupted, InterruptedNow, NinError, full_disk, save_traceback
from nin_cli.files import one_line, refuse_unsafe_tree, require_utf8_path
from nin_cli.overrides import compose_hydra, config_sources, hydra_session, schema_overrides
from nin_cli.runs import (
    RunPaths,
    output_dir_problem,
    record_provenance,
    refuse_finished_without_checkpoint,
    run_dir_lock,
)


def _log_file(run_dir: Path) -> Path:
    return run_dir / "train.log"


def _crash_line(err: BaseException, where: str) -> str:
    """One line for a bug, whatever the exception's message looks like; `where`: where its traceback went."""
    text = one_line(err)
    text = text[:200] + "…" if len(text) > 200 else text
    return f"internal error ({type(err).__name__}{': ' + text if text else ''}); {where}"


def _run_dir_of(cfg: Any) -> Path | None:
    """hydra.run.dir as Hydra will resolve it (None when it does not resolve: run_job then says why)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    try:
        HydraConfig.instance().set_config(cfg)
        value = OmegaConf.select(cfg, "hydra.run.dir")
    except Exception:  # noqa: BLE001 - only a pre-check
        return None
    return Path(str(value)) if value else None


def _setup_failure(err: OSError, run_dir: Path | None, existed: bool) -> NinError:
    """An OSError from Hydra's own setup (making the run directory, writing .hydra/ and train.log): inside a run
    directory that was already there, a damaged run (exit 3); otherwise the location given is unusable (exit 2)."""
    what = err.strerror or type(err).__name__
    name = Path(err.filename) if err.filename else None
    if existed and run_dir is not None and name is not None and run_dir.resolve() in name.resolve().parents:
        return DataError(f"{name}: {what}; the run directory {run_dir} is damaged (repair or move it away)")
    shown = f" ({what}: {name})" if name else f" ({what})"
    return ConfigError(f"hydra.run.dir={run_dir}: cannot create or write the run directory{shown}; give a writable "
                       "hydra.run.dir")


def hydra_private() -> SimpleNamespace:
    """Every private piece of Hydra nin uses, in one place (checked against hydra-core 1.3.8). Hydra has no public
    way to run a job or a multirun from inside another CLI and keep the task's return value (`@hydra.main` owns argv
    and exits), nor to expand a sweep's grid without launching it: `Callbacks` (what `@hydra.main` fires around a
    run), `BasicSweeper` (its grid expansion, for `nin sweep --dry-run`) and a finished job's raw outcome
    (`JobReturn.return_value` would print its own error line and re-raise)."""
    from hydra._internal.callbacks import Callbacks
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    return SimpleNamespace(Callbacks=Callbacks, BasicSweeper=BasicSweeper, outcome=lambda ret: ret._return_value)


def _compose_run(hydra: Any, overrides: list[str]) -> tuple[Any, Path | None]:
    """The run's config (RUN mode, with Hydra's logging config) and its directory, checked to be writable before
    anything is created."""
    from hydra.types import RunMode


    cfg = compose_hydra(hydra, schema_overrides(overrides), "run", with_log_configuration=True)
    cfg.hydra.mode = RunMode.RUN
    run_dir = _run_dir_of(cfg)
    problem = output_dir_problem(run_dir) if run_dir is not None else None
    if problem:
        raise ConfigError(f"hydra.run.dir={run_dir}: {problem}; give a writable directory")
    return cfg, run_dir


@contextmanager
def guarded_run_dir(run_dir: Path | None, existed: bool):
    """The run directory checked and locked before anything is written in it: one holding a link or a special file
    is refused (exit 4), one in use by another process too (exit 2), and the refused command changes nothing."""
    if run_dir is None:
        yield
        return

    require_utf8_path(run_dir)
    if existed:
        refuse_unsafe_tree(run_dir)
        refuse_finished_without_checkpoint(RunPaths(run_dir))  # before Hydra rewrites its .hydra/
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _setup_failure(err, run_dir, existed) from None
    with run_dir_lock(run_dir):
        yield


def hydra_run(overrides: list[str], task: Callable[[NinConfig, Path], Any]) -> Any:
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobStatus, run_job
    from hydra.types import HydraContext
    from omegaconf import DictConfig

    def task_function(cfg: DictConfig) -> Any:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            return task(to_config(cfg), run_dir)
        except (NinError, KeyboardInterrupt):
            raise
        except Exception as err:  # a bug: full traceback to train.log, one line on screen
            if (disk := full_disk(err)) is not None:  # not a bug: the disk is full (and train.log may be too)
                raise disk from None
            where = save_traceback(_log_file(run_dir),
                                   f"[{time.strftime('%Y-%m-%d %H:%M:%S')}][CRASH]\n{traceback.format_exc()}")
            raise NinError(_crash_line(err, where)) from None
        finally:
            record_config_sources(run_dir)

    with hydra_session() as hydra:
        cfg, run_dir = _compose_run(hydra, overrides)
        existed = run_dir is not None and run_dir.is_dir()
        with guarded_run_dir(run_dir, existed):  # before Hydra writes .hydra/ and train.log
            callbacks = hydra_private().Callbacks(cfg)
            callbacks.on_run_start(config=cfg, config_name="config")
            try:
                ret = run_job(hydra_context=HydraContext(config_loader=hydra.config_loader, callbacks=callbacks),
                              task_function=task_function, config=cfg, job_dir_key="hydra.run.dir",
                              job_subdir_key=None, configure_logging=True)
            except InterruptedNow as err:  # Typer would turn a KeyboardInterrupt into a silent 130
                raise Interrupted(str(err), err.exit_code) from None
            except (OSError, ValueError) as err:  # the task's own errors come back in `ret`: this is Hydra's setup
                cause = err if isinstance(err, OSError) else err.__cause__  # of the run (logging wraps its OSError)
                if isinstance(cause, NinError):  # SafeFileHandler refused train.log
                    raise cause from None
                if not isinstance(cause, OSError):
                    raise
                raise _setup_failure(cause, run_dir, existed) from None
            callbacks.on_run_end(config=cfg, config_name="config", job_return=ret)
    outcome = hydra_private().outcome(ret)
    if ret.status == JobStatus.FAILED:
        if isinstance(outcome, DataError) and not existed:
            _remove_untrained(run_dir)
        raise outcome
    return outcome


# What `nin train` writes before it loads the data; a directory holding anything else has trained (or been touched)
_BEFORE_DATA = {".hydra", "train.log", "config.yaml", "provenance.json"}


def _remove_untrained(run_dir: Path | None) -> None:
    """Missing or bad data (exit 3) in a run directory this command made: the directory goes too, so a failed data
    check leaves no run behind. Anything trained (checkpoints/, metrics.jsonl, tb/) keeps it."""
    import shutil

    if run_dir is None or run_dir.is_symlink() or not run_dir.is_dir():
        return
    if {p.name for p in run_dir.iterdir()} <= _BEFORE_DATA:
        shutil.rmtree(run_dir, ignore_errors=True)


def record_config_sources(run_dir: Path) -> None:
    """provenance.json gets where each group option of the run came from, when a user config folder
    ($NIN_CONFIG_PATH) gave any (after the task: the task writes provenance.json first)."""
    from hydra.core.hydra_config import HydraConfig


    sources = config_sources(dict(HydraConfig.get().runtime.choices))
    if sources and (run_dir / "provenance.json").is_file():
        record_provenance(run_dir, {"config_sources": sources})


def job_with_sources(task_function: Callable[[Any], Any], cfg: Any) -> Any:
    """A sweep job (any launcher's process: module-level, so it pickles), its config sources recorded after it."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return task_function(cfg)
    finally:
        record_config_sources(Path(HydraConfig.get().runtime.output_dir))


def hydra_multirun(overrides: list[str], task_function: Callable[[Any], Any]) -> Any:
    """Hydra's multirun, as `@hydra.main` does it for `-m`: compose in MULTIRUN mode, let the configured sweeper
    (`hydra/sweeper=...`) instantiate its launcher (`hydra/launcher=...`) and sweep the task overrides.

    `task_function(cfg: DictConfig)` runs once per job, in this process or another (joblib, submitit), so it must
    be a module-level function that relies on no in-process state. Returns what the sweeper returns.
    """
    from hydra.core.plugins import Plugins
    from hydra.errors import HydraException
    from hydra.types import HydraContext
    from omegaconf import OmegaConf

    with hydra_session() as hydra:
        cfg = compose_hydra(hydra, overrides, "multirun", with_log_configuration=True)
        callbacks = hydra_private().Callbacks(cfg)
        callbacks.on_multirun_start(config=cfg, config_name="config")
        try:
            sweeper = Plugins.instance().instantiate_sweeper(
                config=cfg, hydra_context=HydraContext(config_loader=hydra.config_loader, callbacks=callbacks),
                task_function=partial(job_with_sources, task_function))
        except (ImportError, HydraException) as err:  # a plugin registered but its own dependencies missing
            raise ConfigError(f"cannot start the sweeper or launcher ({one_line(err, 200)}); "
                              "install the sweep plugins: pip install -e '.[sweep]'") from None
        ret = sweeper.sweep(arguments=OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False))
        callbacks.on_multirun_end(config=cfg, config_name="config")
    return ret
