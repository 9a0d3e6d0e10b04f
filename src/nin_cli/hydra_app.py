"""Hydra's own run machinery under Typer: what `@hydra.main` does inside, with the task's return value kept.

This leans on `hydra._internal` (pinned: hydra-core>=1.3,<1.4); tests run a real run so a change shows up.

`hydra_run(overrides, task)` composes `conf/` in RUN mode, makes the run directory (`hydra.run.dir`), writes
`.hydra/`, configures job logging (train.log) and calls `task(cfg, run_dir)`.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nin_cli.config import NinConfig, config_dir, to_config
from nin_cli.errors import NinError


def _log_file(run_dir: Path) -> Path:
    return run_dir / "train.log"


def hydra_run(overrides: list[str], task: Callable[[NinConfig, Path], Any]) -> Any:
    from hydra import initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobStatus, run_job
    from hydra.types import HydraContext, RunMode
    from omegaconf import DictConfig

    def task_function(cfg: DictConfig) -> Any:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            return task(to_config(cfg), run_dir)
        except (NinError, KeyboardInterrupt):
            raise
        except Exception as err:  # a bug: full traceback to train.log, one line on screen
            with open(_log_file(run_dir), "a") as f:
                f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}][CRASH]\n{traceback.format_exc()}")
            raise NinError(f"internal error ({type(err).__name__}: {err}); traceback in {_log_file(run_dir)}") from None

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="train"):
        hydra = GlobalHydra.instance().hydra
        cfg = hydra.compose_config(config_name="config", overrides=overrides, run_mode=RunMode.RUN,
                                   from_shell=True, with_log_configuration=True)
        cfg.hydra.mode = RunMode.RUN
        callbacks = Callbacks(cfg)
        callbacks.on_run_start(config=cfg, config_name="config")
        ret = run_job(hydra_context=HydraContext(config_loader=hydra.config_loader, callbacks=callbacks),
                      task_function=task_function, config=cfg, job_dir_key="hydra.run.dir", job_subdir_key=None,
                      configure_logging=True)
        callbacks.on_run_end(config=cfg, config_name="config", job_return=ret)
    # JobReturn.return_value would print its own error line; read the outcome directly instead.
    if ret.status == JobStatus.FAILED:
        raise ret._return_value
    return ret._return_value


def write_run_files(cfg: NinConfig, run_dir: Path, device: str) -> None:
    """config.yaml (as run) and provenance.json; a resumed run keeps its provenance and records the resume."""
    from omegaconf import OmegaConf

    from nin_cli.config import to_dict
    from nin_cli.runs import provenance, write_json

    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))
    path = run_dir / "provenance.json"
    if path.exists():
        record = json.loads(path.read_text())
        record.setdefault("resumes", []).append(provenance(device))
    else:
        record = provenance(device)
    write_json(path, record)
